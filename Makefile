# Two commands do all the set-up from a fresh clone:
#   make demo   creates .venv if missing, installs, runs the embedded demo
#   make test   creates .venv if missing, installs, runs the test suite
# The venv is made with the newest of python3.13, 3.12, 3.11 found
# (scripts/find_python.sh); PYTHON=python3.12 (or a path) picks one, and
# VENV=.venv-3.12 keeps a second venv beside the first.
PYTHON ?=
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PATCH := patches/chainer-7.8.1-finetune.patch
PIP := $(PY) -m pip -q --disable-pip-version-check

.PHONY: install demo test check-venv mpi-system clean

install: $(STAMP)

# chainer 7.8.1 is an sdist whose setup.py imports pkg_resources, so it and
# this project build without isolation against setuptools<70, installed
# first. scripts/build_chainer.sh applies $(PATCH) (Python 3.12/3.13 and
# NumPy 2 fixes, float64 log means) and builds the wheel
# chainer-7.8.1+finetune.N once into .whl/; it is installed before the
# project, whose chainer==7.8.1 it satisfies.
$(STAMP): setup.py $(PATCH) scripts/build_chainer.sh
	@py=$$(scripts/find_python.sh $(PYTHON)) || exit 1; \
	  echo "make: $(VENV) with $$py ($$($$py -V 2>&1))"; \
	  test -x $(PY) || $$py -m venv $(VENV)
	$(PIP) install 'setuptools>=64,<70' wheel
	whl=$$(scripts/build_chainer.sh $(PY)) && \
	  $(PIP) install --no-deps --force-reinstall "$$whl" && \
	  $(PIP) install --no-build-isolation --find-links "$$(dirname "$$whl")" \
	    -e '.[test,demo]'
	$(PIP) check
	touch $@

# A PYTHON given to make must match an existing venv's Python.
check-venv:
	@if [ -n "$(PYTHON)" ] && [ -x $(PY) ]; then \
	  v='import sys; print("%d.%d" % sys.version_info[:2])'; \
	  want=$$(py=$$(scripts/find_python.sh $(PYTHON)) && $$py -c "$$v") || exit 1; \
	  have=$$($(PY) -c "$$v"); \
	  [ "$$want" = "$$have" ] || { echo "make: $(VENV) has Python $$have, not $$want: pass VENV=.venv-$$want or run make clean" >&2; exit 1; }; \
	fi

demo: check-venv $(STAMP)
	$(PY) -m finetune.demo

test: check-venv $(STAMP)
	$(PY) -m pytest -q --durations=10 tests

# OpenMPI for multi-process training (and its test); needs root.
mpi-system:
	command -v mpiexec >/dev/null || { apt-get update -qq && \
	  apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null; }

clean:
	rm -rf $(VENV) *.egg-info
