"""What a user can point at as a model, and the names of the checkpoint format.

Why one module: the CLI, the widgets, the napari reader, the dask workers and
the scripts all take "a model" from a user, who may give a checkpoint folder,
its ``config.json`` or ``weights.safetensors``, a ``.zip`` of the folder, a
training run's folder (meaning its ``best/``) or ``zoo:NAME`` for a shipped
model. Each of them used to decide that on its own; here it is decided once.
Nothing here imports torch, numpy or napari: napari asks the reader about every
dropped path, and ``napari-unetpp --help`` must stay instant. Reading and
validating the files themselves (pickle refusal, size caps, shapes) is
:mod:`napari_unetpp.checkpoint`'s job.

Example
-------
>>> locate("zoo:em")                                   # doctest: +SKIP
ModelLocation(kind='zoo', path=PosixPath('.../models/em'), zoo_name='em')
>>> locate("runs/cells").kind, locate("runs/cells").path  # doctest: +SKIP
('run', PosixPath('runs/cells/best'))
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .stores import read_regular_file  # stdlib only, like this module

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "PICKLE_SUFFIXES",
    "BIOIMAGEIO_RDF",
    "is_bioimageio_package",
    "MAX_CONFIG_BYTES",
    "ZOO_PREFIX",
    "RUN_BEST",
    "ModelLocation",
    "locate",
    "is_zoo",
    "zoo_name",
    "zoo_spec",
    "portable_spec",
    "find_checkpoint",
    "has_marker",
    "is_checkpoint_folder",
    "is_checkpoint_zip",
    "zip_members",
]

#: The marker in ``config.json`` that says "a napari-unetpp checkpoint".
FORMAT = "napari-unetpp-checkpoint"
#: The newest checkpoint format this version reads and writes.
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
#: The file that makes a folder or zip a bioimage.io package (``export --format bioimageio``).
BIOIMAGEIO_RDF = "rdf.yaml"
WEIGHTS_NAME = "weights.safetensors"
#: File endings of pickle-based formats (refused, never opened as pickles).
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")
#: A config.json is a few kB; refuse to read (or inflate from a zip) more than this.
MAX_CONFIG_BYTES = 16 * 2**20
ZOO_PREFIX = "zoo:"
#: The checkpoint a training run's folder stands for (the trainer writes ``best/`` and ``last/``).
RUN_BEST = "best"

Kind = Literal["zoo", "folder", "run", "zip", "config", "weights", "file"]


@dataclass(frozen=True)
class ModelLocation:
    """Where a model spec points.

    ``kind`` is ``"zoo"`` (``path`` is the shipped folder), ``"folder"``, ``"run"``
    (``path`` is the run's ``best/``), ``"zip"``, ``"config"`` / ``"weights"`` (one
    file of a checkpoint folder) or ``"file"`` (any other file: the checkpoint
    reader decides from its bytes, e.g. a zip without the suffix, or a pickle it refuses).
    """

    kind: Kind
    path: Path
    zoo_name: str | None = None


def is_zoo(spec: str | os.PathLike[str]) -> bool:
    """Whether ``spec`` names a shipped model (``zoo:NAME``); a ``Path`` never does."""
    return isinstance(spec, str) and spec.startswith(ZOO_PREFIX)


def zoo_name(spec: str) -> str:
    """``NAME`` of ``zoo:NAME``."""
    if not is_zoo(spec):
        raise ValueError(f"{spec!r} is not a shipped model; write {ZOO_PREFIX}NAME")
    return spec[len(ZOO_PREFIX) :]


def zoo_spec(name: str) -> str:
    """``zoo:NAME``: how a shipped model is named on the command line and in records."""
    return f"{ZOO_PREFIX}{name}"


def locate(spec: str | os.PathLike[str]) -> ModelLocation:
    """Where ``spec`` (a path or ``zoo:NAME``) points; reads no file.

    Raises
    ------
    FileNotFoundError
        A path that does not exist (the message lists what may be given).
    ValueError
        ``zoo:NAME`` of a model that is unknown or not shipped in this installation.
    """
    if is_zoo(spec):
        from .zoo import shipped_entry  # zoo is torch-free too; it imports this module

        name = zoo_name(str(spec))
        return ModelLocation("zoo", shipped_entry(name).folder, name)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(
            f"checkpoint {spec} does not exist (give a checkpoint folder, its {CONFIG_NAME}, "
            f"a .zip, a training run folder, or {ZOO_PREFIX}NAME for a shipped model)"
        )
    if path.is_dir():
        best = path / RUN_BEST
        if not (path / CONFIG_NAME).exists() and (best / CONFIG_NAME).is_file():
            return ModelLocation("run", best)
        return ModelLocation("folder", path)
    if path.name == CONFIG_NAME:
        return ModelLocation("config", path)
    if path.suffix == ".safetensors":
        return ModelLocation("weights", path)
    if path.suffix.lower() == ".zip":
        return ModelLocation("zip", path)
    return ModelLocation("file", path)


def portable_spec(spec: str | os.PathLike[str]) -> str:
    """``zoo:NAME`` as given, else the checkpoint's absolute path.

    Why: dask workers may run in another folder or on another machine; they must
    get a spec that means the same there (a path on a shared disk).
    """
    if is_zoo(spec):
        return str(spec)
    return str(locate(spec).path.resolve())


# --------------------------------------------------------------------------- cheap probes


def _has_marker(config: bytes) -> bool:
    try:
        return json.loads(config.decode("utf-8")).get("format") == FORMAT
    except (ValueError, AttributeError, RecursionError):  # deep nesting: not our config
        return False


def has_marker(folder: Path) -> bool:
    """Whether ``folder/config.json`` is a regular file carrying this package's format marker.

    A FIFO or device named ``config.json`` is refused unread (reading it would block).
    """
    try:
        return _has_marker(read_regular_file(folder / CONFIG_NAME, MAX_CONFIG_BYTES, CONFIG_NAME))
    except (OSError, ValueError):
        return False


def is_checkpoint_folder(folder: Path) -> bool:
    """A folder holding our ``config.json`` and a weights file (neither opened as weights)."""
    try:
        return (folder / WEIGHTS_NAME).is_file() and has_marker(folder)
    except OSError:
        return False


def zip_members(names: Iterable[str]) -> tuple[str, str] | None:
    """``(config, weights)`` member names of a checkpoint zip, or None without a config.

    ``config.json`` sits at the root (``export_zip``) or one folder deep (a zipped
    checkpoint folder); the shallowest wins and the weights are named beside it
    (whether they are in the zip is for the caller to check).
    """
    configs = sorted(
        (n for n in names if n.rsplit("/", 1)[-1] == CONFIG_NAME and n.count("/") <= 1),
        key=lambda n: n.count("/"),
    )
    if not configs:
        return None
    return configs[0], configs[0][: -len(CONFIG_NAME)] + WEIGHTS_NAME


def is_checkpoint_zip(path: Path) -> bool:
    """A zip file whose config carries our marker, with the weights beside it; never raises."""
    try:
        if not path.is_file():  # a FIFO would block, a folder is not a zip
            return False
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            members = zip_members(names)
            if members is None or members[1] not in names:
                return False
            if archive.getinfo(members[0]).file_size > MAX_CONFIG_BYTES:
                return False
            return _has_marker(archive.read(members[0]))
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error):
        return False
    except (RuntimeError, NotImplementedError):  # encrypted, or a compression zipfile lacks
        return False


def find_checkpoint(path: str | os.PathLike[str]) -> Path | None:
    """The model ``path`` holds (a checkpoint folder, a run's ``best/``, a model zip), or None.

    What napari's reader asks of every dropped path: cheap (reads ``config.json``
    only), never imports torch, never raises. ``config.json`` stands for its folder.
    """
    try:
        where = locate(Path(path))
    except (OSError, ValueError):
        return None
    if where.kind == "zip":
        return where.path if is_checkpoint_zip(where.path) else None
    if where.kind in ("folder", "run", "config"):
        folder = where.path.parent if where.kind == "config" else where.path
        return folder if is_checkpoint_folder(folder) else None
    return None


def is_bioimageio_package(path: Path) -> bool:
    """A folder or zip holding :data:`BIOIMAGEIO_RDF` at its top (what our bioimage.io export
    writes, and so may replace); never raises."""
    try:
        if path.is_dir():
            return (path / BIOIMAGEIO_RDF).is_file()
        if path.is_file() and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return BIOIMAGEIO_RDF in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        pass
    return False
