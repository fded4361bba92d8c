"""Model bundles (meddet.hub.bundle: the folder format, export, save, load, ``from_pretrained``) and the
Hugging Face Hub side (meddet.hub.remote: download and upload). ``from meddet.hub import ...`` gives the
public names of both.

>>> from meddet.hub import export_bundle, push_bundle, from_pretrained
>>> export_bundle("output/run", "bundle/")            # -c export
>>> push_bundle("bundle/", "org/mammo-detector")       # -c push
>>> p = from_pretrained("org/mammo-detector")          # a Predictor (or an EnsemblePredictor)
"""

from meddet.hub.bundle import (
    BUNDLE_FILES,
    BUNDLE_FORMAT,
    BUNDLE_PATTERNS,
    CARD_NAME,
    CONFIG_NAME,
    ENSEMBLE_KIND,
    MEMBER_PREFIX,
    META_NAME,
    WEIGHTS_NAME,
    apply_tiling_metadata,
    bundle_metadata,
    export_bundle,
    export_ensemble,
    from_pretrained,
    load_predictor,
    push_bundle,
    read_bundle,
    resolve_bundle,
    save_predictor,
    tiling_metadata,
)
from meddet.hub.remote import download_bundle, upload_bundle

__all__ = [
    "BUNDLE_FORMAT",
    "WEIGHTS_NAME",
    "CONFIG_NAME",
    "META_NAME",
    "CARD_NAME",
    "BUNDLE_FILES",
    "BUNDLE_PATTERNS",
    "ENSEMBLE_KIND",
    "MEMBER_PREFIX",
    "export_bundle",
    "export_ensemble",
    "save_predictor",
    "bundle_metadata",
    "tiling_metadata",
    "apply_tiling_metadata",
    "read_bundle",
    "load_predictor",
    "from_pretrained",
    "resolve_bundle",
    "push_bundle",
    "download_bundle",
    "upload_bundle",
]
