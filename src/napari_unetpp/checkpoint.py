"""Checkpoints: a folder (or zip) with ``weights.safetensors`` + ``config.json``.

Why this format: a checkpoint must be safe to download and share. PyTorch's
``torch.save`` files are pickles, and unpickling runs arbitrary code; this
module therefore never unpickles (no ``torch.load``) and refuses pickle files
outright, without reading them as pickles, telling the user how to convert.
Weights are plain tensors in safetensors; everything needed to rebuild and
reproduce the model (the configs, the per-depth metrics table, provenance, a
model card, the plugin version) is human-readable JSON beside them. The
checks on untrusted bytes (caps, pickle refusal, shapes from the header) are
in :mod:`._checkpoint_io`; the format's names and where a user's model is
(run folders, ``zoo:NAME``) in :mod:`.locate`.

Layout::

    my_model/
      config.json          {"format": "napari-unetpp-checkpoint", "format_version": 1,
                            "version": ..., "model": {...}, "data": {...}, "train": {...},
                            "metrics": {...}, "provenance": {...}, "card": {...},
                            "weights": {"file": ..., "dtype": ..., "sha256": ...}}
      weights.safetensors

Saving is atomic: both files are written and fsynced in a temporary sibling
folder, which then replaces the old folder by renames, so a crash, a full disk
or Ctrl-C during a save never leaves a half-written checkpoint in place of the
previous good one.

Example
-------
>>> import tempfile, pathlib
>>> from napari_unetpp.config import DataConfig
>>> from napari_unetpp.model import UNetPlusPlus
>>> net = UNetPlusPlus(widths=(4, 8, 16), depth=2)
>>> info = CheckpointInfo(model=net.config, data=DataConfig())
>>> folder = save_checkpoint(pathlib.Path(tempfile.mkdtemp()) / "m", net, info)
>>> loaded, info2 = load_checkpoint(folder)
>>> info2.model == net.config
True
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import shutil
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as _safetensors_save
from torch import nn

from . import __version__
from ._checkpoint_io import (
    CheckpointError,
    Raw,
    check_finite,
    check_sha,
    header_shapes,
    match_shapes,
    match_weights,
    parse_config,
    parse_weights,
    read_raw,
)
from .config import DataConfig, ModelConfig, TrainConfig
from .locate import CONFIG_NAME, FORMAT, FORMAT_VERSION, WEIGHTS_NAME, has_marker, is_checkpoint_zip
from .model import UNetPlusPlus, unwrap_model

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "save_checkpoint",
    "load_checkpoint",
    "read_info",
    "export_zip",
]

#: Largest value float16 can hold; tensors beyond it are kept in float32 by ``half=True``.
_FP16_MAX = 65504.0


@dataclass
class CheckpointInfo:
    """Everything in ``config.json``: what rebuilds, describes and reproduces a model.

    ``metrics["depths"]`` is the per-depth table (``{"1": {"iou": ..., "dice": ...,
    "parameters": ..., "ms_per_mpx": ...}, ...}``) with ``metrics["score_name"]``
    and ``metrics["best_depth"]``; ``provenance`` records data, starting point,
    iterations, date, seed...; ``card`` holds free-text model-card fields.
    """

    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)
    version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (configs as dicts, ``train`` may be ``None``)."""
        return {
            "version": self.version,
            "model": self.model.to_dict(),
            "data": self.data.to_dict(),
            "train": None if self.train is None else self.train.to_dict(),
            "metrics": _jsonable(self.metrics),
            "provenance": _jsonable(self.provenance),
            "card": _jsonable(self.card),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointInfo:
        """Inverse of :meth:`to_dict`; ignores the file-format keys of ``config.json``."""
        if not isinstance(data.get("model"), dict):
            raise ValueError("no 'model' section (the ModelConfig) in the checkpoint config")
        train = data.get("train")
        return cls(
            model=ModelConfig.from_dict(data["model"]),
            data=DataConfig.from_dict(data.get("data") or {}),
            train=None if train is None else TrainConfig.from_dict(train),
            metrics=dict(data.get("metrics") or {}),
            provenance=dict(data.get("provenance") or {}),
            card=dict(data.get("card") or {}),
            version=str(data.get("version", "unknown")),
        )


def _jsonable(value: Any) -> Any:
    """Deep copy as JSON types. Unknown objects become ``str``: a save after hours of
    training must not fail over an exotic provenance entry."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        to_dict = getattr(value, "to_dict", None)
        return _jsonable(to_dict() if callable(to_dict) else dataclasses.asdict(value))
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and getattr(value, "ndim", None) == 0:
        return _jsonable(item())
    tolist = getattr(value, "tolist", None)  # numpy / torch arrays
    if callable(tolist):
        return _jsonable(tolist())
    return str(value)


# --------------------------------------------------------------------------- save


_ARCHITECTURE = (
    "in_channels",
    "num_classes",
    "widths",
    "depth",
    "spatial_dims",
    "norm",
    "deep_supervision",
)


def _state_tensors(model: nn.Module, half: bool) -> tuple[dict[str, torch.Tensor], str]:
    tensors: dict[str, torch.Tensor] = {}
    stored: set[str] = set()
    for key, value in model.state_dict().items():
        tensor = value.detach().to("cpu")
        if tensor.is_floating_point():
            if half and not bool((tensor.abs() > _FP16_MAX).any()):
                tensor = tensor.to(torch.float16)
            stored.add(str(tensor.dtype).replace("torch.", ""))
        tensors[key] = tensor.contiguous().clone()
    return tensors, "+".join(sorted(stored)) or "none"


def _fsync_dir(path: Path) -> None:
    """Persist a directory entry (rename/create); not possible on Windows, where it is skipped."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _carry_extra_files(source: Path, destination: Path) -> None:
    """Keep files others put in the folder (a README, the trainer's resume state).

    Hard links when possible: instant and no extra space; writers replace files
    by rename, so the old folder's copy is never modified through the link.
    """
    for extra in source.iterdir():
        if extra.name in (CONFIG_NAME, WEIGHTS_NAME) or (destination / extra.name).exists():
            continue  # written for this save (e.g. the trainer's resume state): newer
        if extra.is_dir():
            shutil.copytree(extra, destination / extra.name)
            continue
        try:
            os.link(extra, destination / extra.name)
        except OSError:
            shutil.copy2(extra, destination / extra.name)


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    info: CheckpointInfo,
    *,
    half: bool = False,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``model`` and ``info`` as a checkpoint folder at ``path``, atomically.

    Parameters
    ----------
    path
        Folder to create or replace. An existing folder is replaced only if it is
        a napari-unetpp checkpoint (or empty), so a typo cannot wipe a data folder;
        other files inside an old checkpoint folder (e.g. a README) are kept.
    model
        The network (``torch.compile`` / DDP wrappers are unwrapped).
    info
        Configs and metadata; ``info.model`` must describe ``model``'s architecture.
    half
        Store float tensors as float16: half the size, for shipped models
        (inference quality is unchanged in practice; tensors with values beyond
        the float16 range stay float32).
    extra
        Called with the temporary folder before it is renamed into place, to add
        files that must change together with the weights (the trainer's optimizer
        state): a kill at any moment leaves either the old or the new set, never a mix.

    Returns
    -------
    Path
        The checkpoint folder.
    """
    folder = Path(path)
    if folder.suffix.lower() == ".zip":
        raise ValueError(
            f"{folder}: save_checkpoint writes a folder; save to a folder, then call "
            "export_zip(folder, 'model.zip')"
        )
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} exists and is a file; choose a folder path for the checkpoint")
    if folder.is_dir() and any(folder.iterdir()) and not has_marker(folder):
        raise ValueError(
            f"{folder} exists and is not a napari-unetpp checkpoint; refusing to replace it. "
            "Choose a new or empty folder"
        )
    net = unwrap_model(model)
    net_config = getattr(net, "config", None)
    if isinstance(net_config, ModelConfig):
        different = [
            name for name in _ARCHITECTURE if getattr(net_config, name) != getattr(info.model, name)
        ]
        if different:
            raise ValueError(
                f"info.model does not describe the model being saved (differs in {different}); "
                "pass CheckpointInfo(model=model.config, ...)"
            )

    tensors, dtype = _state_tensors(net, half)
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}

    folder.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    tmp = folder.parent / f".{folder.name}.tmp-{token}"
    old = folder.parent / f".{folder.name}.old-{token}"
    tmp.mkdir()
    try:
        weights = _safetensors_save(tensors, metadata=metadata)
        _write_bytes(tmp / WEIGHTS_NAME, weights)
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **info.to_dict(),
            "weights": {
                "file": WEIGHTS_NAME,
                "dtype": dtype,
                "sha256": hashlib.sha256(weights).hexdigest(),
            },
        }
        text = json.dumps(config, indent=2, allow_nan=True) + "\n"
        _write_bytes(tmp / CONFIG_NAME, text.encode("utf-8"))
        if extra is not None:
            extra(tmp)
        if folder.is_dir():
            _carry_extra_files(folder, tmp)
        _fsync_dir(tmp)
        if folder.is_dir():
            os.rename(folder, old)
            try:
                os.rename(tmp, folder)
            except BaseException:
                os.rename(old, folder)
                raise
        else:
            os.rename(tmp, folder)
        _fsync_dir(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return folder


# --------------------------------------------------------------------------- read


def _parse_config(raw: Raw) -> tuple[dict[str, Any], CheckpointInfo]:
    """``config.json``'s dict and the :class:`CheckpointInfo` it describes."""
    data = parse_config(raw)
    try:
        info = CheckpointInfo.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{raw.config_name}: invalid configuration ({exc})") from None
    return data, info


def read_info(path: str | os.PathLike[str]) -> CheckpointInfo:
    """The configs and metadata of a checkpoint, without reading its weights (instant)."""
    return _parse_config(read_raw(path, want_weights=False))[1]


def load_checkpoint(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[UNetPlusPlus, CheckpointInfo]:
    """Rebuild the network from ``config.json`` and load its weights strictly.

    Parameters
    ----------
    path
        The checkpoint folder, its ``config.json`` or ``weights.safetensors``,
        or a ``.zip`` of the folder. Pickle files are refused, never opened.
    device
        Where to put the model (``"cpu"``, ``"cuda"``, ``"auto"``...).

    Returns
    -------
    (UNetPlusPlus, CheckpointInfo)
        The model in ``eval`` mode with float32 weights (float16 files are
        cast up), and the checkpoint's configs and metadata.

    Raises
    ------
    CheckpointError
        Missing, truncated or corrupt files, a foreign format, weights that do
        not fit the config, or a pickle file; the message names the file.
    """
    from .devices import resolve_device

    raw = read_raw(path, want_weights=True)
    meta, info = _parse_config(raw)  # bounded by ModelConfig: building it is affordable
    try:
        net = UNetPlusPlus.from_config(info.model)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{raw.config_name}: cannot build the model ({exc})") from None
    match_shapes(net, header_shapes(raw), raw)  # before any tensor is made from the file
    tensors = parse_weights(raw)
    state = match_weights(net, tensors, raw)
    check_sha(raw, meta)
    check_finite(state, raw)
    net.load_state_dict(state, strict=True)
    net.eval()
    return net.to(resolve_device(device)), info


def export_zip(checkpoint: str | os.PathLike[str], zip_path: str | os.PathLike[str]) -> Path:
    """Pack a checkpoint (folder, its files, or a zip) into one ``.zip`` to share.

    The zip holds ``config.json`` and ``weights.safetensors`` at its root; it is
    validated by loading first and written atomically (temp file, then rename).
    """
    raw = read_raw(checkpoint, want_weights=True)
    meta, info = _parse_config(raw)
    net = UNetPlusPlus.from_config(info.model)
    match_shapes(net, header_shapes(raw), raw)
    match_weights(net, parse_weights(raw), raw)
    check_sha(raw, meta)
    target = Path(zip_path)
    if target.suffix.lower() != ".zip":
        raise ValueError(f"{target}: the output name must end in .zip, e.g. {target.name}.zip")
    if target.exists() and not is_checkpoint_zip(target):
        raise ValueError(
            f"{target} exists and is not a napari-unetpp checkpoint zip; refusing "
            "to replace it. Choose another name"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as handle:
            with zipfile.ZipFile(handle, "w") as archive:
                archive.writestr(CONFIG_NAME, raw.config, compress_type=zipfile.ZIP_DEFLATED)
                # float weights barely compress: store them, which also keeps unzipping fast
                archive.writestr(WEIGHTS_NAME, raw.weights or b"", compress_type=zipfile.ZIP_STORED)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
