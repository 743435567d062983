#!/usr/bin/env bash
# Check the Caffe reader/writer under several protobuf releases, each in a
# fresh venv: bash scripts/protobuf_matrix.sh [VERSION ...]
# (default: the oldest supported 4.x, a 5.x, a 6.x and the newest).
set -euo pipefail
cd "$(dirname "$0")/.."
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(4.21.12 5.29.5 6.33.1 '')
for v in "${versions[@]}"; do
  dir=$(mktemp -d)
  python3.11 -m venv "$dir"
  "$dir/bin/pip" install -q 'setuptools>=64,<70' wheel 'numpy<2' "protobuf${v:+==$v}" pillow tqdm matplotlib 'opencv-python-headless<4.12'
  "$dir/bin/pip" install -q --no-build-isolation chainer==7.8.1
  "$dir/bin/pip" install -q --no-build-isolation --no-deps -e .
  "$dir/bin/python" scripts/protobuf_check.py
  rm -rf "$dir"
done
