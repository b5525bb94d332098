# The two commands of the README:  make demo  and  make test.
# Both set up everything they need: a virtualenv in .venv with the package,
# git-annex (from its PyPI wheel), and for the tests a real Secret Service.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: venv test demo bench docs secret-service clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[devel]'
	touch $@

venv: $(VENV)/.installed

secret-service:
	@tools/ensure-secret-service

# The tests run in a scratch HOME (DataLad writes credential properties to the
# global git config) and a private, unlocked gnome-keyring.
test: venv secret-service
	@home=$$(mktemp -d) && \
	  HOME=$$home tools/with-keyring $(PY) -m pytest $(PYTEST_ARGS); \
	  rc=$$?; rm -rf $$home; exit $$rc

demo: venv secret-service
	@home=$$(mktemp -d) && \
	  HOME=$$home tools/with-keyring $(PY) -m datalad_fmrif.sandbox.demo; \
	  rc=$$?; rm -rf $$home; exit $$rc

clean:
	rm -rf $(VENV) build *.egg-info
