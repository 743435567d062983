#!/usr/bin/env bash
# Install the `gpu` extra into a fresh venv exactly as the README says and
# check it (scripts/gpu_stack_check.py): chainer finds CuPy and cuDNN with no
# LD_LIBRARY_PATH, every cupy/cuDNN name chainer uses exists, and --gpu is a
# one-line error without a device (or a kernel runs, on a GPU machine).
#   bash scripts/gpu_stack_check.sh [VENV]   (default: a temporary one)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-$(mktemp -d)}
[ -x "$dir/bin/python" ] || python3.11 -m venv "$dir"
"$dir/bin/pip" install -q --disable-pip-version-check 'setuptools>=64,<70' wheel 'numpy>=1.21,<2'
"$dir/bin/pip" install -q --disable-pip-version-check --no-build-isolation -e '.[gpu]'
env -u LD_LIBRARY_PATH "$dir/bin/python" scripts/gpu_stack_check.py
