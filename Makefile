# The two commands of the README:
#   make book   builds the executed book into _build/html
#   make test   runs the test suite (what CI runs)
# Both create the virtual environment and install the pinned dependencies first, if needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# Horovod's wheel is built once per machine and torch version (see scripts/build-horovod-wheel).
TORCH := $(shell grep -oE 'torch==[0-9.]+' pyproject.toml)
WHEELS := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/ray-library-patterns/wheels/$(subst ==,-,$(TORCH))

.PHONY: book test setup lock clean

book: $(INSTALLED)
	$(BIN)/jupyter-book build . -W -n --keep-going

test: $(INSTALLED)
	$(BIN)/pytest

# The set-up alone; Binder's postBuild runs it into Binder's own environment.
setup: $(INSTALLED)

# Refresh the locks the set-up installs from, after changing a pin in pyproject.toml.
lock:
	scripts/lock $(PYTHON) $(WHEELS)

# Re-installs whenever pyproject.toml or a lock changes. VENV may name an existing environment
# (conda users: make book VENV=$$CONDA_PREFIX).
$(INSTALLED): pyproject.toml requirements.lock requirements-alibi.lock scripts/build-horovod-wheel \
		scripts/make-kernel-env scripts/install-browser
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	scripts/build-horovod-wheel $(BIN)/python $(WHEELS)
	$(BIN)/python -m pip install --quiet --find-links $(WHEELS) -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	# The Alibi notebook's own environment and kernel (numpy < 2): .venv-alibi
	scripts/make-kernel-env alibi $(PYTHON) $(BIN)/python
	# Headless Chromium for the rendered-book test (installed with apt when run as root)
	scripts/install-browser
	touch $@

clean:
	rm -rf _build
