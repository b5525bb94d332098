# The two commands of the README:  make demo  and  make test.
# Both set up everything they need: a virtualenv in .venv with the package,
# git-annex (from its PyPI wheel), and for the tests a real Secret Service.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: venv test demo bench docs secret-service slurm clean oldest-annex

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[devel]'
	touch $@

venv: $(VENV)/.installed

# The oldest git-annex we support (setup.cfg, README "Installation"), from
# its PyPI wheel into a directory of its own; its binary serves under each
# name it answers to (git-annex, git-annex-shell, git-remote-annex).
OLDEST_ANNEX  ?= 10.20250605
OLDEST_DIR    := .oldest-annex
$(OLDEST_DIR)/.installed:
	rm -rf $(OLDEST_DIR)
	$(PY) -m pip install -q --no-deps --target $(OLDEST_DIR) git-annex==$(OLDEST_ANNEX)
	mkdir -p $(OLDEST_DIR)/path
	for n in git-annex git-annex-shell git-remote-annex; do \
	  ln -sf ../git_annex/git-annex $(OLDEST_DIR)/path/$$n; done
	touch $@

oldest-annex: venv $(OLDEST_DIR)/.installed

# What runs a second time, and how: against the oldest git-annex (keys,
# the annex layer's fast path, a download), a minute or two on 2 cores.
OLDEST_TESTS ?= tests/test_keys.py tests/test_fastpath_off.py \
	tests/test_annex.py::test_link_makes_what_fromkey_makes \
	tests/test_annex.py::test_ingest_moves_verified_content_in \
	tests/test_download.py::test_download_with_pseudonyms

secret-service:
	@tools/ensure-secret-service

# Slurm (slurmctld, slurmd, munge) for the job-array tests, which start a
# one-node cluster of their own; installed with apt when run as root.
slurm:
	@tools/ensure-slurm

# The tests run in a scratch HOME (DataLad writes credential properties to the
# global git config) and a private, unlocked gnome-keyring. They build the
# documentation first, so that CI keeps it honest.
test: venv secret-service slurm docs oldest-annex
	@home=$$(mktemp -d) && \
	  HOME=$$home tools/with-keyring $(PY) -m pytest $(PYTEST_ARGS); \
	  rc=$$?; rm -rf $$home; [ $$rc -eq 0 ] || exit $$rc; \
	  home=$$(mktemp -d) && \
	  HOME=$$home PATH=$(abspath $(OLDEST_DIR))/path:$$PATH tools/with-keyring \
	    $(PY) -m pytest -q $(OLDEST_TESTS); \
	  rc=$$?; rm -rf $$home; exit $$rc

demo: venv secret-service
	@home=$$(mktemp -d) && \
	  HOME=$$home tools/with-keyring $(PY) -m datalad_fmrif.sandbox.demo $(DEMO_ARGS); \
	  rc=$$?; rm -rf $$home; exit $$rc

# The documentation site. docs/transcripts.py runs every command the pages
# show against the sandbox XNAT (in a scratch HOME with a private keyring, like
# the demo) and writes what they print; it runs again whenever the package or
# the script changed. Then Sphinx builds the site, warnings as errors.
DOCS_BUILD  := docs/_build
TRANSCRIPTS := $(DOCS_BUILD)/transcripts

$(TRANSCRIPTS)/.done: $(VENV)/.installed docs/transcripts.py \
		$(shell find datalad_fmrif -name '*.py') | secret-service
	@home=$$(mktemp -d) && \
	  HOME=$$home tools/with-keyring $(PY) docs/transcripts.py $(TRANSCRIPTS); \
	  rc=$$?; rm -rf $$home; exit $$rc
	@touch $@

docs: venv $(TRANSCRIPTS)/.done
	$(PY) -m sphinx -W --keep-going -E -q -b html docs $(DOCS_BUILD)/html
	@echo "The documentation is in $(DOCS_BUILD)/html/index.html"

# The benchmark (benchmarks/README.md): the sandbox XNAT with a reference
# study, and every way of getting it into a dataset, side by side, in a
# scratch HOME with a private keyring. A quick run:
#   make bench BENCH_ARGS="--size small"
# psutil (memory of the whole process tree) is the one extra it needs;
# datalad-xnat gets a virtualenv of its own under $TMPDIR.
$(VENV)/.bench: $(VENV)/.installed
	$(PY) -m pip install -q psutil
	touch $@

bench: venv secret-service $(VENV)/.bench
	@home=$$(mktemp -d) && \
	  HOME=$$home tools/with-keyring $(PY) benchmarks/run.py $(BENCH_ARGS); \
	  rc=$$?; rm -rf $$home; exit $$rc

clean:
	rm -rf $(VENV) $(OLDEST_DIR) build *.egg-info
