#!/usr/bin/env bash
# The main job: set up, then run the whole pipeline on the embedded default
# (or on real weights with --checkpoint DIR). Arguments go to `tf-mistral demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh export
exec .venv/bin/tf-mistral demo "$@"
