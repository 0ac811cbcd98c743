# Two commands for a fresh machine (see README.md):
#   make demo   the embedded default demo
#   make test   lint + the test suite
# Both install what is missing first (make setup) and are idempotent. make setup ends with
# `pip check`: it fails when an installed distribution's requirements are not met.
#
# Variables:
#   VENV=path          the virtual environment (default .venv inside the repo; point it at an
#                      existing environment that already has your own CUDA torch to reuse it)
#   TORCH_SPEC="..."   what pip installs when torch/torchvision are not importable
#   D2_MODE=auto|official|registry   how tools/install_detectron2.py gets detectron2
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
D2_MODE ?= auto
STAMP := $(VENV)/.tbd-setup-done

.PHONY: setup demo test lint format clean-output

setup: $(STAMP)

$(STAMP): pyproject.toml tools/install_detectron2.py Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install $(TORCH_SPEC)
	$(PY) tools/install_detectron2.py --mode $(D2_MODE)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip check
	$(PY) -c "import detectron2, tbd, torch; print('detectron2', detectron2.__version__, '| torch', torch.__version__)"
	@touch $(STAMP)

demo: setup
	$(PY) tools/run_demo.py

lint: setup
	$(PY) -m flake8 projects tests tools train_net.py
	$(PY) -m isort --check-only --diff projects tests tools train_net.py
	$(PY) -m black --check -l 100 projects tests tools train_net.py

format: setup
	$(PY) -m isort projects tests tools train_net.py
	$(PY) -m black -l 100 projects tests tools train_net.py

test: lint
	$(PY) -m pytest -q

clean-output:
	rm -rf output
