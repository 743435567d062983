#!/usr/bin/env bash
# Prints the path of the Python interpreter `make` builds the venv with.
#
#   scripts/find_python.sh            newest working python3.13, 3.12, 3.11
#   scripts/find_python.sh NAME|PATH  that one (e.g. python3.12), checked
#
# "Working" means it runs and has venv with ensurepip (Debian splits that out
# into pythonX.Y-venv). A pyenv shim that only fails ("python3.13: command not
# found" because that version is installed but not selected) is resolved to
# the installed pyenv version, so PYTHON=python3.13 works without
# `pyenv global`. On failure it prints one line on stderr and exits 1.
set -uo pipefail

SUPPORTED="3.13 3.12 3.11"   # newest first; setup.py allows 3.9-3.13

usable() {  # usable CMD -> prints the interpreter's real path
  "$1" -c 'import sys, venv, ensurepip; print(sys.executable)' 2>/dev/null
}

resolve() {  # resolve NAME|PATH -> path of a usable interpreter
  local cand=$1 exe ver
  if exe=$(usable "$cand"); then echo "$exe"; return 0; fi
  # pythonX.Y that pyenv has installed but not selected
  if [[ $cand =~ ^python(3\.[0-9]+)$ ]] && command -v pyenv >/dev/null; then
    ver=${BASH_REMATCH[1]}
    for exe in $(ls -d "$(pyenv root)"/versions/"$ver".*/bin/python"$ver" \
                 2>/dev/null | sort -V -r); do
      if exe=$(usable "$exe"); then echo "$exe"; return 0; fi
    done
  fi
  return 1
}

if [[ $# -gt 0 && -n $1 ]]; then
  if exe=$(resolve "$1"); then
    ver=$("$exe" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    case " 3.9 3.10 $SUPPORTED " in
      *" $ver "*) echo "$exe"; exit 0 ;;
    esac
    echo "PYTHON=$1 is Python $ver; finetune supports 3.9 to 3.13 (tested: 3.11, 3.12, 3.13)." >&2
    exit 1
  fi
  echo "PYTHON=$1 does not run or lacks venv/ensurepip: install it (e.g. apt-get install python3-venv) or pass another PYTHON=." >&2
  exit 1
fi

for ver in $SUPPORTED; do
  if exe=$(resolve "python$ver"); then echo "$exe"; exit 0; fi
done
echo "No Python 3.11, 3.12 or 3.13 with venv found: install one (e.g. apt-get install python3.11-venv, or pyenv install 3.13), or pass PYTHON=/path/to/python3.X." >&2
exit 1
