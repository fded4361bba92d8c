"""Where ``MODEL.WEIGHTS`` comes from: a local file, or a name users already know, downloaded once.

Accepted (on both engines, :func:`resolve_weights`):

- a local path: a ``.pth``/``.pkl`` file, or a model bundle folder (its ``model.pth``);
- ``detectron2://NAME``: detectron2's model zoo, resolved as detectron2's ``Detectron2Handler`` does
  (``https://dl.fbaipublicfiles.com/detectron2/`` + NAME, e.g. ``ImageNetPretrained/MSRA/R-50.pkl`` or
  ``COCO-Detection/faster_rcnn_R_50_FPN_3x/137849458/model_final_280758.pkl``; the short names of
  detectron2's catalog, ``COCO-Detection/faster_rcnn_R_50_FPN_3x``, are expanded as its catalog did);
- ``https://...`` (and ``http://``) URLs;
- ``hf://ORG/NAME[@REVISION][/path/in/repo]`` through ``huggingface_hub.hf_hub_download`` (its cache, its
  token: ``HF_TOKEN`` or ``huggingface-cli login``; the path defaults to a bundle's ``model.pth``);
- ``torchvision://ENUM.MEMBER`` (``ResNet50_Weights.IMAGENET1K_V2`` for a backbone,
  ``FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1`` for a whole detector) through torchvision's weight enums.

Downloads go once into the cache folder (``MEDDET_CACHE``, else ``$XDG_CACHE_HOME/meddet``, else
``~/.cache/meddet``), through a ``.part`` file renamed only when complete and verified: a rerun resumes an
interrupted download with an HTTP Range request (or restarts it when the server ignores ranges). A file
whose name carries a hash prefix (torchvision's ``resnet50-11ad3fa6.pth``, torch.hub's ``HASH_REGEX``) must
match its SHA-256; other files have their SHA-256 recorded on first download (``<file>.sha256``) and a
warning says when it ever changes. ``MEDDET_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` (or no network) uses the
cached file; an uncached one is one error line naming the URL, where to put the file by hand and the
variable to set. The base URLs can be pointed elsewhere (a mirror) with ``MEDDET_DETECTRON2_URL_PREFIX``
and ``MEDDET_TORCHVISION_URL_PREFIX``.

Loading the pretrained file with its meaning (:func:`load_pretrained`): detectron2 model-zoo ``.pkl`` and
Caffe2/MSRA ImageNet backbones and torchvision state dicts are mapped onto the torchvision engine's names
(a backbone-only checkpoint fills ``backbone.body.*`` and the log says what stays random; a detector fills
everything, except the box predictor when ``NUM_CLASSES`` differs). A checkpoint whose conventions are known
(MSRA: BGR input, pixel std 1, stride in the 1x1 conv; torchvision: RGB statistics, stride in the 3x3 conv)
is checked against the model's config, and a disagreement is an error listing the keys to set.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import numpy as np
import torch
from torch import Tensor, nn

from meddet.errors import ConfigError, ModelError
from meddet.modeling.checkpoint import format_listing, load_model_state, read_checkpoint
from meddet.modeling.d2_convert import (  # NumpyUnpickler: numpy arrays only, loading runs no code
    BBOX_PRED,
    CLS_SCORE,
    STEM_CONV,
    UNSUPPORTED_PARTS,
    NumpyUnpickler,
    d2_param_name,
    tv_to_d2_rules,
)

logger = logging.getLogger(__name__)

DETECTRON2_URL_PREFIX = "https://dl.fbaipublicfiles.com/detectron2/"
TORCHVISION_URL_PREFIX = "https://download.pytorch.org/models/"
HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")  # torch.hub's: the hash prefix in a file name
SCHEMES = ("detectron2://", "https://", "http://", "hf://", "torchvision://")
BUNDLE_WEIGHTS = "model.pth"
_CHUNK = 1 << 20
_TRUE = ("1", "true", "yes", "on")

# detectron2's catalog short names (detectron2/checkpoint/catalog.py, Detectron2ModelCatalog), + RetinaNet
_D2_MODELS = {
    "COCO-Detection/faster_rcnn_R_50_C4_1x": "137257644/model_final_721ade.pkl",
    "COCO-Detection/faster_rcnn_R_50_DC5_1x": "137847829/model_final_51d356.pkl",
    "COCO-Detection/faster_rcnn_R_50_FPN_1x": "137257794/model_final_b275ba.pkl",
    "COCO-Detection/faster_rcnn_R_50_C4_3x": "137849393/model_final_f97cb7.pkl",
    "COCO-Detection/faster_rcnn_R_50_DC5_3x": "137849425/model_final_68d202.pkl",
    "COCO-Detection/faster_rcnn_R_50_FPN_3x": "137849458/model_final_280758.pkl",
    "COCO-Detection/faster_rcnn_R_101_C4_3x": "138204752/model_final_298dad.pkl",
    "COCO-Detection/faster_rcnn_R_101_DC5_3x": "138204841/model_final_3e0943.pkl",
    "COCO-Detection/faster_rcnn_R_101_FPN_3x": "137851257/model_final_f6e8b1.pkl",
    "COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x": "139173657/model_final_68b088.pkl",
    "COCO-Detection/retinanet_R_50_FPN_1x": "190397773/model_final_bfca0b.pkl",
    "COCO-Detection/retinanet_R_50_FPN_3x": "190397829/model_final_5bd44e.pkl",
    "COCO-Detection/retinanet_R_101_FPN_3x": "190397697/model_final_971ab9.pkl",
}


@dataclass(frozen=True)
class Conventions:
    """How a family of checkpoints was trained: the config must say the same."""

    name: str
    input_format: str | None  # the channel order the network's stem expects (detectron2's INPUT.FORMAT)
    pixel_std_rgb: tuple[float, float, float]  # MODEL.PIXEL_STD in R, G, B order
    stride_in_1x1: bool

    def config_std(self, input_format: str) -> list[float]:
        std = list(self.pixel_std_rgb)
        return std[::-1] if input_format == "BGR" else std


MSRA = Conventions("Caffe2/MSRA ResNet", "BGR", (1.0, 1.0, 1.0), True)
FAIR = Conventions("FAIR ResNeXt (Caffe2)", "BGR", (58.395, 57.12, 57.375), False)
TORCHVISION = Conventions("torchvision ResNet", None, (58.395, 57.12, 57.375), False)
TORCHVISION_D2 = Conventions("torchvision ResNet (detectron2 conversion)", "RGB", (58.395, 57.12, 57.375), False)
# Known model-zoo names -> conventions (detectron2's configs for them; ThirdPartyModelCatalog's notes).
_KNOWN: list[tuple[re.Pattern[str], Conventions]] = [
    (re.compile(r"ImageNetPretrained/MSRA/"), MSRA),
    (re.compile(r"ImageNetPretrained/(20171220|FBResNeXt|25093814)/|COCO-Detection/\w*X_101"), FAIR),
    (re.compile(r"ImageNetPretrained/torchvision/"), TORCHVISION_D2),
    (re.compile(r"COCO-Detection/(faster_rcnn|retinanet|rpn|fast_rcnn)_R_(50|101)_"), MSRA),
    (re.compile(r"(^|/)(fasterrcnn_resnet50_fpn\w*|resnet\d+)-[0-9a-f]+\.pth$"), TORCHVISION),  # torchvision files
]


@dataclass
class WeightsSource:
    """``MODEL.WEIGHTS`` resolved: ``path`` is a local file; ``kind`` says where it came from."""

    spec: str
    path: Path
    kind: str  # local | detectron2 | url | hf | torchvision
    url: str | None = None
    torchvision_part: str | None = None  # backbone | detector (torchvision:// only)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """What names the file (for known conventions): the URL, else the path."""
        return self.url or str(self.path)


def _flag(env: Mapping[str, str], name: str) -> bool:
    return str(env.get(name, "")).strip().lower() in _TRUE


def offline(env: Mapping[str, str] | None = None) -> bool:
    """Whether downloads are switched off (``MEDDET_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``)."""
    env = os.environ if env is None else env
    return _flag(env, "MEDDET_OFFLINE") or _flag(env, "HF_HUB_OFFLINE")


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """The download cache: ``MEDDET_CACHE``, else ``$XDG_CACHE_HOME/meddet``, else ``~/.cache/meddet``
    (on Windows ``%LOCALAPPDATA%\\meddet\\Cache``)."""
    env = os.environ if env is None else env
    if env.get("MEDDET_CACHE"):
        return Path(env["MEDDET_CACHE"]).expanduser()
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]).expanduser() / "meddet"
    if sys.platform == "win32" and env.get("LOCALAPPDATA"):
        return Path(env["LOCALAPPDATA"]) / "meddet" / "Cache"
    return Path.home() / ".cache" / "meddet"


def is_remote(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` names a remote source (one of :data:`SCHEMES`)."""
    return isinstance(spec, str) and spec.startswith(SCHEMES)


