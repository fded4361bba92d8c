"""Default configuration: detectron2's key names where detectron2 has the concept, our own
sections (AUG, EVAL, DICOM) for what it lacks.

Values follow detectron2's defaults unless noted, the architecture keys included: unset, they describe
detectron2's default model, Faster R-CNN C4 (ResNet trunk to res4, RPN and ROIAlign on res4, res5 as the box
head), so a detectron2 model-zoo YAML means in meddet what it means in detectron2. The ResNet-FPN architecture
meddet's recipes use is set by their base, `configs/Base-RCNN-FPN.yaml` (as detectron2's Base-RCNN-FPN.yaml),
which also sets what a from-scratch medical run needs (trainable norm, pixel std near the data's spread);
in code, :func:`get_fpn_cfg` gives the defaults with the same FPN keys (FPN_ARCHITECTURE).
"""

import copy

from yacs.config import CfgNode as CN

_C = CN()
_C.VERSION = 2

# ---------------------------------------------------------------------------- model
_C.MODEL = CN()
# auto | torchvision | detectron2 (auto: detectron2 when importable, else torchvision)
_C.MODEL.ENGINE = "auto"
# auto | cpu | cuda | mps (auto: cuda when available, else cpu)
_C.MODEL.DEVICE = "auto"
_C.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
# detectron2's switches of parts meddet does not build (box detection only): must stay False. With them
# off, detectron2 model-zoo YAMLs load: their keys of those parts (MODEL.ROI_MASK_HEAD.*, ...) are accepted
# and not used (meddet.config).
_C.MODEL.MASK_ON = False
_C.MODEL.KEYPOINT_ON = False
_C.MODEL.LOAD_PROPOSALS = False
# Local checkpoint to start from ("" = random init; nothing is downloaded).
_C.MODEL.WEIGHTS = ""
# Pixel statistics in INPUT.FORMAT channel order, on the 0..255 scale.
_C.MODEL.PIXEL_MEAN = [103.530, 116.280, 123.675]
_C.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]

_C.MODEL.BACKBONE = CN()
_C.MODEL.BACKBONE.NAME = "build_resnet_backbone"
# Stages frozen: 0 none, 1 stem, 2 stem+res2, ... (detectron2 semantics)
_C.MODEL.BACKBONE.FREEZE_AT = 2

_C.MODEL.RESNETS = CN()
_C.MODEL.RESNETS.DEPTH = 50
_C.MODEL.RESNETS.OUT_FEATURES = ["res4"]  # res4 for C4, res2..res5 for FPN
_C.MODEL.RESNETS.NUM_GROUPS = 1
# FrozenBN | BN | GN | SyncBN ; from scratch needs BN or GN
_C.MODEL.RESNETS.NORM = "FrozenBN"
_C.MODEL.RESNETS.WIDTH_PER_GROUP = 64
_C.MODEL.RESNETS.STRIDE_IN_1X1 = True
_C.MODEL.RESNETS.RES5_DILATION = 1
_C.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
_C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64
_C.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, False, False]

_C.MODEL.FPN = CN()
_C.MODEL.FPN.IN_FEATURES = []
_C.MODEL.FPN.OUT_CHANNELS = 256
_C.MODEL.FPN.NORM = ""
_C.MODEL.FPN.FUSE_TYPE = "sum"

_C.MODEL.ANCHOR_GENERATOR = CN()
_C.MODEL.ANCHOR_GENERATOR.NAME = "DefaultAnchorGenerator"
# One list of sizes per feature map RPN reads, or one list for all of them (C4: 5 sizes on res4; FPN: one
# size per level p2..p6).
_C.MODEL.ANCHOR_GENERATOR.SIZES = [[32, 64, 128, 256, 512]]
_C.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
_C.MODEL.ANCHOR_GENERATOR.ANGLES = [[-90, 0, 90]]
_C.MODEL.ANCHOR_GENERATOR.OFFSET = 0.0

_C.MODEL.PROPOSAL_GENERATOR = CN()
_C.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"
_C.MODEL.PROPOSAL_GENERATOR.MIN_SIZE = 0

