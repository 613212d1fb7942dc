#!/usr/bin/env bash
# Set up with the test and reference extras (PyTorch + HF transformers for the optional
# round-trip tests), then run the whole test suite, notebooks included. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "test,reference"
export TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
