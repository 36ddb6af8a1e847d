#!/usr/bin/env bash
# Create .venv with the project and its test extras; install the Debian packages napari needs
# for a virtual display when they are missing and we are root (CI, containers).
# Torch is pinned here only for the dev/CI machines (a local CPU build); the package itself
# accepts any torch >= 2.1, so users bring their own (CUDA, MPS or CPU).
set -euo pipefail
cd "$(dirname "$0")/.."

GUI_PACKAGES="xvfb xauth libgl1 libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 \
libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 \
libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1"
if ! command -v xvfb-run >/dev/null 2>&1 || ! ldconfig -p | grep -q libxcb-cursor; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq $GUI_PACKAGES >/dev/null
  else
    echo "setup: please install (Debian/Ubuntu names): $GUI_PACKAGES" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e ".[testing]"
