# Two entry points do all set-up themselves:  `make demo`  and  `make test`.
# Both create (or refresh, when pyproject.toml changes) the virtual environment in .venv.
PYTHON ?= python3
VENV   ?= .venv
# The local torch build (pip cache on the development machines); override for other platforms,
# e.g. `make test TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# SAHI for the merge cross-check (tests/test_merge.py) and the sliced benchmark, pinned to the version whose
# merge semantics meddet was checked against. It requires opencv-python, which would clash with our
# opencv-python-headless (both own cv2), so it goes in without its dependencies (shapely is in [dev]).
SAHI_SPEC ?= sahi==0.12.8
STAMP := $(VENV)/.meddet-installed
# Benchmark-only extras of `make bench-peer`, kept out of the venv (so `make test` never sees them) in a folder
# put on PYTHONPATH: Ultralytics (its opencv-headless build, still --no-deps: torch, numpy, cv2, matplotlib,
# psutil, pyyaml come from the venv; requests and the HUB client are not needed offline) and deepforest, whose
# wheel ships the real annotated aerial images (its data files only: the package is never imported).
PEER_EXTRAS ?= $(VENV)/peer-extras
PEER_SPEC ?= ultralytics-opencv-headless==8.4.190 ultralytics-thop==2.2.3 polars==2.1.0 polars-runtime-32==2.1.0 deepforest==2.1.0
PEER_ARGS ?=

.PHONY: demo demo-cytology test test-fast lint format venv clean-venv bench-sliced bench-peer

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check $(TORCH_SPEC)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps $(SAHI_SPEC)
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python scripts/demo.py

# Small objects in large images: tiles, sliced inference, tile-level and whole-image evaluation.
demo-cytology: $(STAMP)
	$(VENV)/bin/python scripts/demo_cytology.py

# meddet's sliced inference against SAHI's get_sliced_prediction (SAHI installed with the venv, above).
bench-sliced: $(STAMP)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check fire requests
	$(VENV)/bin/python benchmarks/sliced_benchmark.py

# meddet Faster R-CNN R18/R50 and RetinaNet R18 against Ultralytics YOLO11n/s, from scratch, the same split,
# input size and wall-clock budget (10 min each on 2 CPU threads: about 3 h for 3 datasets x 5 models).
# e.g. make bench-peer PEER_ARGS="--budget-seconds 60 --datasets mammo --models yolo11n,frcnn_r18"
# On a machine other processes share, add --threads 1 (see README "Against Ultralytics YOLO"); from a git worktree
# use the main checkout's venv: make bench-peer VENV=/path/to/main/.venv -o /path/to/main/.venv/.meddet-installed
# It first runs its own end-to-end check (tests marked `peer`, which need these extras; `make test` leaves them out).
bench-peer: $(PEER_EXTRAS)/.installed
	PYTHONPATH=$(abspath $(PEER_EXTRAS)) $(VENV)/bin/python -m pytest -q -m peer tests/test_peer_benchmark.py
	PYTHONPATH=$(abspath $(PEER_EXTRAS)) OMP_NUM_THREADS=2 $(VENV)/bin/python benchmarks/peer_benchmark.py $(PEER_ARGS)

$(PEER_EXTRAS)/.installed: $(STAMP) Makefile
	rm -rf $(PEER_EXTRAS)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps --target $(PEER_EXTRAS) $(PEER_SPEC)
	@touch $@

# Style (ruff: lint + format, [tool.ruff]), types (mypy on meddet/ and webapp/, [tool.mypy]; its cache in
# .mypy_cache makes a re-run take seconds) and the layers contract (pyproject.toml [tool.importlinter]): lower
# layers never import higher ones, no cycles. `make format` rewrites the files ruff would change.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	@sh scripts/ensure_chromium.sh
	$(VENV)/bin/python -m pytest -n 2 --dist loadgroup -m "not peer" $(PYTEST_ARGS)

# The inner loop: everything not marked slow (under 90 s on 2 cores). `make test` runs everything.
test-fast: lint
	$(VENV)/bin/python -m pytest -n 2 --dist loadgroup -m "not slow and not peer" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