def source_engine(spec: str | os.PathLike) -> str | None:
    """The engine a remote source's weights belong to, without downloading: ``torchvision://`` the
    torchvision engine's, ``detectron2://`` and other ``.pkl`` files detectron2's; None when the name does
    not say (``MODEL.ENGINE auto`` then picks as for a checkpoint without an engine)."""
    text = os.fspath(spec)
    if text.startswith("torchvision://"):
        return "torchvision"
    if text.startswith("detectron2://") or urlparse(text).path.endswith(".pkl"):
        return "detectron2"
    return None


# ------------------------------------------------------------------------------------------------ resolving
def detectron2_url(name: str, env: Mapping[str, str] | None = None) -> str:
    """detectron2's resolution of ``detectron2://NAME``: its model-zoo prefix + NAME (a catalog short name
    such as ``COCO-Detection/faster_rcnn_R_50_FPN_3x`` gets its ``<id>/model_final_<commit>.pkl``)."""
    env = os.environ if env is None else env
    prefix = env.get("MEDDET_DETECTRON2_URL_PREFIX") or DETECTRON2_URL_PREFIX
    name = name.lstrip("/")
    if name in _D2_MODELS:
        name = f"{name}/{_D2_MODELS[name]}"
    return prefix.rstrip("/") + "/" + name


