"""`pip install napari-unetpp` without the [napari] extra: the engine and the CLI work headless.

The subprocess below makes every GUI package unimportable (as on a cluster node where they are
not installed), then runs the CLI as a user would: inspect a shipped model and run the demo.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

GUI = (
    "napari",
    "qtpy",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
    "magicgui",
    "superqt",
    "matplotlib",
    "npe2",
    "vispy",
)

_BLOCK = f"""
import importlib.abc, sys

class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {GUI!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: headless test)")
        return None

sys.meta_path.insert(0, _NotInstalled())
from napari_unetpp.cli import main
code = main(sys.argv[1:])
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({GUI!r}))
print("GUI modules loaded:", loaded)
raise SystemExit(code)
"""


def _cli_without_gui(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _BLOCK, *argv], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_info_runs_without_gui_packages(tmp_path: Path) -> None:
    result = _cli_without_gui("info", "zoo:em", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "L4" in result.stdout
    assert "GUI modules loaded: []" in result.stdout


def test_demo_segments_without_gui_packages(tmp_path: Path) -> None:
    result = _cli_without_gui(
        "demo",
        "--model",
        "em",
        "--no-viewer",
        "-q",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "demo"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "IoU against the crop's labels" in result.stdout
    assert (tmp_path / "demo" / "em_labels.tif").is_file()
    assert "GUI modules loaded: []" in result.stdout
