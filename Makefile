# Two commands do all the set-up on a fresh machine (see README):
#   make demo   installs sam_hf and runs the SAM2 demo fine-tune on the synthetic orchard (CPU)
#   make test   installs sam_hf with its [dev] extra and runs the test suite
PYTHON ?= python
PIP ?= $(PYTHON) -m pip
DEMO_OUT ?= outputs/sam2_demo
DEMO_SAM3_OUT ?= outputs/sam3_demo
DEMO_TRACKER_OUT ?= outputs/sam3_tracker_demo

.PHONY: install install-dev install-official demo demo-sam3 demo-sam3-tracker test test-slow test-official lint bench

install:
	$(PIP) install -e .

install-dev:
	$(PIP) install -e ".[dev]"

# The official sam2/sam3 packages as test oracles; use a separate venv (sam3 pins old numpy).
install-official:
	SAM2_BUILD_CUDA=0 $(PIP) install --no-build-isolation "sam2==1.1.0"
	$(PIP) install -e ".[dev,official]"

demo: install
	accelerate launch -q --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		recipes/sam2_mineapple.py --config recipes/sam2_demo.yaml --output_dir $(DEMO_OUT)
	$(PYTHON) scripts/demo_forgetting.py $(DEMO_OUT)

demo-sam3: install
	accelerate launch -q --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		recipes/sam3_coco_text.py --config recipes/sam3_demo.yaml --output_dir $(DEMO_SAM3_OUT)
	$(PYTHON) scripts/demo_forgetting.py $(DEMO_SAM3_OUT)

demo-sam3-tracker: install
	accelerate launch -q --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		recipes/sam3_tracker_mineapple.py --config recipes/sam3_tracker_demo.yaml --output_dir $(DEMO_TRACKER_OUT)
	$(PYTHON) scripts/demo_forgetting.py $(DEMO_TRACKER_OUT)

test: install-dev
	$(PYTHON) -m pytest -q -m "not slow and not official"

test-slow: install-dev
	$(PYTHON) -m pytest -q -m "slow and not official"

# Parity with Meta's code: every official test must run here (a skip is a failure).
test-official: install-official
	$(PYTHON) -m pytest -q -m official --require-official

lint: install-dev
	ruff check . && ruff format --check .

bench: install-dev
	$(PYTHON) benchmarks/run_all.py
