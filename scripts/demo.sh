#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job: segment the bundled EM sample with the shipped
# EM model (MODEL=nuclei or ct for the others), write the image and labels to demo_output/, print
# the score against the sample's labels, and open napari with the result when a display is available.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/napari-unetpp demo --model "${MODEL:-em}" --out "${OUT:-demo_output}" "$@"