_C.MODEL.RPN = CN()
_C.MODEL.RPN.HEAD_NAME = "StandardRPNHead"
_C.MODEL.RPN.IN_FEATURES = ["res4"]
_C.MODEL.RPN.BOUNDARY_THRESH = -1
_C.MODEL.RPN.IOU_THRESHOLDS = [0.3, 0.7]
_C.MODEL.RPN.IOU_LABELS = [0, -1, 1]
_C.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256
_C.MODEL.RPN.POSITIVE_FRACTION = 0.5
_C.MODEL.RPN.BBOX_REG_LOSS_TYPE = "smooth_l1"
_C.MODEL.RPN.BBOX_REG_LOSS_WEIGHT = 1.0
_C.MODEL.RPN.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
_C.MODEL.RPN.SMOOTH_L1_BETA = 0.0
_C.MODEL.RPN.LOSS_WEIGHT = 1.0
# Per feature map before NMS; over the image after NMS (FPN recipes: 2000/1000 and 1000/1000).
_C.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 12000
_C.MODEL.RPN.PRE_NMS_TOPK_TEST = 6000
_C.MODEL.RPN.POST_NMS_TOPK_TRAIN = 2000
_C.MODEL.RPN.POST_NMS_TOPK_TEST = 1000
_C.MODEL.RPN.NMS_THRESH = 0.7
_C.MODEL.RPN.CONV_DIMS = [-1]

# RetinaNet (MODEL.META_ARCHITECTURE RetinaNet, BACKBONE.NAME build_retinanet_resnet_fpn_backbone, RESNETS.OUT_FEATURES
# and FPN.IN_FEATURES [res3, res4, res5]): detectron2's keys and defaults, except NUM_CLASSES (meddet's 3; it must
# equal MODEL.ROI_HEADS.NUM_CLASSES, which the rest of meddet reads).
_C.MODEL.RETINANET = CN()
_C.MODEL.RETINANET.NUM_CLASSES = 3
_C.MODEL.RETINANET.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
_C.MODEL.RETINANET.NUM_CONVS = 4
_C.MODEL.RETINANET.IOU_THRESHOLDS = [0.4, 0.5]
_C.MODEL.RETINANET.IOU_LABELS = [0, -1, 1]
_C.MODEL.RETINANET.PRIOR_PROB = 0.01
_C.MODEL.RETINANET.SCORE_THRESH_TEST = 0.05
_C.MODEL.RETINANET.TOPK_CANDIDATES_TEST = 1000
_C.MODEL.RETINANET.NMS_THRESH_TEST = 0.5
_C.MODEL.RETINANET.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
_C.MODEL.RETINANET.FOCAL_LOSS_GAMMA = 2.0
_C.MODEL.RETINANET.FOCAL_LOSS_ALPHA = 0.25
_C.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA = 0.1
_C.MODEL.RETINANET.BBOX_REG_LOSS_TYPE = "smooth_l1"
_C.MODEL.RETINANET.NORM = ""

_C.MODEL.ROI_HEADS = CN()
# Res5ROIHeads (C4: res5 on 14x14 ROIAlign of res4 is the box head) | StandardROIHeads (FPN, DC5)
_C.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
_C.MODEL.ROI_HEADS.NUM_CLASSES = 3
_C.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
_C.MODEL.ROI_HEADS.IOU_THRESHOLDS = [0.5]
_C.MODEL.ROI_HEADS.IOU_LABELS = [0, 1]
_C.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512
_C.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25
_C.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
_C.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5
_C.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT = True
# Per-class weights of the box classifier's cross-entropy, one per foreground class in class-index
# order (our key; the background weight stays 1). Empty: unweighted, as detectron2.
_C.MODEL.ROI_HEADS.CLASS_WEIGHTS = []

