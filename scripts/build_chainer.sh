#!/usr/bin/env bash
# Builds the patched chainer wheel once and prints its path.
#
#   scripts/build_chainer.sh PY [CACHE]
#
# PY is a Python whose environment has setuptools<70 and wheel (chainer
# 7.8.1's setup.py imports pkg_resources, so it builds without isolation).
# CACHE (default .whl/ in the repository) keeps the PyPI sdist and the wheel,
# which is pure Python and serves every Python version. The wheel's folder is
# named after the SHA-256 of the patch and the sdist, so changing
# patches/chainer-7.8.1-finetune.patch builds a new one; an unchanged patch
# reuses it. Nothing is monkeypatched at run time: this is chainer 7.8.1 with
# the patch applied, version 7.8.1+finetune.N.
set -euo pipefail

PY=${1:?usage: scripts/build_chainer.sh PY [CACHE]}
# absolute (the build runs elsewhere), but not resolved: a venv's python is
# a symlink that must stay one to find its venv
case $PY in /*) ;; */*) PY=$PWD/$PY ;; *) PY=$(command -v "$PY") ;; esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${2:-$ROOT/.whl}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
PATCH=$ROOT/patches/chainer-7.8.1-finetune.patch
SDIST_SHA256=179f06176f8d7a42385bc7811956db04e68213cfe30f5081491b9e2b6ff70de8
SDIST=$CACHE/sdist/chainer-7.8.1.tar.gz

say() { echo "build_chainer: $*" >&2; }

if [[ ! -f $SDIST ]] || ! echo "$SDIST_SHA256  $SDIST" | sha256sum -c --status; then
  say "downloading the chainer 7.8.1 sdist"
  rm -f "$SDIST"
  "$PY" -m pip download -q --disable-pip-version-check --no-deps \
    --no-binary :all: --no-build-isolation -d "$CACHE/sdist" chainer==7.8.1 >&2
  echo "$SDIST_SHA256  $SDIST" | sha256sum -c --status || {
    say "$SDIST does not have the SHA-256 the patch was reviewed against"; exit 1; }
fi

KEY=$(cat "$PATCH" "$SDIST" | sha256sum | cut -c1-16)
OUT=$CACHE/chainer-7.8.1-$KEY
if whl=$(ls "$OUT"/chainer-7.8.1+finetune.*-py3-none-any.whl 2>/dev/null); then
  echo "$whl"
  exit 0
fi

say "building $(basename "$OUT") (patch changed or first build)"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
tar -xzf "$SDIST" -C "$TMP"
SRC=$TMP/chainer-7.8.1
# git apply on its own repository root, wherever TMPDIR is
git -C "$SRC" init -q
git -C "$SRC" apply --whitespace=nowarn "$PATCH"
(cd "$SRC" && env -u CHAINER_BUILD_CHAINERX "$PY" -m pip wheel -q \
   --disable-pip-version-check --no-deps --no-build-isolation \
   -w "$TMP/dist" . >&2)
whl=$(ls "$TMP"/dist/chainer-7.8.1+finetune.*-py3-none-any.whl) || {
  say "no chainer-7.8.1+finetune.N wheel was built"; exit 1; }
mkdir -p "$OUT.part"
mv "$whl" "$OUT.part/"
rm -rf "$OUT" && mv "$OUT.part" "$OUT"
# wheels of earlier patches are not used again
for old in "$CACHE"/chainer-7.8.1-*; do
  [[ $old == "$OUT" ]] || rm -rf "$old"
done
echo "$OUT/$(basename "$whl")"
