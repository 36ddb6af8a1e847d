#!/usr/bin/env bash
# Set up (scripts/setup.sh), lint and type-check, then run the whole test suite; GUI tests need a
# (virtual) display.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# lint, format and types first (the same checks as .pre-commit-config.yaml); mypy reads
# [tool.mypy] in pyproject.toml
.venv/bin/python -m ruff check src tests scripts benchmarks
.venv/bin/python -m ruff format --check src tests scripts benchmarks
.venv/bin/python -m mypy --config-file pyproject.toml src/napari_unetpp
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [ -z "${DISPLAY:-}" ] && command -v xvfb-run >/dev/null 2>&1; then
  exec xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python -m pytest "$@"
fi
exec .venv/bin/python -m pytest "$@"
