"""Run records: the one place that writes and reads what a run was started with.

Why one module: the CLI and the napari widgets both record their runs, and a
record written by one must replay in the other (``train --config RUN/run.json``
re-runs a widget's training; ``sh command.sh`` re-runs a widget's segmentation).
So the folder layout, the ``run.json`` sections, the per-image predict record and
the equivalent command line are built here, and nowhere else.

Why at the start of training: a run killed after an hour must be resumable by
``train --out RUN --resume`` alone, with the flags it was started with, not the
defaults. So the resolved configs and the input files are recorded in
``RUN/run.json`` before the first step; ``RUN/last/`` (weights, optimizer and RNG
state, renamed into place together) holds the progress.

Example
-------
>>> format_command("predict", "m/best", "a.tif", out="res dir", config="res dir/run.json")
"napari-unetpp predict m/best a.tif --out 'res dir' --config 'res dir/run.json'"
"""

from __future__ import annotations

import json
import os
import shlex
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from . import __version__
from .files import UserError

if TYPE_CHECKING:
    from .config import DataConfig, ModelConfig, PredictConfig, TrainConfig

__all__ = [
    "RUN_FILE",
    "COMMAND_FILE",
    "REPLAY_DIR",
    "replay_dir",
    "PATH_KEYS",
    "new_run_dir",
    "discard_unstarted_run",
    "write_json",
    "write_run_file",
    "is_run_record",
    "read_run_file",
    "train_record",
    "predict_record",
    "write_image_record",
    "format_command",
    "save_run_record",
    "absolute_paths",
    "recorded_inputs",
    "check_same_architecture",
]

RUN_FILE = "run.json"
COMMAND_FILE = "command.sh"
#: The folder of a widget's run that its ``command.sh`` writes into (its ``--out``).
REPLAY_DIR = "replay"
#: Input-file entries of a run record (the CLI and the train widget write them).
PATH_KEYS = ("images", "labels", "val_images", "val_labels")
#: The configs ``--config`` reads.
CONFIG_SECTIONS = frozenset({"model", "train", "data", "predict"})
#: Provenance recorded beside the configs (not settings the CLI reads); ``written_by`` and
#: ``scale`` are in the per-image record, which ``predict --config`` replays too.
PROVENANCE_KEYS = frozenset(
    {
        "version",
        *PATH_KEYS,
        "from",
        "checkpoint",
        "scope",
        "written_by",
        "diameter",
        "scale",
        "image_check",
    }
)
#: A run.json larger than this is not one (read with a cap: it may come from anyone).
MAX_RUN_FILE_BYTES = 16 * 2**20

Job = Literal["train", "predict"]


# --------------------------------------------------------------------------- folders and files


