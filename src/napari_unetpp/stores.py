"""Zarr stores: refuse hostile ones before zarr parses them, allocate outputs, mark completeness.

Why check the JSON ourselves: zarr 2 (which the package allows) decodes chunks with
whatever codec the metadata names, and numcodecs' ``pickle`` codec unpickles chunk
bytes, which runs arbitrary code. zarr 3 refuses that codec, zarr 2 does not; so
every store the package opens is read here first, as plain JSON with a size cap,
and refused when any array in it names ``pickle`` or holds Python objects. The
check never imports zarr and never reads a chunk.

Outputs: one allocation path (:func:`allocate_outputs`, :func:`create_array`) for
numpy, zarr 2 and zarr 3, and one completeness mark (:func:`mark_complete`) that
every store the package writes carries and every reader checks (:func:`is_incomplete`).
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

__all__ = [
    "UnsafeStoreError",
    "check_zarr_store",
    "open_zarr",
    "create_array",
    "create_group",
    "allocate_outputs",
    "HostOutputs",
    "mark_complete",
    "is_incomplete",
    "read_regular_file",
    "TOOL_KEY",
]

#: Attribute written into every store the package creates: ``{"complete": bool}``.
TOOL_KEY = "napari_unetpp"
#: zarr metadata documents are a few kB; a bigger one is not metadata.
_MAX_METADATA_BYTES = 8 * 2**20
_METADATA_NAMES = (".zarray", ".zgroup", ".zattrs", ".zmetadata", "zarr.json")
_CODEC_KEYS = ("compressor", "filters", "codecs", "object_codec", "configuration")
#: numpy type strings of Python objects (``|O``, ``O8``): their codecs unpickle or eval.
_OBJECT_DTYPE = re.compile(r"^[<>|=]?O\d*$")


class UnsafeStoreError(ValueError):
    """A zarr store that could run code or is not what the package wrote; never opened."""


def read_regular_file(path: Path, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file no larger than ``limit``; a FIFO or device fails at once.

    Why: ``open().read()`` on a FIFO blocks forever and on ``/dev/zero`` never ends;
    a hostile checkpoint or store can name either.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(
            f"{path}: not a regular file (a FIFO, device or socket); "
            f"a {what} must be an ordinary file"
        )
    if info.st_size > limit:
        raise ValueError(
            f"{path}: {info.st_size} bytes is implausibly large for a {what} "
            f"(limit {limit}); the file is corrupt or not a {what}"
        )
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path}: grew beyond {limit} bytes while reading; not a {what}")
    return data


def _load_json(path: Path) -> Any:
    try:
        return json.loads(read_regular_file(path, _MAX_METADATA_BYTES, "zarr metadata file"))
    except RecursionError:
        raise UnsafeStoreError(
            f"{path}: zarr metadata nested too deeply; not a zarr store"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsafeStoreError(f"{path}: zarr metadata is not valid JSON ({exc})") from None


def _codec_names(node: Any) -> list[str]:
    """Every codec id/name anywhere below ``node`` (nested codecs of sharding included)."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("id", "name") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(_codec_names(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_codec_names(value))
    return found


def _dtype_strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [s for value in node for s in _dtype_strings(value)]
    if isinstance(node, dict):
        return [s for value in node.values() for s in _dtype_strings(value)]
    return []


def _check_array_metadata(meta: Any, where: str) -> None:
    """Refuse one array's metadata (zarr 2 ``.zarray`` or zarr 3 ``zarr.json``)."""
    if not isinstance(meta, dict):
        return
    codecs = [n for key in _CODEC_KEYS if key in meta for n in _codec_names({key: meta[key]})]
    bad = [n for n in codecs if n.lower().split(".")[-1] == "pickle"]
    if bad:
        raise UnsafeStoreError(
            f"{where}: this zarr array is stored with the 'pickle' codec, which runs code "
            "from the file when read; refusing to open it. Re-save the data with a plain "
            "numeric dtype and a normal compressor (e.g. blosc or zstd)"
        )
    dtypes = _dtype_strings(meta.get("dtype")) + _dtype_strings(meta.get("data_type"))
    if any(_OBJECT_DTYPE.match(s) or s.lower() == "object" for s in dtypes):
        raise UnsafeStoreError(
            f"{where}: this zarr array holds Python objects (dtype object), which are "
            "decoded by running code; refusing to open it. Images and labels must be "
            "numbers: re-save it with an integer or float dtype"
        )


def _check_folder(folder: Path) -> dict[str, Any]:
    """Check the metadata files of one node; return its attributes (zarr 2 or 3)."""
    attrs: dict[str, Any] = {}
    for name in _METADATA_NAMES:
        path = folder / name
        if not path.exists():
            continue
        meta = _load_json(path)
        if name == ".zmetadata" and isinstance(meta, dict):  # consolidated zarr 2
            for key, value in (meta.get("metadata") or {}).items():
                if str(key).endswith(".zarray"):
                    _check_array_metadata(value, f"{path}[{key}]")
        elif name == "zarr.json" and isinstance(meta, dict):
            _check_array_metadata(meta, str(path))
            consolidated = meta.get("consolidated_metadata") or {}
            for key, value in (
                (consolidated.get("metadata") or {}).items()
                if isinstance(consolidated, dict)
                else []
            ):
                _check_array_metadata(value, f"{path}[{key}]")
            if isinstance(meta.get("attributes"), dict):
                attrs = meta["attributes"]
        elif name == ".zarray":
            _check_array_metadata(meta, str(path))
        elif name == ".zattrs" and isinstance(meta, dict):
            attrs = meta
    return attrs


