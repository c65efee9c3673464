# One-command set-up, tests, lint and the built-in demo. See README.md.

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# detectron2's Python code comes from this PyPI wheel (no official release exists); its compiled
# ops are not used. Set SKIP_DETECTRON2=1 when detectron2 is already installed in .venv
# (for example a source build with compiled CUDA ops, see docs/install.md).
DETECTRON2_WHEEL := sal-detectron2==0.7.2
DETECTRON2_DIR := $(VENV)/detectron2
SKIP_DETECTRON2 ?= 0
DEMO_DATA := datasets/synthetic_dental
DEMO_OUTPUT := output/demo

.PHONY: install browser test test-fast test-gpu lint format demo demo-real clean

install: $(VENV)/.installed

$(PY):
	$(PYTHON) -m venv $(VENV)

# The project and every dependency (torch pinned in setup.py) are installed first.
$(VENV)/.project: setup.py | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# The wheel is tagged for Python 3.10 but its Python code is version-independent, so pip is
# told to fetch it for 3.10 and unpack it into a folder of its own, put on sys.path by a .pth
# file. Its top-level `tools` package is deleted so that it cannot shadow anyone's tools/.
$(VENV)/.detectron2: $(VENV)/.project
ifeq ($(SKIP_DETECTRON2),1)
	$(PY) -c "import detectron2" || (echo "SKIP_DETECTRON2=1 but detectron2 is not importable in $(VENV)"; exit 1)
else
	rm -rf $(DETECTRON2_DIR)
	$(PY) -m pip install --quiet --no-deps --only-binary=:all: --python-version 3.10 \
		--target $(DETECTRON2_DIR) $(DETECTRON2_WHEEL)
	rm -rf $(DETECTRON2_DIR)/tools
	$(PY) -c "import os, sysconfig; open(os.path.join(sysconfig.get_paths()['purelib'], 'detectron2-wheel.pth'), 'w').write(os.path.abspath('$(DETECTRON2_DIR)') + '\n')"
endif
	touch $@

$(VENV)/.installed: $(VENV)/.detectron2
	$(PY) -m dental_d2.collect_env
	touch $@

# The browser test drives Debian's chromium through Playwright (which cannot download its own
# browsers here). Installed when missing and possible (root with apt-get); otherwise the test
# is skipped, except in CI, where it fails.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
		|| echo "note: Debian's chromium is not installed; the browser test will be skipped"

# Everything (what CI runs). One pytest worker per core, four at most; each test file runs in
# one worker, so a module's fixtures (a model trained for its tests) are built once. Many tests
# wait on a tool or a server they started, and the other worker uses the core meanwhile. Files
# are handed out in collection order, where conftest.py puts the longest first
# (tests/support.py: LONGEST_FIRST), so that the workers finish together.
PYTEST_WORKERS := -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder

test: install browser
	$(PY) -m pytest tests $(PYTEST_WORKERS)

# The fast tier: everything but the end-to-end runs marked `slow` (trainings, tools run as
# processes, servers), in about a minute.
test-fast: install
	$(PY) -m pytest tests -m "not slow" $(PYTEST_WORKERS)

# The GPU tier: tests marked `cuda` (AMP with accumulation, GradScaler resume, ONNX, Predictor,
# the service and the benchmark on CUDA). Skipped, with the reason, on a machine without CUDA.
test-gpu: install
	$(PY) -m pytest tests -m cuda

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The built-in demo: synthetic data, a from-scratch CPU model, evaluation and pictures.
$(DEMO_DATA)/test/_annotations.coco.json: | install
	$(PY) tools/make_synthetic_dataset.py --output $(DEMO_DATA)

demo: install $(DEMO_DATA)/test/_annotations.coco.json
	$(PY) tools/train_net.py --config-file configs/quick_schedules/dental_demo_cpu.yaml
	$(PY) tools/visualize.py \
		--input $(DEMO_DATA)/test --output $(DEMO_OUTPUT)/predictions \
		MODEL.WEIGHTS $(DEMO_OUTPUT)/model_final.pth
	@echo
	@echo "Demo finished. Everything is in $(DEMO_OUTPUT)/:"
	@echo "  model_final.pth, model_best.pth   trained weights (class names and config inside)"
	@echo "  eval/dental_test/                 metrics.json, report.html, PR curves, confusion matrix"
	@echo "  predictions/                      overlays, predictions.coco.json, findings.json"
	@echo "  log.txt, metrics.json             training log and scalars"
	@echo "  TensorBoard:                      $(VENV)/bin/tensorboard --logdir $(DEMO_OUTPUT)"

# The real-photo demo: ImageNet-pretrained EfficientNet-Lite0 fine-tuned on the DentalAI subset
# in datasets/dentalai_demo (CC BY 4.0, see its README.md); no internet needed.
REAL_DEMO_CONFIG := configs/quick_schedules/dental_lite0_demo_cpu.yaml
REAL_DEMO_OUTPUT := output/demo_real

demo-real: install
	$(PY) tools/train_net.py --config-file $(REAL_DEMO_CONFIG)
	$(PY) tools/visualize.py \
		--input datasets/dentalai_demo/test --output $(REAL_DEMO_OUTPUT)/predictions \
		MODEL.WEIGHTS $(REAL_DEMO_OUTPUT)/model_final.pth
	@echo
	@echo "Real-photo demo finished. Everything is in $(REAL_DEMO_OUTPUT)/ (laid out as make demo's)."

clean:
	rm -rf $(VENV) build *.egg-info