def _torchvision_weights(spec: str, name: str) -> tuple[Any, str]:
    """A torchvision weight-enum member by name and which part of meddet's model it fills."""
    from torchvision import models

    try:
        weights = models.get_weight(name)
    except (ValueError, KeyError, AttributeError) as e:
        raise ConfigError(
            f"MODEL.WEIGHTS {spec}: {name!r} is not a torchvision weight ({e}); expected ENUM.MEMBER such as "
            "ResNet50_Weights.IMAGENET1K_V2 or FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1"
        ) from None
    enum = type(weights).__name__
    if re.fullmatch(r"(Wide_)?ResNe[Xx]?t?\w*_Weights", enum) and "FPN" not in enum:
        return weights, "backbone"
    if enum.startswith("FasterRCNN_ResNet50_FPN"):
        return weights, "detector"
    raise ConfigError(
        f"MODEL.WEIGHTS {spec}: {enum} does not fit meddet's Faster R-CNN ResNet-FPN; expected a ResNet "
        "backbone (ResNet50_Weights, ResNet101_Weights, ...) or a FasterRCNN_ResNet50_FPN(_V2)_Weights detector"
    )


def _url_cache_path(url: str) -> Path:
    parsed = urlparse(url)
    parts = [quote(p, safe="-_.@+=") for p in parsed.path.split("/") if p not in ("", ".", "..")]
    if not parts:
        raise ConfigError(f"MODEL.WEIGHTS {url}: the URL names no file; expected https://host/path/file.pth")
    if parsed.query:
        parts[-1] = f"{hashlib.sha256(url.encode()).hexdigest()[:8]}-{parts[-1]}"
    return Path("url", quote(parsed.netloc, safe="-_.@"), *parts)


def resolve_weights(spec: str | os.PathLike, env: Mapping[str, str] | None = None) -> WeightsSource:
    """``MODEL.WEIGHTS`` -> a local file, downloading it into the cache when it is remote (see the module
    doc). Local paths are returned as they are (a bundle folder as its ``model.pth``); a missing local file
    is left for the loader to report."""
    env = os.environ if env is None else env
    text = os.fspath(spec)
    if not is_remote(text):
        path = Path(text)
        if path.is_dir():
            weights = path / BUNDLE_WEIGHTS
            if not weights.is_file():
                raise ModelError(
                    f"MODEL.WEIGHTS {path}: a folder without {BUNDLE_WEIGHTS}; expected a checkpoint "
                    "file or a model bundle folder (meddet.json, config.yaml, model.pth)"
                )
            path = weights
        return WeightsSource(text, path, "local")
    cache = cache_dir(env)
    if text.startswith("detectron2://"):
        name = text[len("detectron2://") :].lstrip("/")
        url = detectron2_url(name, env)
        full = f"{name}/{_D2_MODELS[name]}" if name in _D2_MODELS else name
        parts = [p for p in full.split("/") if p not in ("", ".", "..")]
        if not parts:
            raise ConfigError(
                f"MODEL.WEIGHTS {text}: names no file; expected e.g. detectron2://ImageNetPretrained/MSRA/R-50.pkl"
            )
        dest = cache.joinpath("detectron2", *parts)
        download(url, dest, spec=text, env=env)
        return WeightsSource(text, dest, "detectron2", url=url, meta={"name": name})
    if text.startswith(("https://", "http://")):
        dest = cache / _url_cache_path(text)
        # torchvision's own URLs carry the hash prefix torch.hub checks; other URLs get theirs recorded
        prefix = _hash_prefix(dest.name) if text.startswith(TORCHVISION_URL_PREFIX) else None
        download(text, dest, spec=text, env=env, hash_prefix=prefix)
        return WeightsSource(text, dest, "url", url=text)
    if text.startswith("torchvision://"):
        name = text[len("torchvision://") :]
        weights, part = _torchvision_weights(text, name)
        url = weights.url
        prefix = env.get("MEDDET_TORCHVISION_URL_PREFIX")
        if prefix and url.startswith(TORCHVISION_URL_PREFIX):
            url = prefix.rstrip("/") + "/" + url[len(TORCHVISION_URL_PREFIX) :]
        filename = os.path.basename(urlparse(url).path)
        dest = cache / "torchvision" / filename
        hub_copy = Path(torch.hub.get_dir()) / "checkpoints" / filename  # torchvision's own download, if any
        if not dest.is_file() and hub_copy.is_file():
            _verify_hash_prefix(hub_copy, _hash_prefix(filename), text)
            dest = hub_copy
        else:
            download(url, dest, spec=text, env=env, hash_prefix=_hash_prefix(filename))
        return WeightsSource(text, dest, "torchvision", url=url, torchvision_part=part, meta={"name": name})
    return _resolve_hf(text, env)


