# Two commands do all the set-up on a fresh machine (see README):
#   make demo   installs sam_hf and runs the SAM2 demo fine-tune on the synthetic orchard (CPU)
#   make test   installs sam_hf with its [dev] extra and runs the test suite
PYTHON ?= python
PIP ?= $(PYTHON) -m pip
DEMO_OUT ?= outputs/sam2_demo

.PHONY: install install-dev demo demo-sam3 test test-slow lint bench

install:
	$(PIP) install -e .

install-dev:
	$(PIP) install -e ".[dev]"

demo: install
	accelerate launch -q --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		recipes/sam2_mineapple.py --config recipes/sam2_demo.yaml --output_dir $(DEMO_OUT)

test: install-dev
	$(PYTHON) -m pytest -q -m "not slow"

test-slow: install-dev
	$(PYTHON) -m pytest -q -m slow

lint: install-dev
	ruff check . && ruff format --check .

bench: install-dev
	$(PYTHON) benchmarks/run_all.py