def new_run_dir(folder: str | os.PathLike[str], name: str) -> Path:
    """A fresh ``<name>-<timestamp>`` folder under ``folder`` (never reuses an existing one)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40]
    base = Path(folder).expanduser() / f"{safe}-{stamp}"
    run_dir, n = base, 1
    while run_dir.exists():
        run_dir, n = base.with_name(f"{base.name}-{n}"), n + 1
    run_dir.mkdir(parents=True)
    return run_dir


def discard_unstarted_run(run_dir: str | os.PathLike[str]) -> bool:
    """Remove ``run_dir`` if it holds only its run record (``run.json``, ``command.sh``).

    Why: a dock's run stopped while it waited for another job never wrote the data its
    ``command.sh`` names; the folder left behind looked like a run, and its command failed
    on the missing files. Anything else in the folder keeps it. Returns whether it went.
    """
    folder = Path(run_dir)
    if not folder.is_dir() or {p.name for p in folder.iterdir()} - {RUN_FILE, COMMAND_FILE}:
        return False
    for name in (RUN_FILE, COMMAND_FILE):
        (folder / name).unlink(missing_ok=True)
    folder.rmdir()
    return True


def replay_dir(run_dir: str | os.PathLike[str]) -> Path:
    """Where a widget run's ``command.sh`` writes: ``run_dir/replay``.

    Why not ``run_dir`` itself: replayed there, the command replaced the dock's own
    ``best/`` and ``last/`` (the model it registered as "just trained": on another machine
    or GPU, silently another model) or wrote beside the dock's ``labels.tif``.
    """
    return Path(run_dir) / REPLAY_DIR


def write_json(path: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` to ``path`` atomically (a kill leaves the old file or the new one)."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_run_file(folder: Path, record: dict[str, Any]) -> Path:
    """Write ``folder/run.json`` atomically, never over a ``run.json`` that is no run record
    (``train --out`` given a folder of another project replaced its run.json)."""
    path = Path(folder) / RUN_FILE
    if path.exists() and not is_run_record(path):
        raise UserError(
            f"{path} exists and is not a napari-unetpp run record; refusing to replace it. "
            "Choose a new or empty folder"
        )
    return write_json(path, record)


def is_run_record(path: Path) -> bool:
    """A ``run.json`` this package wrote: only its keys, and at least one config section."""
    try:
        data = read_run_file(path)
    except (UserError, ValueError, OSError):
        return False
    return bool(set(data) & (CONFIG_SECTIONS | {"written_by"}))


def read_run_file(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Read a ``run.json`` (``--config``): ``{"model", "train", "data", "predict"}`` and the
    provenance the CLI and the widgets record beside them; ``None`` reads as ``{}``."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    from .stores import read_regular_file

    try:
        data = json.loads(read_regular_file(path, MAX_RUN_FILE_BYTES, RUN_FILE))
    except RecursionError:
        raise UserError(f"config file {path} is nested too deeply; not a run.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a JSON object")
    unknown = set(data) - CONFIG_SECTIONS - PROVENANCE_KEYS
    if unknown:
        raise UserError(
            f"config file {path}: unknown section(s) {sorted(unknown)}; "
            f"known: {sorted(CONFIG_SECTIONS)}"
        )
    return data


# --------------------------------------------------------------------------- records


def train_record(
    model: ModelConfig,
    train: TrainConfig,
    data: DataConfig,
    inputs: Mapping[str, Sequence[str] | None] | None = None,
    start: str | None = None,
) -> dict[str, Any]:
    """A training run's ``run.json``: the configs, the input files (``PATH_KEYS``) and the
    model it started from (``from``), so ``train --config`` or ``--resume`` replays it."""
    record: dict[str, Any] = {
        "version": __version__,
        "model": model.to_dict(),
        "train": train.to_dict(),
        "data": data.to_dict(),
    }
    for key in PATH_KEYS:
        paths = (inputs or {}).get(key)
        if paths:
            record[key] = [str(p) for p in paths]
    if start:
        record["from"] = start
    return record


def predict_record(
    checkpoint: str, predict: PredictConfig, data: DataConfig, **extra: Any
) -> dict[str, Any]:
    """What an image was segmented with (``predict --config`` reads ``predict``/``data``)."""
    return {"checkpoint": checkpoint, "predict": predict.to_dict(), "data": data.to_dict(), **extra}


def diameter_record(
    given: float | str | None, scale: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The object diameter a user gave, as run records keep it: ``{"given": D}``, or
    ``{"given": "auto", "estimated": d}`` with the median diameter the auto run measured
    (px of the image; None: no objects); None when none was given.

    Why: ``predict.rescale`` keeps only the factor it became (0.5 for 36.24 px on the
    nuclei model), and the user's own number was lost. One shape for the CLI's
    ``--diameter`` and the dock's Object diameter / auto object size."""
    if given is None:
        return None
    if given == "auto":
        return {"given": "auto", "estimated": (scale or {}).get("measured_diameter")}
    return {"given": float(given)}


def write_image_record(
    path: Path,
    checkpoint: str,
    predict: PredictConfig,
    data: DataConfig,
    scale: dict[str, Any] | None,
    image_check: dict[str, Any] | None = None,
    image: Path | None = None,
    diameter: dict[str, Any] | None = None,
) -> Path:
    """The CLI's ``<name>_run.json`` beside one image's results: the input file (``images``,
    absolute, as the dock's record names its layer's: the record said what was done, not to
    what), configs, the scale used (pixel sizes, zoom per model axis, measured object
    diameter), the object diameter the user gave (:func:`diameter_record`; None without
    ``--diameter``) and the image check."""
    from .outputs import TIFF_SOFTWARE

    inputs = {} if image is None else {"images": [str(Path(image).resolve())]}
    record = {"written_by": TIFF_SOFTWARE, **predict_record(checkpoint, predict, data, **inputs)}
    return write_json(
        path, {**record, "diameter": diameter, "scale": scale, "image_check": image_check}
    )


# --------------------------------------------------------------------------- command lines


def format_command(job: Job, *positional: str, **options: Any) -> str:
    """A shell-quoted ``napari-unetpp`` call.

    Options: ``None``/``False`` are left out, ``True`` is a bare flag, lists give
    several values; ``from_`` becomes ``--from``, underscores become dashes.
    """
    parts = ["napari-unetpp", job, *positional]
    for key, value in options.items():
        if value is None or value is False:
            continue
        parts.append("--" + key.rstrip("_").replace("_", "-"))
        if value is True:
            continue
        if isinstance(value, (list, tuple)):
            parts.extend(str(v) for v in value)
        else:
            parts.append(str(value))
    return " ".join(shlex.quote(str(p)) for p in parts)


def save_run_record(
    folder: str | os.PathLike[str], job: Job, record: dict[str, Any], cli_command: str
) -> tuple[Path, Path]:
    """Write ``run.json`` (``record``, with the plugin version) and an executable
    ``command.sh`` (``cli_command``, whose ``--out`` is :func:`replay_dir` of ``folder``)
    into ``folder``, so a widget run can be replayed from a shell or a cluster job.
    Returns both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    run_json = write_run_file(folder, {"version": __version__, **record})
    script = folder / COMMAND_FILE
    script.write_text(
        "#!/bin/sh\n"
        f"# The napari-unetpp {job} run that the napari widget started, as a shell command.\n"
        f"# It writes into {REPLAY_DIR}/ in this folder: the widget's own results stay as "
        "they are.\n"
        "set -e\n"
        f"{cli_command}\n"
    )
    script.chmod(0o755)
    return run_json, script


# --------------------------------------------------------------------------- resume


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