_C.MODEL.ROI_BOX_HEAD = CN()
_C.MODEL.ROI_BOX_HEAD.NAME = ""  # C4: none (res5); FPN, DC5: FastRCNNConvFCHead
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE = "smooth_l1"
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT = 1.0
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
_C.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA = 0.0
_C.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 14
_C.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 0
_C.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
_C.MODEL.ROI_BOX_HEAD.NUM_FC = 0
_C.MODEL.ROI_BOX_HEAD.FC_DIM = 1024
_C.MODEL.ROI_BOX_HEAD.NUM_CONV = 0
_C.MODEL.ROI_BOX_HEAD.CONV_DIM = 256
_C.MODEL.ROI_BOX_HEAD.NORM = ""
_C.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False
_C.MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES = False

# ---------------------------------------------------------------------------- input
_C.INPUT = CN()
# Shortest-edge resize (detectron2 ResizeShortestEdge semantics).
_C.INPUT.MIN_SIZE_TRAIN = (800,)
_C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
_C.INPUT.MAX_SIZE_TRAIN = 1333
_C.INPUT.MIN_SIZE_TEST = 800
_C.INPUT.MAX_SIZE_TEST = 1333
# "horizontal" | "vertical" | "both" | "none"
_C.INPUT.RANDOM_FLIP = "horizontal"
# Channel order the model sees ("BGR" as detectron2; greyscale images become 3 equal channels).
_C.INPUT.FORMAT = "BGR"

# Photometric / geometric augmentation beyond detectron2's flip (our section).
_C.AUG = CN()
_C.AUG.ENABLED = True
_C.AUG.FLIP_PROB = 0.5
# Probability of a rotation by a random multiple of 90 degrees (boxes stay exact).
_C.AUG.ROT90_PROB = 0.0
_C.AUG.BRIGHTNESS = 0.0  # max relative brightness change, e.g. 0.1
_C.AUG.CONTRAST = 0.0  # max relative contrast change, e.g. 0.1
_C.AUG.GAMMA = (1.0, 1.0)  # gamma range, e.g. (0.8, 1.2)
_C.AUG.PROB = 0.5  # probability of each photometric change

# ---------------------------------------------------------------------------- data
_C.DATASETS = CN()
# COCO JSON files (file_name resolved against DATASETS.IMAGE_ROOT, else the JSON's folder).
_C.DATASETS.TRAIN = ()
_C.DATASETS.VAL = ()
_C.DATASETS.TEST = ()
_C.DATASETS.IMAGE_ROOT = ""
# Class names in model-index order (our key). Empty: taken from the training COCO's categories;
# the trainer writes them into the run's config.yaml so evaluate/predict know them.
_C.DATASETS.CLASS_NAMES = []
# Boxes reaching outside their image: False clips them to it (and drops those with nothing inside),
# counted in one warning naming the images, for training and for the ground truth of evaluation;
# True stops with an error naming the file, the image and the box.
_C.DATASETS.STRICT_BOXES = False

_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 2
_C.DATALOADER.ASPECT_RATIO_GROUPING = False
# TrainingSampler | RepeatFactorTrainingSampler (LVIS repeat factors, detectron2's keys) |
# ClassBalancedSampler (ours: images drawn so that every class, and the images without boxes, is held by
# the same share of the drawn images) | RarestClassSampler (ours: images drawn with probability from their
# rarest class's frequency; ClassBalancedSampler's behaviour before it balanced exactly)
_C.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"
_C.DATALOADER.REPEAT_THRESHOLD = 0.0
# Repeat factor max(1, (t / f) ** 0.5) when True (LVIS), max(1, t / f) when False.
_C.DATALOADER.REPEAT_SQRT = True
_C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True

