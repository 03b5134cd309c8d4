# torchkiln: `make demo` and `make test` work on a fresh machine; both create .venv when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
KILN := $(VENV)/bin/kiln
STAMP := $(VENV)/.torchkiln-installed
DEMO_DIR ?= runs/demo

.PHONY: install test lint demo fashion-mnist clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: on this machine pip takes it from local disk (see DEVELOPERS.md)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	# The `trees` detection catalog reads only the data/ folder of deepforest; its dependencies
	# (Lightning, albumentations, ...) are not needed, so it is installed without them.
	$(PY) -m pip install -q --no-deps deepforest==2.1.0
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples
	$(VENV)/bin/lint-imports  # the layers in .importlinter (docs/architecture.md)

# One test process per core, at most 4: on 2 cores the suite takes 525 s instead of 777 s (2026-12-05).
test: lint
	$(PY) -m pytest -q -n auto --maxprocesses 4

# Fashion-MNIST comes from the Debian package when the machine has apt (no download needed);
# otherwise torchkiln downloads it from the canonical source with SHA-256 checks.
fashion-mnist:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) || true; \
	fi

# The demo trains on the catalog copy of Fashion-MNIST (decoded once, in memory) and writes the
# 10,000 test images as PNG files, the layout you would bring yourself, to predict on.
demo: $(STAMP) fashion-mnist
	@test -d data/fashion-mnist/test || $(KILN) datasets fetch fashion-mnist --split test --out data/fashion-mnist
	@mkdir -p $(DEMO_DIR)
	$(KILN) train examples/fashion-mnist.yaml --set runs_dir=$(DEMO_DIR) | tee $(DEMO_DIR)/last-run
	$(KILN) evaluate $$(tail -1 $(DEMO_DIR)/last-run)
	@echo
	@echo "Export to int8 ONNX, gated on accuracy and benchmarked against the eager model:"
	$(KILN) export $$(tail -1 $(DEMO_DIR)/last-run) --quantize static --bench-seconds 1
	@echo
	@echo "Predict on test images (files the model never saw) with the int8 variant:"
	@echo "  $(KILN) predict $$(tail -1 $(DEMO_DIR)/last-run)/bundle-onnx-int8-static data/fashion-mnist/test/Sneaker/*.png --top-k 3"
	@$(KILN) predict $$(tail -1 $(DEMO_DIR)/last-run)/bundle-onnx-int8-static \
		$$(ls data/fashion-mnist/test/Sneaker/*.png | head -2) $$(ls data/fashion-mnist/test/Bag/*.png | head -1) --top-k 3
	@echo
	@echo "Serve the int8 variant over HTTP (kiln serve), predict, stop with SIGTERM, read the prediction log:"
	$(PY) examples/serve_demo.py $$(tail -1 $(DEMO_DIR)/last-run)/bundle-onnx-int8-static \
		$$(ls data/fashion-mnist/test/Sneaker/*.png | head -1) $$(ls data/fashion-mnist/test/Bag/*.png | head -1)

# The closed loop on real Fashion-MNIST, in a few minutes on 2 cores (docs/monitoring.md): a quick champion
# served with a shadow arm, clean then darker traffic, the drift alert, feedback labels, kiln retrain, the
# shadow phase, the promotion and the recovered live accuracy. Everything goes under $(CLOSED_LOOP_DIR).
CLOSED_LOOP_DIR ?= runs/closed-loop
.PHONY: closed-loop
closed-loop: $(STAMP) fashion-mnist
	$(PY) examples/closed_loop.py --work $(CLOSED_LOOP_DIR)

# The capstone (examples/capstone/README.md, docs/capstone.md): pneumonia from chest X-rays, from kiln doctor to a
# retrained, promoted service and the dashboard. Without DATA it runs on the labelled stand-in; with
# DATA=/path/to/chest_xray (Kaggle's train/val/test folders) on the real radiographs.
CAPSTONE_DIR ?= runs/capstone
.PHONY: capstone
capstone: $(STAMP) fashion-mnist
	$(PY) examples/capstone/run.py --work $(CAPSTONE_DIR) $(if $(DATA),--data $(DATA))

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
