#!/usr/bin/env bash
# Shows that patches/chainer-7.8.1-finetune.patch is correct: on each Python
# it downloads a fresh chainer 7.8.1 sdist, applies the patch exactly as
# scripts/build_chainer.sh does, builds and installs it in a new venv, and
# runs chainer's own test files for the patched modules.
#
#   scripts/check_chainer_patch.sh CHAINER_TESTS [PYTHON...]
#
# CHAINER_TESTS is the tests/ folder of a checkout of chainer's repository
# (chainer/chainer on GitHub, tag v7.8.1); the sdist ships no tests. PYTHONs
# default to python3.11 python3.12 python3.13 (as scripts/find_python.sh
# finds them). Each venv gets the NumPy that setup.py picks for that Python
# (NUMPY='numpy==2.2.6' overrides), scipy (for the categorical tests) and
# cupy-cuda12x (test_as_strided.py imports cupy; its GPU tests are
# deselected with -m 'not gpu'). UNPATCHED=1 builds the sdist as it is, to
# see the same tests fail where the patch is needed.
#
# Patched module -> test file:
#   distributions/categorical.py  chainer_tests/distributions_tests/test_categorical.py
#   functions/array/as_strided.py chainer_tests/functions_tests/array_tests/test_as_strided.py
#   reporter.py                   chainer_tests/test_reporter.py
#   _environment_check.py         `import chainer` in a fresh process
#   chainermn _memory_utility.py  (pure_nccl with a GPU only; not run here)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PATCH=$ROOT/patches/chainer-7.8.1-finetune.patch
SDIST_SHA256=179f06176f8d7a42385bc7811956db04e68213cfe30f5081491b9e2b6ff70de8
TESTS=${1:-}
if [[ -z $TESTS || ! -f $TESTS/chainer_tests/test_reporter.py ]]; then
  echo "usage: scripts/check_chainer_patch.sh CHAINER_TESTS [PYTHON...]: CHAINER_TESTS is tests/ of a chainer v7.8.1 checkout (git clone -b v7.8.1 of chainer/chainer on GitHub)" >&2
  exit 2
fi
TESTS=$(cd "$TESTS" && pwd)
shift
PYTHONS=("$@")
[[ ${#PYTHONS[@]} -gt 0 ]] || PYTHONS=(python3.11 python3.12 python3.13)
FILES=(chainer_tests/distributions_tests/test_categorical.py
       chainer_tests/functions_tests/array_tests/test_as_strided.py
       chainer_tests/test_reporter.py)

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
summary=()
status=0
for want in "${PYTHONS[@]}"; do
  py=$("$ROOT/scripts/find_python.sh" "$want") || { status=1; continue; }
  ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  dir=$WORK/py$ver
  mkdir -p "$dir"
  echo "== Python $ver ($py)"
  "$py" -m venv "$dir/venv"
  vpy=$dir/venv/bin/python
  pip="$vpy -m pip -q --disable-pip-version-check"
  if [[ -n ${NUMPY:-} ]]; then numpy=$NUMPY
  elif [[ $ver == 3.13 ]]; then numpy='numpy>=2.1,<3'
  else numpy='numpy>=1.21,<2'; fi
  $pip install 'setuptools>=64,<70' wheel "$numpy"

  # a fresh sdist, checked against the one the patch was reviewed on
  $pip download --no-deps --no-binary :all: --no-build-isolation \
    -d "$dir/sdist" chainer==7.8.1
  echo "$SDIST_SHA256  $dir/sdist/chainer-7.8.1.tar.gz" | sha256sum -c --status
  tar -xzf "$dir/sdist/chainer-7.8.1.tar.gz" -C "$dir"
  src=$dir/chainer-7.8.1
  if [[ -z ${UNPATCHED:-} ]]; then
    git -C "$src" init -q
    git -C "$src" apply --whitespace=nowarn "$PATCH"
  fi
  (cd "$src" && env -u CHAINER_BUILD_CHAINERX $pip wheel --no-deps \
     --no-build-isolation -w "$dir/dist" .)
  $pip install "$dir"/dist/chainer-*.whl "$numpy" scipy pytest mock \
    'cupy-cuda12x>=13,<14'

  label="Python $ver, NumPy $("$vpy" -c 'import numpy; print(numpy.__version__)')"
  if ! "$vpy" -c 'import chainer, chainer.functions, chainermn, onnx_chainer; print("import chainer", chainer.__version__, "ok")'; then
    summary+=("$label: import chainer FAILED"); status=1; continue
  fi
  # run from the tests folder so chainer's conftest.py (if any) applies
  if (cd "$TESTS" && "$vpy" -m pytest -q -p no:cacheprovider -m 'not gpu' \
        "${FILES[@]}" 2>&1 | tee "$dir/pytest.log" | tail -n 3); then
    summary+=("$label: $(tail -n 1 "$dir/pytest.log")")
  else
    summary+=("$label: FAILED $(tail -n 1 "$dir/pytest.log")"); status=1
  fi
done
echo "== chainer's tests for the patched modules${UNPATCHED:+ (UNPATCHED)}"
printf '%s\n' "${summary[@]}"
exit $status
