"""Synthetic data: mammograms stored exactly like CBIS-DDSM (DICOM tree, description CSVs, ROI
masks) and small box-CSV datasets, for tests and demos without real patient data."""

from meddet.synth.mammo import (
    DIGITAL_MAMMOGRAPHY,
    IDENTIFYING_INFO,
    SECONDARY_CAPTURE,
    encode_dicom,
    make_box_csv_dataset,
    make_cbis_ddsm,
    make_cbis_ddsm_jpeg,
    render_mammogram,
    save_dicom,
)

__all__ = [
    "DIGITAL_MAMMOGRAPHY",
    "IDENTIFYING_INFO",
    "SECONDARY_CAPTURE",
    "encode_dicom",
    "make_box_csv_dataset",
    "make_cbis_ddsm",
    "make_cbis_ddsm_jpeg",
    "render_mammogram",
    "save_dicom",
]
