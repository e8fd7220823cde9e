#!/usr/bin/env bash
# Install everything and run the whole pipeline on the bundled demo clips.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"
faceflow demo-data
faceflow run
