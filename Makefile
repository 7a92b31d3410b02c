# Set-up and test commands; README.md quotes them.
PYTHON ?= python3
VENV ?= .venv
BACKENDS ?= tensorflow jax torch
PY := $(VENV)/bin/python

.PHONY: venv quickstart test test-slow docs

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml ci/requirements.txt ci/requirements-no-deps.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r ci/requirements.txt -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps -r ci/requirements-no-deps.txt
	touch $@

# The quickstart distillation (scikit-learn's digits: no download).
quickstart: venv
	KERAS_BACKEND=jax $(PY) examples/quickstart.py

# The whole suite, once per backend, on two worker processes.
test: venv
	@for backend in $(BACKENDS); do \
		echo "== KERAS_BACKEND=$$backend"; \
		KERAS_BACKEND=$$backend $(PY) -m pytest -q -n 2 -p no:cacheprovider || exit 1; \
	done

# Real data and long runs (MNIST), with a small budget.
test-slow: venv
	@for backend in $(BACKENDS); do \
		echo "== KERAS_BACKEND=$$backend (slow)"; \
		KERAS_BACKEND=$$backend $(PY) -m pytest -q -n 2 -p no:cacheprovider -m slow || exit 1; \
	done

# The documentation site (MkDocs), built in strict mode: a broken reference
# or a docstring that does not parse fails the build.
docs: venv
	KERAS_BACKEND=jax $(VENV)/bin/mkdocs build --strict --site-dir site
