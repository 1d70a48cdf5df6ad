# Every target bootstraps its own virtual environment in .venv.
PYTHON ?= python3
CAMVID ?= ../shared/data/camvid
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: lint format test test-slow test-all test-min-torch demo bench study-scalescenes study-camvid results clean \
	docs docs-serve test-docs docs-outputs test-browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

PY_PATHS := sacseg tests benchmarks studies hubconf.py conftest.py docs/hooks

# Checks that change nothing: ruff's lint rules and formatting, mypy's types, clang-format's C++ style.
lint: $(STAMP)
	$(BIN)/ruff check $(PY_PATHS)
	$(BIN)/ruff format --check $(PY_PATHS)
	$(BIN)/mypy sacseg
	$(BIN)/clang-format --dry-run --Werror sacseg/ops/sampling/*.cpp

# Rewrites the code as `make lint` wants it: ruff's safe fixes and formatting, clang-format.
format: $(STAMP)
	$(BIN)/ruff check --fix $(PY_PATHS)
	$(BIN)/ruff format $(PY_PATHS)
	$(BIN)/clang-format -i sacseg/ops/sampling/*.cpp

# The quick run, tests/ only: everything but the checks marked slow (inductor compiles, torchrun, whole
# runs in subprocesses), on one pytest-xdist worker per core (TEST_WORKERS=0: one process), a test
# file per worker at a time so that a module's fixtures (tiny trained runs) are made once.
# The examples of README.md and the pages run in test-docs.
TEST_WORKERS ?= auto
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m slow

# Every test and every example, slow ones included; the examples run in order, in one process, as a
# reader runs a page.
test-all: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m 'slow or not slow' tests
	$(BIN)/python -m pytest -q -m 'slow or not slow' README.md docs

# The operator and model tests on the oldest PyTorch that pyproject admits (the GPU machines' 2.11),
# in a venv of its own: not part of `make test`.
MIN_TORCH := torch==2.11.0 torchvision==0.26.0
MIN_VENV := .venv-min-torch
test-min-torch:
	test -x $(MIN_VENV)/bin/python || $(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install --quiet $(MIN_TORCH)
	$(MIN_VENV)/bin/python -m pip install --quiet -e '.[dev]' $(MIN_TORCH)
	$(MIN_VENV)/bin/python -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'
	$(MIN_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/ops tests/nn tests/models

# The documentation site (mkdocs.yml) in site/; --strict: a broken link, anchor or API reference fails the build.
# NO_MKDOCS_2_WARNING silences mkdocs-material's banner about its successor.
DOCS_ENV := NO_MKDOCS_2_WARNING=1
docs: $(STAMP)
	$(DOCS_ENV) $(BIN)/mkdocs build --strict

docs-serve: $(STAMP)
	$(DOCS_ENV) $(BIN)/mkdocs serve

# The examples of README.md and the pages (slow ones left out), and the tests of the docs machinery.
test-docs: $(STAMP)
	$(BIN)/python -m pytest -q README.md docs tests/docs

# Every example run (slow ones too), writing what each printed into the output block shown after it.
docs-outputs: $(STAMP)
	SACSEG_DOCS_UPDATE=1 $(BIN)/python -m pytest -q -m 'slow or not slow' README.md docs

# The built site in headless Chromium (the system's chromium and chromedriver); screenshots in docs_screenshots/.
test-browser: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests/docs/test_browser.py

demo: $(STAMP)
	$(BIN)/python -m sacseg demo

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_sac_conv.py

study-scalescenes: $(STAMP)
	$(BIN)/python -m studies.scalescenes --ablations held scale_lr --out docs/results

study-camvid: $(STAMP)
	$(BIN)/python -m studies.camvid --data-root $(CAMVID) --out docs/results

results: $(STAMP)
	$(BIN)/python -m studies.make_results

clean:
	rm -rf $(VENV) $(MIN_VENV) build *.egg-info site docs_screenshots