# ---------------------------------------------------------------------------- tiling (our section)
# Train on tiles of large images and predict by slicing (meddet.data.tiling, meddet.inference.sliced).
_C.TILING = CN()
_C.TILING.ENABLED = False
# Tile height and width in pixels of the stored image, and the overlap between neighbours (fraction).
_C.TILING.SIZE = 512
_C.TILING.OVERLAP = 0.2
# A box cut by a tile edge is kept in that tile when at least this fraction of its area is inside.
_C.TILING.MIN_VISIBLE = 0.5
# Keep only tiles that hold at least one box of these classes (names; empty = all tiles).
_C.TILING.KEEP_CLASSES = []
# Tiles holding none of MINORITY_CLASSES are kept with probability NEGATIVE_FRACTION (seeded by SEED).
_C.TILING.MINORITY_CLASSES = []
_C.TILING.NEGATIVE_FRACTION = 1.0
# Augment whole images before they are cut into tiles ("before") or each tile after ("after").
_C.TILING.AUG_STAGE = "after"
# Decoded whole images kept per data-loading process (training reads tiles out of them).
_C.TILING.CACHE_IMAGES = 4
# Sliced inference: tiles per forward pass, an extra pass on the whole image downscaled to
# INPUT.MIN_SIZE_TEST/MAX_SIZE_TEST, and how the detections of all passes are merged:
# MERGE "nms" | "soft_nms" | "greedy_nmm" (SAHI's GREEDYNMM) | "none"; MATCH_METRIC "iou" | "ios"
# (intersection over the smaller box); CLASS_AGNOSTIC merges boxes of different classes too.
# BATCH_SIZE: tiles per forward pass (8+ on a GPU; on a CPU 1 is as fast, and tiles are spread over
# worker threads instead, see meddet.inference.sliced.default_workers).
_C.TILING.BATCH_SIZE = 8
_C.TILING.FULL_IMAGE_PASS = False
_C.TILING.MERGE = "greedy_nmm"
_C.TILING.MATCH_METRIC = "ios"
_C.TILING.MATCH_THRESH = 0.5
_C.TILING.CLASS_AGNOSTIC = False
_C.TILING.SOFT_NMS_SIGMA = 0.5

# ---------------------------------------------------------------------------- ensembles (our section)
# Several models' detections fused per image (`-c predict|evaluate --ensemble ...`):
# METHOD "wbf" (weighted box fusion) | "nms"; boxes of one class overlapping by IOU_THRESH or more
# are fused; WEIGHTS one per model (empty = equal).
_C.ENSEMBLE = CN()
_C.ENSEMBLE.METHOD = "wbf"
_C.ENSEMBLE.IOU_THRESH = 0.55
_C.ENSEMBLE.WEIGHTS = []
_C.ENSEMBLE.SKIP_BOX_THRESH = 0.0

# ---------------------------------------------------------------------------- solver
_C.SOLVER = CN()
# SGD | AdamW (our key; detectron2 builds SGD only)
_C.SOLVER.OPTIMIZER = "SGD"
# WarmupMultiStepLR | WarmupCosineLR
_C.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
_C.SOLVER.MAX_ITER = 40000
_C.SOLVER.BASE_LR = 0.001
_C.SOLVER.BASE_LR_END = 0.0
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.NESTEROV = False
_C.SOLVER.WEIGHT_DECAY = 0.0001
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0
# detectron2's legacy bias settings: bias learning rate = BASE_LR x BIAS_LR_FACTOR; bias weight decay
# WEIGHT_DECAY_BIAS (None: the weight decay of the layer's other parameters). detectron2's default is
# 0.0001 (its WEIGHT_DECAY default, copied when defined), which also decays the biases of norm layers;
# set 0.0001 to reproduce that.
_C.SOLVER.BIAS_LR_FACTOR = 1.0
_C.SOLVER.WEIGHT_DECAY_BIAS = None
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.STEPS = (30000,)
_C.SOLVER.WARMUP_FACTOR = 1.0 / 1000
_C.SOLVER.WARMUP_ITERS = 1000
_C.SOLVER.WARMUP_METHOD = "linear"
_C.SOLVER.CHECKPOINT_PERIOD = 5000
# Global batch size (images per iteration over all devices).
_C.SOLVER.IMS_PER_BATCH = 16
_C.SOLVER.CLIP_GRADIENTS = CN()
_C.SOLVER.CLIP_GRADIENTS.ENABLED = False
# detectron2's meaning: "value" (clamp each gradient element to +-CLIP_VALUE) | "norm" (each parameter's
# gradient on its own to a NORM_TYPE-norm <= CLIP_VALUE); and "full_model" (the name detectron2-based
# projects use): all gradients together to a joint norm <= CLIP_VALUE.
_C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
_C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
_C.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
_C.SOLVER.AMP = CN()
# Automatic mixed precision; only ever used on CUDA.
_C.SOLVER.AMP.ENABLED = False

