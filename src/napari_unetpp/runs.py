"""Training run folders: the run record written at the start, and what ``--resume`` reads.

Why at the start: a run killed after an hour must be resumable by
``train --out RUN --resume`` alone, with the flags it was started with, not the
defaults. So the resolved configs and the input files are recorded in
``RUN/run.json`` before the first step; ``RUN/last/`` (weights, optimizer and RNG
state, renamed into place together) holds the progress.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .files import UserError

__all__ = ["RUN_FILE", "PATH_KEYS", "write_run_file", "recorded_inputs", "check_same_architecture"]

RUN_FILE = "run.json"
#: Input-file entries of a run record, as the train widget writes them too.
PATH_KEYS = ("images", "labels", "val_images", "val_labels")


def write_run_file(folder: Path, record: dict[str, Any]) -> Path:
    """Write ``folder/run.json`` atomically (a kill leaves the old or the new one)."""
    path = folder / RUN_FILE
    tmp = folder / f".{RUN_FILE}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def absolute_paths(paths: Sequence[str | os.PathLike[str]] | None) -> list[str] | None:
    """Paths as recorded: absolute, so a resume works from any working directory."""
    return None if not paths else [str(Path(p).resolve()) for p in paths]


def recorded_inputs(record: dict[str, Any], run_file: Path) -> dict[str, list[str]]:
    """The input files a run record names (lists of paths), validated."""
    inputs: dict[str, list[str]] = {}
    for key in PATH_KEYS:
        value = record.get(key)
        if value is None:
            continue
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UserError(f"{run_file}: {key!r} must be a list of file paths")
        inputs[key] = value
    return inputs


def check_same_architecture(
    recorded: Any, widths: Sequence[int] | None, depth: int | None, out: Path
) -> None:
    """``--resume`` with ``--widths/--depth``: fine when they repeat the run's, else refused."""
    from .config import ModelConfig

    asked = recorded.to_dict()
    if widths:
        asked["widths"] = tuple(widths)
    if depth is not None:
        asked["depth"] = depth
    try:
        wanted = ModelConfig.from_dict(asked)
    except ValueError as exc:
        raise UserError(f"--widths/--depth: {exc}") from None
    if (wanted.widths, wanted.depth) != (recorded.widths, recorded.depth):
        raise UserError(
            f"--resume continues the run in {out}, which has widths {list(recorded.widths)} "
            f"and depth {recorded.depth}; --widths/--depth ask for widths "
            f"{list(wanted.widths)} and depth {wanted.depth}. Drop these flags to resume, "
            "or train the new architecture into another --out"
        )