def _resolve_hf(spec: str, env: Mapping[str, str]) -> WeightsSource:
    m = re.fullmatch(r"hf://(?P<repo>[\w.-]+/[\w.-]+?)(?:@(?P<rev>[^/]+))?(?:/(?P<file>.+))?", spec)
    if not m:
        raise ConfigError(f"MODEL.WEIGHTS {spec}: expected hf://ORG/NAME[@REVISION][/path/in/repo]")
    repo, rev, filename = m["repo"], m["rev"], m["file"] or BUNDLE_WEIGHTS
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.utils import (  # (re-exported there by every version meddet supports)
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise ModelError(f"MODEL.WEIGHTS {spec}: needs huggingface_hub (pip install huggingface_hub)") from None
    endpoint = env.get("HF_ENDPOINT") or constants.ENDPOINT
    hf_cache = env.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    url = f"{endpoint.rstrip('/')}/{repo}/resolve/{rev or 'main'}/{filename}"
    local_only = offline(env)
    try:
        path = hf_hub_download(
            repo, filename, revision=rev, endpoint=endpoint, cache_dir=hf_cache, local_files_only=local_only
        )
    except LocalEntryNotFoundError:  # (an EntryNotFoundError: first)
        why = "offline (MEDDET_OFFLINE/HF_HUB_OFFLINE set)" if local_only else "the Hub cannot be reached"
        raise ModelError(
            f"MODEL.WEIGHTS {spec}: {why} and {filename} is not in the Hugging Face cache {hf_cache}; download "
            f"{url} where there is network (huggingface-cli download {repo} {filename}) into that cache "
            f"(HF_HUB_CACHE), or unset MEDDET_OFFLINE/HF_HUB_OFFLINE"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"MODEL.WEIGHTS {spec}: {first} ({url}); check the repo id, revision and path, and for a "
            "private repo set HF_TOKEN or run huggingface-cli login"
        ) from None
    return WeightsSource(spec, Path(path), "hf", url=url, meta={"repo": repo, "revision": rev, "file": filename})


# ------------------------------------------------------------------------------------------------ downloading
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _hash_prefix(filename: str) -> str | None:
    m = HASH_REGEX.search(filename)
    return m.group(1) if m and m.group(1) else None


def _verify_hash_prefix(path: Path, prefix: str | None, spec: str) -> str:
    digest = _sha256(path)
    if prefix and not digest.startswith(prefix):
        raise ModelError(
            f"MODEL.WEIGHTS {spec}: {path} has SHA-256 {digest[:16]}..., its name says {prefix}...; the file is "
            "damaged or not the published one: delete it and run again to download it afresh"
        )
    return digest


def _offline_error(spec: str, url: str, dest: Path, why: str, switched_off: bool = False) -> ModelError:
    tail = ", or unset MEDDET_OFFLINE/HF_HUB_OFFLINE to download it" if switched_off else ""
    return ModelError(
        f"MODEL.WEIGHTS {spec}: {why} and it is not in the cache; download {url} where there is network and "
        f"place it at {dest} (MEDDET_CACHE sets the cache folder){tail}"
    )


def _check_recorded(dest: Path, digest: str, url: str) -> None:
    """Compare with the SHA-256 recorded at first download (warn when it changed), record it if new."""
    sidecar = dest.with_name(dest.name + ".sha256")
    recorded = sidecar.read_text().split()[0] if sidecar.is_file() and sidecar.read_text().strip() else None
    if recorded and recorded != digest:
        logger.warning(
            "%s: SHA-256 %s differs from the one recorded at its first download (%s, in %s): the published file "
            "changed or the cached copy was replaced; check the source before trusting it",
            url,
            digest,
            recorded,
            sidecar,
        )
    if recorded != digest:
        sidecar.write_text(f"{digest}  {dest.name}\n")


def download(
    url: str,
    dest: str | os.PathLike,
    spec: str | None = None,
    env: Mapping[str, str] | None = None,
    hash_prefix: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` once (see the module doc: ``.part`` file, Range resume, hash checks,
    offline rules, progress bar on stderr). ``hash_prefix``: the start of the file's SHA-256 when the source
    publishes it (torchvision's file names, as torch.hub's check_hash); without it the hash is recorded at
    first download and a change is warned about. Returns ``dest``."""
    env = os.environ if env is None else env
    dest = Path(dest)
    spec = spec or url
    prefix = hash_prefix
    if dest.is_file():
        digest = _verify_hash_prefix(dest, prefix, spec)
        if not prefix:
            _check_recorded(dest, digest, url)
        return dest
    if offline(env):
        raise _offline_error(spec, url, dest, "offline (MEDDET_OFFLINE or HF_HUB_OFFLINE is set)", True)
    from filelock import FileLock  # (a dependency of torch)

    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):  # one download for all processes (each rank of a distributed run)
        if dest.is_file():  # another process finished it while this one waited
            return download(url, dest, spec=spec, env=env, hash_prefix=hash_prefix, timeout=timeout)
        _fetch(url, dest, spec, prefix, timeout)
    return dest


def _fetch(url: str, dest: Path, spec: str, prefix: str | None, timeout: float) -> None:
    part = dest.with_name(dest.name + ".part")
    for attempt in range(2):
        start = part.stat().st_size if part.is_file() else 0
        headers = {"User-Agent": "meddet"}
        if start:
            headers["Range"] = f"bytes={start}-"
        try:
            response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and start and attempt == 0:  # the partial file is not a prefix any more: restart
                part.unlink()
                continue
            raise ModelError(
                f"MODEL.WEIGHTS {spec}: {url} answered HTTP {e.code} {e.reason}; expected the file (check the name)"
            ) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise _offline_error(spec, url, dest, f"{url} cannot be reached ({reason})") from None
        with response:
            if start and response.status != 206:  # the server ignores ranges: start again
                start = 0
            length = response.headers.get("Content-Length")
            total = start + int(length) if length and length.isdigit() else None
            _copy(response, part, start, total, url, dest.name, spec)
        break
    if prefix:
        digest = _sha256(part)
        if not digest.startswith(prefix):
            part.unlink()
            raise ModelError(
                f"MODEL.WEIGHTS {spec}: the download from {url} has SHA-256 {digest[:16]}..., the file name says "
                f"{prefix}...; refused (not the published file); run again to retry"
            )
    else:
        digest = _sha256(part)
    os.replace(part, dest)
    if not prefix:
        _check_recorded(dest, digest, url)
    logger.info("Downloaded %s -> %s (%.1f MB, sha256 %s)", url, dest, dest.stat().st_size / 1e6, digest[:16])


def _copy(response: Any, part: Path, start: int, total: int | None, url: str, name: str, spec: str) -> None:
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    done = start
    try:
        with (
            open(part, "ab" if start else "wb") as f,
            logging_redirect_tqdm(),
            tqdm(
                total=total,
                initial=start,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"Downloading {name}",
                file=sys.stderr,
                disable=None,
                leave=False,
            ) as bar,
        ):
            for block in iter(lambda: response.read(_CHUNK), b""):
                f.write(block)
                done += len(block)
                bar.update(len(block))
    except OSError as e:  # connection reset, timeout, IncompleteRead (an HTTPException is no OSError)
        raise _interrupted(spec, url, part, done, total, str(e)) from None
    except Exception as e:  # noqa: BLE001 - http.client.IncompleteRead and friends
        if type(e).__module__ != "http.client":
            raise
        raise _interrupted(spec, url, part, done, total, type(e).__name__) from None
    if total is not None and done != total:
        raise _interrupted(spec, url, part, done, total, "connection closed")


def _interrupted(spec: str, url: str, part: Path, done: int, total: int | None, why: str) -> ModelError:
    of = f" of {total}" if total else ""
    return ModelError(
        f"MODEL.WEIGHTS {spec}: the download from {url} stopped at {done}{of} bytes ({why}); the "
        f"partial file {part} is not used; run again to resume it"
    )


# ------------------------------------------------------------------------------------------------ reading
def read_pkl(path: Path) -> tuple[dict[str, Tensor], str]:
    """A ``.pkl`` checkpoint as (state dict with detectron2 names, ``"detectron2"`` or ``"caffe2"``), read as
    detectron2's ``DetectionCheckpointer._load_file`` does: ``{"model", "__author__"}`` is detectron2's model
    zoo layout; anything else is a Caffe2/Detectron blob dict (``"blobs"`` for detection models), renamed with
    detectron2's Caffe2 name rules (ImageNet backbones; Caffe2 detection models are refused)."""
    try:
        with path.open("rb") as f:
            obj = NumpyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise ModelError(f"{path}: cannot be read as a detectron2/Caffe2 .pkl checkpoint ({e})") from None
    if not isinstance(obj, Mapping):
        raise ModelError(f"{path}: holds a {type(obj).__name__}; expected a dict of numpy arrays")

    def tensors(d: Mapping[str, Any]) -> dict[str, Tensor]:
        return {
            str(k): torch.from_numpy(np.ascontiguousarray(v))
            for k, v in d.items()
            if isinstance(v, np.ndarray) and not str(k).endswith("_momentum")
        }

    if isinstance(obj.get("model"), Mapping) and "__author__" in obj and not obj.get("matching_heuristics"):
        return tensors(obj["model"]), "detectron2"
    blobs = obj.get("model", obj.get("blobs", obj))
    if not isinstance(blobs, Mapping):
        raise ModelError(f"{path}: no model weights; found keys {sorted(map(str, obj))[:10]}")
    state = tensors(blobs)
    if any(k.startswith(("backbone.", "roi_heads.", "proposal_generator.")) for k in state):
        return state, "detectron2"
    renamed = {}
    for key, value in state.items():
        new = _c2_name(key)
        if new is None:
            continue
        renamed[new] = value
    if not renamed:
        raise ModelError(
            f"{path}: no ResNet backbone blobs (res2_0_branch2a_w, ...) found; expected a detectron2 "
            "model-zoo .pkl or a Caffe2 ImageNet backbone such as ImageNetPretrained/MSRA/R-50.pkl"
        )
    return renamed, "caffe2"


def _c2_name(key: str) -> str | None:
    """detectron2's convert_basic_c2_names for a Caffe2 ImageNet ResNet blob, under ``backbone.bottom_up.``;
    None for the classifier (fc1000) and other blobs; a Caffe2 detection head blob is refused."""
    if key.startswith(("fc1000", "pred_")):
        return None
    if re.match(r"^(fpn_|rpn_|cls_score|bbox_pred|fc6|fc7|mask_|kps_)", key):
        raise ModelError(
            f"Caffe2 blob {key!r}: a Detectron (Caffe2) detection model; expected an ImageNet "
            "backbone or a detectron2 model-zoo checkpoint (detectron2://COCO-Detection/...)"
        )
    k = key.replace("_", ".")
    k = re.sub(r"\.b$", ".bias", k)
    k = re.sub(r"\.w$", ".weight", k)
    for pattern, repl in (
        (r"bn\.s$", "norm.weight"),
        (r"bn\.bias$", "norm.bias"),
        (r"bn\.rm$", "norm.running_mean"),
        (r"bn\.riv$", "norm.running_var"),
        (r"bn\.gamma$", "norm.weight"),
        (r"bn\.beta$", "norm.bias"),
        (r"gn\.s$", "norm.weight"),
        (r"gn\.bias$", "norm.bias"),
    ):
        k = re.sub(pattern, repl, k)
    k = re.sub(r"^res\.conv1\.norm\.", "conv1.norm.", k)
    k = re.sub(r"^conv1\.", "stem.conv1.", k)
    k = k.replace(".branch1.", ".shortcut.").replace(".branch2a.", ".conv1.")
    k = k.replace(".branch2b.", ".conv2.").replace(".branch2c.", ".conv3.")
    if not re.match(r"^(stem\.|res\d\.)", k):
        return None
    return "backbone.bottom_up." + k


# ------------------------------------------------------------------------------------------------ conventions
def conventions_of(source: WeightsSource, fmt: str | None) -> Conventions | None:
    """The conventions a checkpoint was trained with, when known from its name or its format."""
    if source.kind == "torchvision":
        return TORCHVISION
    name = source.name.replace("\\", "/")
    for pattern, conv in _KNOWN:
        if pattern.search(name):
            return conv
    if fmt == "caffe2":
        return MSRA
    return None


def _model_conventions(net: nn.Module) -> tuple[str, list[float], bool | None]:
    """(INPUT.FORMAT, MODEL.PIXEL_STD in config order, STRIDE_IN_1X1 or None) the model was built with."""
    model: Any = net  # either engine's detector: its submodules are reached by name
    fmt = str(getattr(model, "input_format", "BGR"))
    stride: bool | None = None
    if getattr(model, "engine", None) == "detectron2":
        std = [float(v) for v in model.pixel_std.flatten().tolist()]
        stage = getattr(getattr(model.backbone, "bottom_up", None), "res3", None)
        block = stage[0] if stage is not None else None
        conv1 = block.conv1 if block is not None and hasattr(block, "conv3") else None  # bottlenecks only
    else:
        std = [float(v) for v in model.transform.image_std]  # RGB order in the torchvision engine
        std = std[::-1] if fmt == "BGR" else std
        body = model.backbone.body
        conv1 = body.layer2[0].conv1 if hasattr(body.layer2[0], "conv3") else None
    if conv1 is not None:
        stride = tuple(conv1.stride) == (2, 2)
    return fmt, std, stride


def check_conventions(model: nn.Module, conv: Conventions, spec: str) -> None:
    """ConfigError listing the keys to set when the model's config disagrees with the checkpoint's
    conventions (nothing is switched silently)."""
    fmt, std, stride = _model_conventions(model)
    fixes = []
    if conv.input_format and fmt != conv.input_format:
        fixes.append(f"INPUT.FORMAT {conv.input_format} (is {fmt})")
    expected_std = conv.config_std(conv.input_format or fmt)
    if not np.allclose(std, expected_std, atol=1e-2):
        order = conv.input_format or fmt
        fixes.append(
            f"MODEL.PIXEL_STD {[round(v, 3) for v in expected_std]} (in {order} order; is {[round(v, 3) for v in std]})"
        )
    if stride is not None and stride != conv.stride_in_1x1:
        fixes.append(f"MODEL.RESNETS.STRIDE_IN_1X1 {conv.stride_in_1x1} (is {stride})")
    if fixes:
        raise ConfigError(
            f"MODEL.WEIGHTS {spec}: a {conv.name} checkpoint, trained with other input conventions than the "
            f"config's; set {', '.join(fixes)}"
        )


# ------------------------------------------------------------------------------------------------ loading
def _tv_names(model: nn.Module) -> dict[str, str]:
    """detectron2 name -> torchvision-engine name for every weight of ``model`` (meddet.modeling.d2_convert's
    mapping, its layout read from the model itself)."""
    from torchvision.models.detection.faster_rcnn import TwoMLPHead

    state = model.state_dict()
    rpn_convs = len([k for k in state if re.fullmatch(r"rpn\.head\.conv\.\d+\.0\.weight", k)])
    head_convs = len([k for k in state if re.fullmatch(r"roi_heads\.box_head\.\d+\.0\.weight", k)])
    box_head: Any = model.get_submodule("roi_heads.box_head")
    conv_fc = not isinstance(box_head, TwoMLPHead)
    rules = tv_to_d2_rules(max(rpn_convs, 1), head_convs)
    names = {}
    for k in state:
        if k.endswith("num_batches_tracked"):
            continue
        with contextlib.suppress(ModelError):
            names[d2_param_name(k, rules, head_convs, conv_fc)] = k
    return names


def _from_d2(model: nn.Module, d2_state: Mapping[str, Tensor], spec: str, strict: bool = True) -> dict[str, Tensor]:
    """detectron2 names and layout -> the torchvision engine's (stem channels for BGR, background first).
    ``strict``: a name without a place in the model is an error (else, as detectron2's name-matching
    heuristics for Caffe2 files, it is logged and skipped)."""
    for key in d2_state:
        for pattern, what in UNSUPPORTED_PARTS:
            if re.search(pattern, key):
                raise ModelError(
                    f"MODEL.WEIGHTS {spec}: parameter {key!r} belongs to {what}, which the torchvision "
                    "engine does not build; expected a Faster R-CNN ResNet-FPN or a ResNet backbone"
                )
    names = _tv_names(model)
    out, unknown = {}, []
    for key, value in d2_state.items():
        if key.endswith("num_batches_tracked") or re.search(r"anchor_generator\.|^pixel_(mean|std)$", key):
            continue
        tv = names.get(key)
        if tv is None:
            unknown.append(key)
            continue
        value = torch.as_tensor(value).detach().clone()
        if tv == STEM_CONV and getattr(model, "input_format", "BGR") == "BGR":
            value = value.flip(1)  # the network sees RGB in the torchvision engine
        elif tv.startswith(CLS_SCORE):
            value = torch.cat([value[-1:], value[:-1]])  # background last -> first
        elif tv.startswith(BBOX_PRED):
            value = torch.cat([value.new_zeros((4, *value.shape[1:])), value])
        out[tv] = value
    if unknown and not strict:
        logger.warning(
            "%s: %d blobs without a place in the model, not loaded: %s",
            spec,
            len(unknown),
            ", ".join(sorted(unknown)[:10]),
        )
    elif unknown:
        raise ModelError(
            f"MODEL.WEIGHTS {spec}: {format_listing('parameters without a place in the model', sorted(unknown))}"
            "; expected the Faster R-CNN ResNet-FPN the config describes (check MODEL.RESNETS.DEPTH, "
            "MODEL.ROI_BOX_HEAD.NUM_CONV/NUM_FC, MODEL.RPN.CONV_DIMS)"
        )
    return out


def _from_torchvision(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision ResNet state dict -> ``backbone.body.*`` (its classifier dropped); a torchvision
    detector's old-version names (RPN conv, FPN blocks) -> the current ones, as torchvision's loaders do."""
    out = {}
    for key, value in state.items():
        if re.match(r"^(conv1|bn1|layer\d)\.", key):
            out["backbone.body." + key] = value
        elif key.startswith("fc."):
            continue
        else:
            key = re.sub(r"^rpn\.head\.conv\.(weight|bias)$", r"rpn.head.conv.0.0.\1", key)
            key = re.sub(
                r"^backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.(weight|bias)$", r"backbone.fpn.\1_blocks.\2.0.\3", key
            )
            out[key] = value
    return out


def _is_torchvision_resnet(state: Mapping[str, Any]) -> bool:
    return bool(state) and "conv1.weight" in state and all(re.match(r"^(conv1|bn1|layer\d|fc)\.", k) for k in state)


def _fill_frozen_stats(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Caffe2 backbones store no BatchNorm statistics (an affine layer): mean 0, var 1, as detectron2's
    FrozenBatchNorm2d fills them."""
    own = model.state_dict()
    for key, value in own.items():
        if key.endswith(("running_mean", "running_var")) and key not in state:
            base = key.rsplit(".", 1)[0]
            if base + ".weight" in state:
                state[key] = torch.zeros_like(value) if key.endswith("mean") else torch.ones_like(value)


def _load_backbone(model: nn.Module, state: dict[str, Tensor], spec: str) -> dict[str, Any]:
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    body = [k for k in own if k.startswith("backbone.body.")]
    missing = [k for k in body if k not in state]
    unexpected = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        listed = (("missing backbone keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
        parts = [format_listing(what, items) for what, items in listed if items]
        raise ModelError(
            f"MODEL.WEIGHTS {spec}: the backbone does not fit the model: {'; '.join(parts)}; expected "
            "a ResNet of MODEL.RESNETS.DEPTH (and NUM_GROUPS/WIDTH_PER_GROUP)"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    random = sorted({"backbone.fpn" if k.startswith("backbone.") else k.split(".")[0] for k in own if k not in state})
    logger.warning(
        "Loaded an ImageNet backbone from %s (%d tensors, backbone.body.*); %s (%d tensors) start from random "
        "initialisation",
        spec,
        len(body),
        ", ".join(random),
        len([k for k in own if k not in state]),
    )
    return {"pretrained": spec, "pretrained_part": "backbone"}


def load_pretrained(model: nn.Module, source: WeightsSource) -> dict[str, Any] | None:
    """Load a pretrained checkpoint that is not a meddet checkpoint of the model's engine, with its meaning
    (see the module doc); returns the metadata dict, or None when the file is for the usual loader (a meddet
    checkpoint or a state dict of the model's names; on the detectron2 engine every file, after the
    conventions check, goes to detectron2's DetectionCheckpointer)."""
    path, spec = source.path, source.spec
    engine = getattr(model, "engine", None)
    if engine == "detectron2":
        if source.kind == "torchvision":
            raise ModelError(
                f"MODEL.WEIGHTS {spec}: torchvision weights load into MODEL.ENGINE torchvision; "
                "for detectron2 use detectron2://ImageNetPretrained/torchvision/R-50.pkl"
            )
        conv = conventions_of(source, None)
        if conv is None and path.suffix == ".pkl" and path.is_file():
            with contextlib.suppress(ModelError):  # detectron2's own loader reads what this one cannot
                conv = conventions_of(source, read_pkl(path)[1])
        if conv is not None:
            check_conventions(model, conv, spec)
        return None
    if not path.is_file():
        return None  # the usual loader reports it
    if path.suffix == ".pkl":
        d2_state, fmt = read_pkl(path)
        conv = conventions_of(source, fmt)
        if conv is not None:
            check_conventions(model, conv, spec)
        state = _from_d2(model, d2_state, spec, strict=fmt != "caffe2")
        if fmt == "caffe2" and getattr(model, "backbone", None) is not None:
            _warn_trainable_norm(model, spec)
        _fill_frozen_stats(model, state)
    else:
        raw = read_checkpoint(path)["model"]
        if source.kind != "torchvision" and not _is_torchvision_resnet(raw) and "rpn.head.conv.weight" not in raw:
            conv = conventions_of(source, None)
            if conv is not None:
                check_conventions(model, conv, spec)
            return None  # a meddet checkpoint or a state dict with the model's names: the usual loader
        check_conventions(model, TORCHVISION, spec)
        state = _from_torchvision(raw)
    if state and all(k.startswith("backbone.body.") for k in state):
        return _load_backbone(model, state, spec)

    load_model_state(spec, model, {"model": state}, allow_class_change=True)
    logger.info("Loaded pretrained detector weights from %s (%s)", spec, path)
    return {"pretrained": spec, "pretrained_part": "detector"}


def _warn_trainable_norm(model: nn.Module, spec: str) -> None:
    trainable = [
        n
        for n, m in model.get_submodule("backbone.body").named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    if trainable:
        logger.warning(
            "%s: Caffe2 backbones fuse BatchNorm into an affine layer (no statistics); detectron2 loads them only "
            "into MODEL.RESNETS.NORM FrozenBN, and %d BatchNorm layers of this backbone are trainable (BN)",
            spec,
            len(trainable),
        )


def resolve_and_load(model: nn.Module, spec: str | os.PathLike) -> tuple[Path, dict[str, Any] | None]:
    """The hook at the start of ``load_model_weights``: resolve ``spec`` to a local file and, for pretrained
    files that need a mapping, load them. Returns (local path, metadata or None when the usual loader is to
    load the local path)."""
    inner = model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model
    source = resolve_weights(spec)
    return source.path, load_pretrained(inner, source)
