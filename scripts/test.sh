#!/usr/bin/env bash
# Set up with the test and reference extras (PyTorch + HF transformers for the optional
# round-trip tests), lint with ruff (ruff.toml), then run the whole test suite, notebooks included
# (executed by nbmake on the venv's python), in two pytest-xdist workers (one per core of the CI
# machine; each test file runs whole in one worker, so its module fixtures are made once).
# Arguments go to pytest and replace the default paths "tests notebooks",
# e.g. `bash scripts/test.sh tests/test_cli.py -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "test,reference"
export TF_CPP_MIN_LOG_LEVEL=2
# The notebook kernel ("python3") is started as `python`: make that the venv's.
export PATH="$PWD/.venv/bin:$PATH"
if [ "$#" -eq 0 ]; then
  .venv/bin/ruff check .
  set -- tests notebooks
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --nbmake --nbmake-timeout=900 "$@"
