"""Synthetic data: mammograms stored exactly like CBIS-DDSM (DICOM tree, description CSVs, ROI
masks), small box-CSV datasets and large cytology images with cells and clusters, for tests and
demos without real patient data."""

from meddet.synth.cytology import CYTOLOGY_CATEGORIES, make_cytology, render_cytology
from meddet.synth.mammo import (
    ARTEFACTS,
    DIGITAL_MAMMOGRAPHY,
    IDENTIFYING_INFO,
    SECONDARY_CAPTURE,
    Film,
    encode_dicom,
    make_box_csv_dataset,
    make_cbis_ddsm,
    make_cbis_ddsm_jpeg,
    render_film,
    render_mammogram,
    save_dicom,
)

__all__ = [
    "ARTEFACTS",
    "CYTOLOGY_CATEGORIES",
    "Film",
    "DIGITAL_MAMMOGRAPHY",
    "IDENTIFYING_INFO",
    "SECONDARY_CAPTURE",
    "encode_dicom",
    "make_box_csv_dataset",
    "make_cbis_ddsm",
    "make_cbis_ddsm_jpeg",
    "make_cytology",
    "render_cytology",
    "render_film",
    "render_mammogram",
    "save_dicom",
]
