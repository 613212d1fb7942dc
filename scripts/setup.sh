#!/usr/bin/env bash
# Creates .venv (once) and installs tf_mistral (editable) with the extras named in $1 (default:
# "export"). Re-runs skip pip while setup.cfg and setup.py are unchanged since the last install
# of the same extras (a stamp in .venv); code changes need no reinstall (editable).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-export}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
stamp=".venv/.installed-${extras//,/-}"
fingerprint="$(cat setup.cfg setup.py | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$fingerprint" ]; then
  exit 0
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[${extras}]"
echo "$fingerprint" > "$stamp"
