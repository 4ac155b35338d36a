#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite, then lint.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