def check_zarr_store(path: str | os.PathLike[str]) -> None:
    """Refuse a store (before zarr opens it) that could run code or is an unfinished output.

    Checks the node itself and its direct children (a group's arrays, OME-Zarr
    levels), whose metadata files are read by name: chunk folders are never listed.
    """
    root = Path(path)
    attrs = _check_folder(root)
    _refuse_incomplete(attrs, root)
    if not root.is_dir():
        return
    with os.scandir(root) as entries:
        children = [
            Path(e.path)
            for e in entries
            if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")
        ]
    for child in children:
        _refuse_incomplete(_check_folder(child), child)


def _refuse_incomplete(attrs: dict[str, Any], where: Path) -> None:
    mark = attrs.get(TOOL_KEY)
    if isinstance(mark, dict) and mark.get("complete") is False:
        raise UnsafeStoreError(
            f"{where}: an unfinished output of an interrupted napari-unetpp run "
            "(marked incomplete); run the prediction again"
        )


def is_incomplete(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a store this package began writing and did not finish."""
    try:
        check_zarr_store(path)
    except UnsafeStoreError as exc:
        return "incomplete" in str(exc)
    return False


def open_zarr(path: str | os.PathLike[str]) -> Any:
    """``zarr.open(path, mode="r")`` after :func:`check_zarr_store` found nothing hostile."""
    check_zarr_store(path)
    import zarr

    return zarr.open(str(path), mode="r")


# --------------------------------------------------------------------------- writing


def create_group(path: str | os.PathLike[str]) -> Any:
    """A new zarr group at ``path`` (zarr 2 and 3), marked incomplete until finished."""
    import zarr

    group = zarr.open_group(str(path), mode="w")
    group.attrs[TOOL_KEY] = {"complete": False}
    return group


def create_array(
    parent: Any,
    name: str | None,
    shape: tuple[int, ...],
    dtype: Any,
    chunks: tuple[int, ...],
    path: str | os.PathLike[str] | None = None,
) -> Any:
    """A zero-filled zarr array in group ``parent`` (or alone at ``path``), zarr 2 or 3."""
    import zarr

    chunks = tuple(max(1, min(int(c), int(s))) for c, s in zip(chunks, shape, strict=True))
    if parent is None:
        array = zarr.open_array(
            str(path), mode="w", shape=shape, dtype=dtype, chunks=chunks, fill_value=0
        )
        array.attrs[TOOL_KEY] = {"complete": False}
        return array
    create = getattr(parent, "create_array", None)  # zarr 3; zarr 2 has create_dataset
    if create is None:
        create = parent.create_dataset
    return create(name=name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)


def slice_chunks(shape: tuple[int, ...], spatial: tuple[int, ...]) -> tuple[int, ...]:
    """Chunks one slice deep over the leading axes, ``spatial`` over the trailing ones.

    Why: results are written and read (napari too) slice by slice, so a slice never
    drags its neighbours into memory.
    """
    lead = len(shape) - len(spatial)
    return (1,) * lead + tuple(min(c, s) for c, s in zip(spatial, shape[lead:], strict=True))


class HostOutputs(dict):  # type: ignore[type-arg]
    """``{depth: array}`` in memory: views of one stacked ``(depths, *shape)`` array.

    Why stacked: tiled inference blends every head of a tile in one operation, and
    with the heads side by side in ``stacked`` it blends straight into the results
    (no band of means to copy out). Each view is contiguous and reads as its own array.
    """

    def __init__(self, stacked: Any, depths: tuple[int, ...]) -> None:
        super().__init__({d: stacked[k] for k, d in enumerate(depths)})
        self.stacked = stacked


def allocate_outputs(
    depths: tuple[int, ...],
    shape: tuple[int, ...],
    spatial_chunks: tuple[int, ...],
    out: str | os.PathLike[str] | None,
) -> tuple[dict[int, Any], Any]:
    """One float32 output per depth: numpy in memory, or arrays ``L{d}`` of a zarr group.

    The group is marked incomplete; :func:`mark_complete` marks it when all is written.
    """
    import numpy as np

    if out is None:
        stacked = np.zeros((len(depths), *shape), dtype=np.float32)
        # faulted in here, on one thread: np.zeros maps pages lazily and the blending's first
        # writes, on every torch thread at once, then fault them in contention (measured: all
        # heads 44 -> 31 Mpx/s wall on 2 threads; prefaulted 88-95). One write per 4 kB page
        # is enough: the kernel hands out zeroed pages, a fill(0) would zero them twice
        stacked.reshape(-1)[:: 4096 // stacked.itemsize] = 0
        return HostOutputs(stacked, depths), None
    path = Path(out)
    is_store = any((path / name).exists() for name in ("zarr.json", ".zgroup", ".zarray"))
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not is_store)):
        raise ValueError(
            f"out={str(path)!r} exists and is not a zarr folder; give a new folder "
            "(e.g. 'result.zarr') so nothing else gets overwritten"
        )
    if is_store and not isinstance(_check_folder(path).get(TOOL_KEY), dict):
        raise ValueError(
            f"out={str(path)!r} is a zarr store napari-unetpp did not write (your data?); "
            "give a new folder (e.g. 'result.zarr') so it is not overwritten"
        )
    group = create_group(path)
    group.attrs.update({"complete": False, "depths": list(depths)})
    chunks = slice_chunks(shape, spatial_chunks)
    return {d: create_array(group, f"L{d}", shape, "float32", chunks) for d in depths}, group


def mark_complete(node: Any, complete: bool = True) -> None:
    """Set the completeness mark readers check (:func:`check_zarr_store`)."""
    node.attrs[TOOL_KEY] = {"complete": bool(complete)}
    if "complete" in node.attrs:
        node.attrs["complete"] = bool(complete)
