"""Where the shared real data lives (tests, benchmarks and the zoo scripts read it).

Why one function: the same search was written in the test fixtures, the
benchmarks and the scripts, and they drifted (some honoured
``NAPARI_UNETPP_DATA`` only when it held the EM set, some always).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATASETS", "shared_data_dir"]

#: The dataset folders of the shared data; a folder holding any of them is the data folder.
DATASETS = ("em_isbi2012", "nuclei_dsb2018", "ct_totalseg")


def shared_data_dir() -> Path | None:
    """``$NAPARI_UNETPP_DATA``, else ``../shared/data`` beside the project, else
    ``/work/shared/data``: the first that holds one of :data:`DATASETS`, or None."""
    project = Path(__file__).resolve().parents[2]
    candidates = (
        os.environ.get("NAPARI_UNETPP_DATA", ""),
        project.parent / "shared" / "data",
        "/work/shared/data",
    )
    for candidate in candidates:
        if candidate and any((Path(candidate) / name).is_dir() for name in DATASETS):
            return Path(candidate)
    return None