# ---------------------------------------------------------------------------- test / eval
_C.TEST = CN()
# Evaluate on DATASETS.VAL every N iterations (0 = never during training).
_C.TEST.EVAL_PERIOD = 0
_C.TEST.DETECTIONS_PER_IMAGE = 100
# Validation during training (our keys): the metric model_best.pth follows, "max" or "min", and
# early stopping after this many evaluations without improvement (0 = never stop early).
_C.TEST.BEST_METRIC = "bbox/AP50"
_C.TEST.BEST_MODE = "max"
_C.TEST.EARLY_STOP_PATIENCE = 0
# Score threshold for P/R/F1, the confusion matrix, image-level sensitivity/specificity, error
# analysis and drawn predictions (our key).
_C.TEST.SCORE_THRESH = 0.5
# Per-class score thresholds, one per class in class-index order (our key; written by `-c tune`).
# Empty: every class uses TEST.SCORE_THRESH.
_C.TEST.CLASS_SCORE_THRESH = []
# The class name of each TEST.CLASS_SCORE_THRESH value (our key; written by `-c tune`), so thresholds
# follow classes by name (ensembles); empty: DATASETS.CLASS_NAMES in index order. Unnamed classes use
# TEST.SCORE_THRESH.
_C.TEST.CLASS_SCORE_THRESH_NAMES = []

_C.EVAL = CN()
# IoU at which a detection matches a ground truth for P/R/F1 and the confusion matrix.
_C.EVAL.IOU_THRESH = 0.5
# "faster_coco_eval" | "pycocotools"
_C.EVAL.BACKEND = "faster_coco_eval"
# Detections per image COCO AP counts (COCO's maxDets; detectron2's max_dets_per_image). Raise it for
# images holding more objects than that, e.g. whole cytology images with thousands of cells.
_C.EVAL.MAX_DETS = 100
# FROC hit rule: "center" (the detection's centre lies inside the lesion's box, the usual rule in
# mammography CAD) or "iou" (IoU >= EVAL.FROC_IOU).
_C.EVAL.FROC_HIT = "center"
_C.EVAL.FROC_IOU = 0.5
# Mean false positives per image at which FROC sensitivity is reported.
_C.EVAL.FROC_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
# How sensitivity at each rate is read off the FROC curve: "step" (the lowest threshold within the
# rate, LUNA16) or "linear" (interpolated between the curve's points, as MONAI's compute_froc_score).
_C.EVAL.FROC_INTERPOLATION = "step"
# 95% confidence intervals by bootstrap: number of resamples (0 = none) and seed.
_C.EVAL.BOOTSTRAP_SAMPLES = 1000
_C.EVAL.BOOTSTRAP_SEED = 0
# What a bootstrap resample draws: "patient" (all views of a patient together; images when the
# ground truth has no patient_id), "image", or the name of an image field to group by (e.g. "study_id").
_C.EVAL.BOOTSTRAP_UNIT = "patient"
# Crops per error gallery (highest-scoring false positives, missed ground truths; 0 = no galleries).
_C.EVAL.GALLERY_SIZE = 16
# Post-hoc tuning (`-c tune`): NMS IoU thresholds swept, and the objective per class:
# "f1" (best F1) or "froc" (best sensitivity at EVAL.TUNE_TARGET_FPI false positives per image).
_C.EVAL.TUNE_NMS_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
_C.EVAL.TUNE_OBJECTIVE = "f1"
_C.EVAL.TUNE_TARGET_FPI = 1.0

