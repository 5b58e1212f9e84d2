#!/usr/bin/env bash
# Create .venv and install identitydp into it. Usage: scripts/setup.sh [test]
#   (default)  the package (images and video) and matplotlib for `identitydp eval`'s figures
#   test       also pytest, the eval extra (the external `deface` baseline) and the ray extra
#              (the batch runner's Ray engine, tested on an embedded local Ray)
# Versions come from constraints.txt (torch==2.13.0 is a CPU wheel on machines that mirror it).
# Set PYTHON to choose the interpreter (Python >= 3.11).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

version_of() { "$1" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo "unknown"; }
new_enough() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "setup: '$PYTHON' not found; identitydp needs Python >= 3.11 (set PYTHON=/path/to/python3.11 or newer)" >&2
  exit 1
fi
if [ -x .venv/bin/python ]; then
  if ! new_enough .venv/bin/python; then
    echo "setup: .venv has Python $(version_of .venv/bin/python); identitydp needs >= 3.11: remove .venv and rerun (PYTHON=/path/to/python3.11 or newer)" >&2
    exit 1
  fi
else
  if ! new_enough "$PYTHON"; then
    echo "setup: identitydp needs Python >= 3.11, but $PYTHON is $(version_of "$PYTHON"); rerun with PYTHON=/path/to/python3.11 or newer" >&2
    exit 1
  fi
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ "${1:-}" = "test" ]; then
  extras="plots,test,eval,ray"
else
  extras="plots"
fi
.venv/bin/python -m pip install -q -c constraints.txt -e ".[$extras]"
if [ "${1:-}" = "test" ] && ! command -v chromium >/dev/null 2>&1; then
  # The web UI's browser test drives Debian's Chromium (playwright's own browser download is not
  # reachable here); install it when we can, else that one test skips and says why.
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium for the browser test"
    (apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }) \
      || echo "setup: could not install chromium; the browser test will skip" >&2
  else
    echo "setup: chromium not found and not root: the browser test will skip (apt-get install chromium)" >&2
  fi
fi
