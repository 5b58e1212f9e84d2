#!/usr/bin/env bash
# Create .venv and install identitydp into it. Usage: scripts/setup.sh [test]
# Everything comes from PyPI (torch==2.13.0 is a CPU wheel on machines that mirror it).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ "${1:-}" = "test" ]; then
  .venv/bin/python -m pip install -q -e '.[test,eval]'
else
  .venv/bin/python -m pip install -q -e .
fi
