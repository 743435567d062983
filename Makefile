# Two commands do all the set-up from a fresh clone:
#   make demo   creates .venv if missing, installs, runs the embedded demo
#   make test   creates .venv if missing, installs, runs the test suite
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test mpi-system clean

install: $(STAMP)

# chainer 7.8.1 is an sdist that only builds with setuptools<70 (it imports
# pkg_resources in setup.py), so the build runs without isolation against the
# old setuptools installed first.
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check 'setuptools>=64,<70' wheel 'numpy>=1.21,<2'
	$(PY) -m pip install -q --disable-pip-version-check --no-build-isolation -e '.[test,demo]'
	touch $@

demo: $(STAMP)
	$(PY) -m finetune.demo

test: $(STAMP)
	$(PY) -m pytest -q tests

# OpenMPI for multi-process training (and its test); needs root.
mpi-system:
	command -v mpiexec >/dev/null || { apt-get update -qq && \
	  apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null; }

clean:
	rm -rf $(VENV) *.egg-info
