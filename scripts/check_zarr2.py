"""Check the zarr safety and output helpers against zarr 2 (the tests run on zarr 3).

zarr 2 is allowed by ``zarr>=2.14`` but is not in the development environment, so
this script runs the hostile stores of ``tests/test_reliability.py`` and the output
allocation against a zarr 2 installed into a separate folder::

    pip install --target /tmp/zarr2 --no-deps "zarr<3" "numcodecs<0.16" asciitree \\
        fasteners deprecated wrapt
    PYTHONPATH=/tmp/zarr2:src:tests python scripts/check_zarr2.py
    # numcodecs >= 0.15 can be told to unpickle; then zarr 2 alone runs the payload:
    NUMCODECS_ALLOW_UNSAFE_PICKLE_DECODE=1 PYTHONPATH=/tmp/zarr2:src:tests \
        python scripts/check_zarr2.py

It exits non-zero when a hostile store is not refused or its payload ran through
``read_array``; the "control" lines show what zarr 2 does without the check.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import test_reliability as cases
import zarr

from napari_unetpp.files import UserError, read_array
from napari_unetpp.stores import allocate_outputs, create_array, mark_complete


def main() -> int:
    import numcodecs

    print(f"zarr {zarr.__version__}, numcodecs {numcodecs.__version__}")
    failures = 0
    root = Path(tempfile.mkdtemp())
    for name, make in sorted(cases.HOSTILE_ZARRS.items()):
        store, marker = root / f"{name}.zarr", root / f"{name}.ran"
        make(store, marker)
        try:
            read_array(store)
            refused = False
        except UserError:
            refused = True
        print(f"{name:14s} refused={refused} code_ran={marker.exists()}")
        failures += (not refused) + marker.exists()
    for name in ("compressor", "filters"):  # control: zarr 2 on its own
        store, marker = root / f"{name}.zarr", root / f"{name}.ran"
        try:
            zarr.open(str(store), mode="r")[...]
        except Exception as exc:  # noqa: BLE001 - reported, not handled
            print(f"control {name}: zarr 2 raised {type(exc).__name__}")
        print(f"control {name}: zarr 2 alone ran the payload: {marker.exists()}")
    zarr.save_array(str(root / "ok.zarr"), np.arange(16).reshape(4, 4))
    print("ordinary zarr 2 store reads:", int(read_array(root / "ok.zarr").sum()) == 120)
    arrays, group = allocate_outputs((1, 2), (3, 40, 50), (32, 32), root / "probs.zarr")
    arrays[1][0] = 1.0
    mark_complete(group)
    labels = create_array(
        None, None, (3, 40, 50), "int32", (1, 1024, 1024), path=root / "labels.zarr"
    )
    mark_complete(labels)
    print("allocation:", arrays[1].chunks, dict(group.attrs), labels.chunks, dict(labels.attrs))
    shapes = [read_array(root / name).shape for name in ("probs.zarr", "labels.zarr")]
    print("read back:", shapes)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
