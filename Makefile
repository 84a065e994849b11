# resdet — two set-up commands: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-fast demo degradation clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch/torchvision are pinned in constraints.txt (this machine has them on local disk).
	$(PIP) install -c constraints.txt torch torchvision
	$(PIP) install -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Full suite (includes @pytest.mark.slow end-to-end checks).
test: $(STAMP)
	$(PY) -m pytest -q --timeout=900 $(PYTEST_ARGS)

# Everything but the slow end-to-end checks.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --timeout=600 $(PYTEST_ARGS)

# Main job on the embedded digits default; writes a report under runs/demo/.
demo: $(STAMP)
	$(PY) tools/model_info.py --arch resnet20 plain20 resnet50 resnet101 vgg16
	$(PY) tools/study.py --config configs/study/digits.yaml

clean:
	rm -rf $(VENV) runs .pytest_cache
