# acqflow: `make serve` runs the daemon on its embedded defaults, `make test` runs the
# whole test suite. Both set up what they need on a fresh Debian/Ubuntu machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
SYSTEM_PACKAGES := dcmtk orthanc orthanc-dicomweb prometheus dicom3tools chromium chromium-driver
PYTEST_ARGS ?=

.PHONY: setup system-deps serve test lint typecheck bench demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip setuptools wheel

# torch first and only when absent: a GPU build already in the environment is kept, and
# on a CPU-only machine the pinned CPU wheel is taken instead of the CUDA stack.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "torch==$(TORCH_VERSION)"
	$(BIN)/pip install -e ".[dev,train]"
	touch $@

setup: $(VENV)/.installed

# The test suite talks to real peers: dcmtk, Orthanc, Prometheus and dciodvfy.
system-deps:
	@missing=""; \
	for tool in storescu echoscu storescp Orthanc prometheus dciodvfy chromium chromedriver; do \
	  command -v $$tool >/dev/null 2>&1 || missing=1; done; \
	[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing=1; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $(SYSTEM_PACKAGES); \
	fi

serve: setup
	$(BIN)/acqflow serve

# pytest's exit code 5 means no test ran: that is a failure, never a pass.
test: setup system-deps
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: setup
	$(BIN)/ruff check daemon plugins models tests bench
	MYPY=$(BIN)/mypy .ci/typecheck

bench: setup system-deps
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
