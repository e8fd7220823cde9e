#!/usr/bin/env bash
# Install faceflow into .venv: torch first (a CPU or CUDA build, whichever pip finds for 2.13.0),
# then the project with every dependency pinned by requirements.lock. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade "pip>=24"
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet --constraint requirements.lock --editable ".[test]"
echo "faceflow installed in .venv (activate it with: source .venv/bin/activate)"
