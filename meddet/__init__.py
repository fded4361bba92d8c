"""meddet: object detection in medical images on the Detectron2 model family."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
