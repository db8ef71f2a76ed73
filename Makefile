# Two commands do all setup: `make demo` and `make test`. Both bootstrap .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := runs/demo
export TORCH_EXTENSIONS_DIR := $(CURDIR)/$(VENV)/torch_extensions
export PYTHONUNBUFFERED := 1

.PHONY: demo test lint bench clean-demo venv

venv: $(STAMP)

# torch first, alone and pinned: those wheels lie on this machine's disk (any other spelling
# pulls several GB); GPU users get their CUDA build from the same range in pyproject.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[all]"
	@# Tesseract is the independent OCR judge of tests/test_real_scanner.py (Debian package);
	@# where apt is not usable the test falls back to the OCR shipped in rapidocr-onnxruntime
	command -v tesseract >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && apt-get install -y -qq tesseract-ocr >/dev/null; } || true
	touch $(STAMP)

demo: $(STAMP)
	bash launch/demo.sh $(DEMO)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

lint: $(STAMP)
	$(VENV)/bin/ruff check sharder dali_pipes trainer finetune phantom runconfig benchmarks tests

bench: $(STAMP)
	$(PY) benchmarks/throughput.py --json benchmarks/results/latest_cpu.json

clean-demo:
	rm -rf $(DEMO)
