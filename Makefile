# resdet — two set-up commands: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-fast test-slow demo table7 table9 degradation rehearsal gpu-check plan-run clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch/torchvision are pinned in constraints.txt (this machine has them on local disk).
	$(PIP) install -c constraints.txt torch torchvision
	$(PIP) install -c constraints.txt -e ".[dev,deploy]"
	touch $(STAMP)

install: $(STAMP)

# The test suite without the slow end-to-end checks (about 4 minutes on 2 cores).
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --timeout=600 $(PYTEST_ARGS)

# The same (kept for scripts that call it).
test-fast: test

# Only the @pytest.mark.slow end-to-end checks (about 20 minutes on 2 cores); CI runs them after `make test`.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow --timeout=900 $(PYTEST_ARGS)

# Main job on the embedded digits default: resnet56 vs plain56 (pretrained) and pretrained vs scratch, two seeds
# each, two steps at a time; writes a report (mean ± spread per arm) under runs/demo/report/.
demo: $(STAMP)
	$(PY) tools/model_info.py --arch resnet56 plain56 resnet101 vgg16
	$(PY) tools/study.py --config configs/study/digits.yaml

# The paper's Table 7 swap (VGG-16 -> ResNet-101) in miniature on digits, two seeds each, plus the paper's RoIPool
# VGG-16 on the same checkpoints (about 45-50 minutes on 2 cores).
table7: $(STAMP)
	$(PY) tools/study.py --config configs/study/digits_table7.yaml

# The paper's Table 9 (box refinement, global context, multi-scale testing, cumulative) in miniature on digits with
# the Table 7 ResNet-101 recipe, two seeds (about 50 minutes on 2 cores; docs/DETECTION.md).
table9: $(STAMP)
	$(PY) tools/study.py --config configs/study/digits_table9.yaml

# The paper's degradation experiment at CPU scale (docs/PRETRAINING.md): plain20/56 vs resnet20/56 on digits.
degradation: $(STAMP)
	for a in plain20 plain56 resnet20 resnet56; do \
	  OMP_NUM_THREADS=1 $(PY) tools/pretrain.py --config configs/pretrain/digits_$$a.yaml \
	    --output-dir runs/digits/$$a --resume train.progress=false || exit 1; \
	done
	$(PY) tools/plot_curves.py runs/digits/plain20 runs/digits/plain56 runs/digits/resnet20 runs/digits/resnet56 \
	  -o runs/digits/degradation.png --panels

# COCO-scale rehearsal on the CPU: 5,000 + 5,000 generated images through train_det.py with 2 processes, a kill and
# --resume, evaluation across ranks and in one process, the report, memory/scaling checks (docs/BENCHMARKS.md).
rehearsal: $(STAMP)
	OMP_NUM_THREADS=1 nice -n 10 $(PY) tools/rehearse.py -o runs/rehearsal

# A lent GPU, <= 8 minutes: AMP training steps of R50/R101-C4, inference fp32/bf16, ResNet-50 classification,
# bf16-vs-fp32 boxes (runs/gpu_check.json). Without CUDA it says so and does nothing.
gpu-check: $(STAMP)
	$(PY) tools/gpu_check.py --json runs/gpu_check.json

# Planning figures for the paper's runs (docs/DETECTION.md): multiply-adds and activation memory, measured on the CPU.
plan-run: $(STAMP)
	OMP_NUM_THREADS=1 nice -n 10 $(PY) tools/plan_run.py --json runs/plan_run.json --markdown runs/plan_run.md

clean:
	rm -rf $(VENV) runs .pytest_cache