# ---------------------------------------------------------------------------- DICOM / pixels
# How DICOM pixels become an image (meddet.io.read_dicom): Modality LUT/rescale, VOI LUT or
# window, MONOCHROME1 inversion, normalization from statistics of the whole image (padding pixels
# excluded), gamma, bit depth.
_C.DICOM = CN()
_C.DICOM.BIT_DEPTH = 8
# Apply the VOI LUT sequence, else window centre/width, when present.
_C.DICOM.APPLY_VOI = True
# Which of several VOI LUTs / windows to apply.
_C.DICOM.WINDOW_INDEX = 0
# What maps to black / white: "minmax" (image min/max) | "percentile" (DICOM.PERCENTILES of the
# image) | "zscore" (mean -/+ 3 std) | "fixed" (DICOM.FIXED_RANGE, else the file's full range)
_C.DICOM.NORMALIZE = "minmax"
# Low/high percentiles mapped to black/white by NORMALIZE "percentile".
_C.DICOM.PERCENTILES = (1.0, 99.0)
# (low, high) in the units after rescale / VOI for NORMALIZE "fixed"; () = the file's full range.
_C.DICOM.FIXED_RANGE = ()
# out = max * (x / max) ** GAMMA after normalization (< 1 brightens mid-tones).
_C.DICOM.GAMMA = 0.8

# ---------------------------------------------------------------------------- PREPROCESS
# Geometry steps of the preprocessing recipe (meddet.io.recipe; with DICOM.* for the pixels and
# INPUT.*_TEST for the resize). Converters record them in the COCO info and the trainer adopts those of
# its training data; readers of original files (predict, evaluate on raw records, the web app) replay
# them and report boxes in the original file's pixels.
_C.PREPROCESS = CN()
# Mirror breasts so the chest wall is on the left: "" (never) | "tags" (PatientOrientation, else
# Laterality, else the pixels) | "pixels".
_C.PREPROCESS.FLIP_LEFT = ""
# Crop to the breast (meddet.io.breast.breast_region), keeping CROP_MARGIN x the image size around it.
_C.PREPROCESS.CROP_BREAST = False
_C.PREPROCESS.CROP_MARGIN = 0.02

# ---------------------------------------------------------------------------- misc
_C.OUTPUT_DIR = "./output"
# Seeds Python, NumPy, torch and the data order; < 0 picks one at random (saved in the run's config).
_C.SEED = -1
_C.CUDNN_BENCHMARK = False
_C.VIS_PERIOD = 0


# The keys (and values) of detectron2's Base-RCNN-FPN.yaml that turn the default C4 architecture into
# ResNet-FPN Faster R-CNN; configs/Base-RCNN-FPN.yaml sets the same (tests/test_config.py checks it).
FPN_ARCHITECTURE: dict[str, object] = {
    "MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone",
    "MODEL.RESNETS.OUT_FEATURES": ["res2", "res3", "res4", "res5"],
    "MODEL.FPN.IN_FEATURES": ["res2", "res3", "res4", "res5"],
    "MODEL.ANCHOR_GENERATOR.SIZES": [[32], [64], [128], [256], [512]],
    "MODEL.RPN.IN_FEATURES": ["p2", "p3", "p4", "p5", "p6"],
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 2000,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 1000,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 1000,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
    "MODEL.ROI_HEADS.NAME": "StandardROIHeads",
    "MODEL.ROI_HEADS.IN_FEATURES": ["p2", "p3", "p4", "p5"],
    "MODEL.ROI_BOX_HEAD.NAME": "FastRCNNConvFCHead",
    "MODEL.ROI_BOX_HEAD.NUM_FC": 2,
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 7,
}


def get_cfg() -> CN:
    """A fresh copy of the default config (detectron2's defaults: the C4 architecture)."""
    return _C.clone()


def get_fpn_cfg() -> CN:
    """The defaults with detectron2's Base-RCNN-FPN architecture keys (:data:`FPN_ARCHITECTURE`): ResNet-FPN
    Faster R-CNN, the architecture both engines build; nothing else differs from :func:`get_cfg`."""
    cfg = _C.clone()
    for key, value in FPN_ARCHITECTURE.items():
        *path, leaf = key.split(".")
        node = cfg
        for p in path:
            node = node[p]
        node[leaf] = copy.deepcopy(value)
    return cfg
