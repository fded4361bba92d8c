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

.PHONY: demo demo-cytology test test-fast venv clean-venv bench-sliced

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

test: $(STAMP)
	@sh scripts/ensure_chromium.sh
	$(VENV)/bin/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

# The inner loop: everything not marked slow (under 90 s on 2 cores). `make test` runs everything.
test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2 --dist loadgroup -m "not slow" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
