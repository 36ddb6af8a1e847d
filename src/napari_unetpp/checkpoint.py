"""Checkpoints: a folder (or zip) with ``weights.safetensors`` + ``config.json``.

Why this format: a checkpoint must be safe to download and share. PyTorch's
``torch.save`` files are pickles, and unpickling runs arbitrary code; this
module therefore never unpickles (no ``torch.load``) and refuses pickle files
outright, without reading them as pickles, telling the user how to convert.
Weights are plain tensors in safetensors; everything needed to rebuild and
reproduce the model (the configs, the per-depth metrics table, provenance, a
model card, the plugin version) is human-readable JSON beside them.

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
from safetensors.torch import load as _safetensors_load
from safetensors.torch import save as _safetensors_save
from torch import nn

from . import __version__
from .config import (
    MAX_PARAMETERS,
    DataConfig,
    ModelConfig,
    TrainConfig,
    estimate_parameters,
)
from .model import UNetPlusPlus
from .stores import read_regular_file

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "save_checkpoint",
    "load_checkpoint",
    "read_info",
    "export_zip",
    "FORMAT",
    "FORMAT_VERSION",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
]

FORMAT = "napari-unetpp-checkpoint"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.safetensors"

#: File endings of pickle-based formats (refused, never opened as pickles).
_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")
#: Largest value float16 can hold; tensors beyond it are kept in float32 by ``half=True``.
_FP16_MAX = 65504.0
#: A config.json is a few kB; refuse to inflate a (hostile) zip member beyond this.
_MAX_CONFIG_BYTES = 16 * 2**20
#: The largest model configs allow (float32 weights) plus room for the header.
_MAX_WEIGHTS_BYTES = 4 * MAX_PARAMETERS + 64 * 2**20
#: safetensors' own limit on the JSON header.
_MAX_HEADER_BYTES = 100 * 2**20

_CONVERT_HINT = (
    "napari-unetpp never unpickles files, because unpickling can run arbitrary code. "
    "If you trust this file, convert it once in Python: "
    "`net = UNetPlusPlus(...); net.load_state_dict(torch.load(path, weights_only=True)); "
    "save_checkpoint(folder, net, CheckpointInfo(model=net.config, data=DataConfig()))`"
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the file and the problem."""


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


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain network inside ``torch.compile`` / DDP wrappers (their keys carry prefixes)."""
    for attribute in ("_orig_mod", "module"):
        inner = getattr(model, attribute, None)
        if isinstance(inner, nn.Module):
            model = inner
    return model


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


def _is_checkpoint_folder(path: Path) -> bool:
    config = path / CONFIG_NAME
    try:
        data = json.loads(read_regular_file(config, _MAX_CONFIG_BYTES, CONFIG_NAME))
        return data.get("format") == FORMAT
    except (OSError, ValueError, AttributeError, RecursionError):
        return False


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
    if folder.is_dir() and any(folder.iterdir()) and not _is_checkpoint_folder(folder):
        raise ValueError(
            f"{folder} exists and is not a napari-unetpp checkpoint; refusing to replace it. "
            "Choose a new or empty folder"
        )
    net = _unwrap(model)
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


@dataclass
class _Raw:
    """The bytes of a checkpoint, wherever they came from (folder or zip)."""

    config: bytes
    config_name: str
    weights: bytes | None
    weights_name: str


def _looks_like_pickle(head: bytes) -> bool:
    # protocol 2+ starts with PROTO (0x80); torch's legacy format too
    return head[:1] == b"\x80"


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """An 8-byte little-endian header length that fits the file, then the JSON header's ``{``.

    Checked before the pickle and zip tests: the length's low byte is 0x80 (or its first
    bytes read "PK") for 1 in 256 header sizes, and such a valid file was refused as pickle.
    """
    length = int.from_bytes(head[:8], "little")
    return len(head) >= 9 and head[8:9] == b"{" and 0 < length <= size - 8


def _pickle_error(name: str, why: str) -> CheckpointError:
    return CheckpointError(f"{name}: {why}; refusing to load it. {_CONVERT_HINT}")


def _read_head(path: Path, size: int = 8) -> bytes:
    if not path.is_file():  # a FIFO would block open() forever, a device never end
        raise CheckpointError(
            f"{path}: not a regular file (a FIFO, device or socket); "
            "give a checkpoint folder, its files or a .zip"
        )
    with open(path, "rb") as handle:
        return handle.read(size)


def _read_capped(path: Path, limit: int, what: str) -> bytes:
    """A regular file's bytes, refused beyond ``limit`` (never a FIFO or /dev/zero)."""
    try:
        return read_regular_file(path, limit, what)
    except FileNotFoundError:
        raise
    except (ValueError, OSError) as exc:
        raise CheckpointError(str(exc)) from None


def _missing_error(path: Path) -> CheckpointError:
    leftovers = sorted(path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
    hint = (
        f"; an interrupted save left the previous checkpoint in {leftovers[0]}: "
        f"rename it to {path.name}"
        if leftovers
        else ""
    )
    return CheckpointError(f"{path}: checkpoint does not exist{hint}")


def _weights_limit(config: bytes) -> int:
    """The most bytes the weights of the model ``config`` describes can take (float32).

    Why from the config: a zip member or file far bigger than its model is refused
    before it is inflated or read. Falls back to the global cap for an unreadable
    config (which is refused later with its own message).
    """
    try:
        model = ModelConfig.from_dict(json.loads(config)["model"])
    except Exception:  # noqa: BLE001 - any problem is reported by _parse_config
        return _MAX_WEIGHTS_BYTES
    # convolution weights (estimated) plus norms, biases and buffers, plus the header
    return int(4 * 1.25 * estimate_parameters(model)) + 4 * 2**20


def _read_zip(path: Path, want_weights: bool) -> _Raw:
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/")]
            configs = sorted(
                (n for n in names if n.rsplit("/", 1)[-1] == CONFIG_NAME and n.count("/") <= 1),
                key=lambda n: n.count("/"),
            )
            if not configs:
                if any(n.endswith(".pkl") or n.rsplit("/", 1)[-1] == "data.pkl" for n in names):
                    raise _pickle_error(str(path), "this is a PyTorch (torch.save) zip of pickles")
                raise CheckpointError(
                    f"{path}: no {CONFIG_NAME} in this zip; a checkpoint zip holds "
                    f"{CONFIG_NAME} and {WEIGHTS_NAME} (make one with export_zip)"
                )
            config_member = configs[0]
            prefix = config_member[: -len(CONFIG_NAME)]
            if archive.getinfo(config_member).file_size > _MAX_CONFIG_BYTES:
                raise CheckpointError(f"{path}: {config_member} is implausibly large")
            config = archive.read(config_member)
            weights_member = prefix + WEIGHTS_NAME
            weights = None
            if want_weights:
                if weights_member not in names:
                    raise CheckpointError(f"{path}: no {weights_member} in this zip")
                # checked before inflating: zipfile then stops at the declared size
                size, limit = archive.getinfo(weights_member).file_size, _weights_limit(config)
                if size > limit:
                    raise CheckpointError(
                        f"{path}: {weights_member} would inflate to {size} bytes, more than "
                        f"the model its {CONFIG_NAME} describes can hold ({limit}); not a "
                        "checkpoint of this package"
                    )
                weights = archive.read(weights_member)
            return _Raw(config, f"{path}:{config_member}", weights, f"{path}:{weights_member}")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated zip file ({exc})") from None
    except OSError as exc:  # CRC errors, unreadable file
        raise CheckpointError(f"{path}: cannot read the zip file ({exc})") from None


def _read_raw(path: str | os.PathLike[str], want_weights: bool = True) -> _Raw:
    """Find and read ``config.json`` (and the weights) for any accepted kind of path."""
    path = Path(path)
    if not path.exists():
        raise _missing_error(path)
    if path.is_dir():
        folder = path
        weights_path = folder / WEIGHTS_NAME
        if not (folder / CONFIG_NAME).exists():
            pickles = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
            if pickles:
                raise _pickle_error(
                    str(folder / pickles[0]),
                    "this folder holds a PyTorch/pickle file, not a "
                    f"napari-unetpp checkpoint ({CONFIG_NAME} + {WEIGHTS_NAME})",
                )
            raise CheckpointError(
                f"{folder / CONFIG_NAME}: missing; a checkpoint folder holds {CONFIG_NAME} "
                f"and {WEIGHTS_NAME} (written by save_checkpoint)"
            )
    else:
        head = _read_head(path, 9)
        tensors = _looks_like_safetensors(head, path.stat().st_size)
        if path.suffix.lower() in _PICKLE_SUFFIXES or (_looks_like_pickle(head) and not tensors):
            raise _pickle_error(
                str(path), "this looks like a PyTorch/pickle file, not a checkpoint"
            )
        if head.startswith(b"PK") and not tensors:
            return _read_zip(path, want_weights)
        if path.name == CONFIG_NAME:
            folder, weights_path = path.parent, path.parent / WEIGHTS_NAME
        elif path.suffix == ".safetensors":
            folder, weights_path = path.parent, path
        else:
            raise CheckpointError(
                f"{path}: not a checkpoint; give the checkpoint folder, its {CONFIG_NAME}, "
                f"its {WEIGHTS_NAME} or a .zip of the folder"
            )
    config_path = folder / CONFIG_NAME
    try:
        config = _read_capped(config_path, _MAX_CONFIG_BYTES, CONFIG_NAME)
    except FileNotFoundError:
        raise CheckpointError(
            f"{config_path}: missing ({CONFIG_NAME} must sit beside the weights)"
        ) from None
    weights = None
    if want_weights:
        try:
            weights = _read_capped(weights_path, _weights_limit(config), WEIGHTS_NAME)
        except FileNotFoundError:
            raise CheckpointError(
                f"{weights_path}: missing; the checkpoint folder must hold {WEIGHTS_NAME} "
                f"beside {CONFIG_NAME}"
            ) from None
    return _Raw(config, str(config_path), weights, str(weights_path))


def _parse_config(raw: _Raw) -> tuple[dict[str, Any], CheckpointInfo]:
    name = raw.config_name
    if _looks_like_pickle(raw.config[:1]):
        raise _pickle_error(name, "this is a pickle, not JSON")
    try:
        data = json.loads(raw.config.decode("utf-8"))
    except RecursionError:
        raise CheckpointError(
            f"{name}: not valid JSON (nested too deeply); the file is "
            "corrupt or not a checkpoint config"
        ) from None
    except UnicodeDecodeError:
        raise CheckpointError(
            f"{name}: not valid JSON (not UTF-8 text; the file is corrupt)"
        ) from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"{name}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "the file is corrupt or was edited by hand"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{name}: expected a JSON object, got {type(data).__name__}")
    marker = data.get("format")
    if marker != FORMAT:
        raise CheckpointError(
            f"{name}: not a napari-unetpp checkpoint (format marker is {marker!r}, "
            f"expected {FORMAT!r})"
        )
    version = data.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{name}: invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{name}: written in checkpoint format {version} by napari-unetpp "
            f"{data.get('version', '?')}; this napari-unetpp ({__version__}) reads format "
            f"{FORMAT_VERSION}: upgrade napari-unetpp"
        )
    try:
        info = CheckpointInfo.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{name}: invalid configuration ({exc})") from None
    return data, info


def _parse_weights(raw: _Raw) -> dict[str, torch.Tensor]:
    name = raw.weights_name
    blob = raw.weights
    assert blob is not None  # _read_raw(want_weights=True) guarantees it
    if not _looks_like_safetensors(blob[:9], len(blob)) and (
        _looks_like_pickle(blob[:1]) or blob.startswith(b"PK")
    ):
        raise _pickle_error(name, "this is a PyTorch/pickle file, not safetensors")
    if len(blob) < 8:
        raise CheckpointError(f"{name}: truncated ({len(blob)} bytes); the file is corrupt")
    try:
        tensors = _safetensors_load(blob)
    except Exception as exc:  # SafetensorError and friends: never trust a corrupt header
        raise CheckpointError(
            f"{name}: corrupt or truncated safetensors file ({exc}); re-copy or re-save it"
        ) from None
    return tensors


def _header_shapes(raw: _Raw) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from the safetensors header, read before any tensor is made."""
    blob = raw.weights or b""
    name = raw.weights_name
    if not _looks_like_safetensors(blob[:9], len(blob)) and (
        _looks_like_pickle(blob[:1]) or blob.startswith(b"PK")
    ):
        raise _pickle_error(name, "this is a PyTorch/pickle file, not safetensors")
    size = int.from_bytes(blob[:8], "little") if len(blob) >= 8 else -1
    if size < 0 or size > min(len(blob) - 8, _MAX_HEADER_BYTES):
        raise CheckpointError(
            f"{name}: corrupt or truncated safetensors header; re-copy or re-save it"
        )
    try:
        header = json.loads(blob[8 : 8 + size].decode("utf-8"))
        shapes = {
            key: tuple(int(n) for n in value["shape"])
            for key, value in header.items()
            if key != "__metadata__"
        }
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        raise CheckpointError(
            f"{name}: corrupt safetensors header; re-copy or re-save it"
        ) from None
    return shapes


def _check_sha(raw: _Raw, meta: dict[str, Any]) -> None:
    """Catch bit rot that still parses (flipped bits inside the tensor data)."""
    section = meta.get("weights")
    expected = section.get("sha256") if isinstance(section, dict) else None
    if expected and raw.weights is not None:
        actual = hashlib.sha256(raw.weights).hexdigest()
        if actual != expected:
            raise CheckpointError(
                f"{raw.weights_name}: checksum does not match the one in {CONFIG_NAME} "
                "(the file is corrupt, or the weights of another model); re-copy or re-save it"
            )


def _match_shapes(net: UNetPlusPlus, shapes: dict[str, tuple[int, ...]], raw: _Raw) -> None:
    """Keys and shapes must match the network ``config.json`` describes, exactly."""
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = [
        f"{k}: file {shapes[k]} vs config {expected[k]}"
        for k in sorted(set(expected) & set(shapes))
        if shapes[k] != expected[k]
    ]
    if missing or unexpected or wrong:

        def some(items: list[str]) -> str:
            more = f" and {len(items) - 5} more" if len(items) > 5 else ""
            return ", ".join(items[:5]) + more

        problems = []
        if missing:
            problems.append(f"missing keys {some(missing)}")
        if unexpected:
            problems.append(f"unexpected keys {some(unexpected)}")
        if wrong:
            problems.append(f"shape mismatch {some(wrong)}")
        raise CheckpointError(
            f"{raw.weights_name}: weights do not match the network described in "
            f"{raw.config_name}: {'; '.join(problems)}. The two files come from different "
            "models; keep the pair written together by save_checkpoint"
        )


def _match_weights(
    net: UNetPlusPlus, tensors: dict[str, torch.Tensor], raw: _Raw
) -> dict[str, torch.Tensor]:
    """The loaded tensors, checked against the network and cast to its dtypes."""
    _match_shapes(net, {k: tuple(v.shape) for k, v in tensors.items()}, raw)
    expected = net.state_dict()
    return {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in tensors.items()}


def read_info(path: str | os.PathLike[str]) -> CheckpointInfo:
    """The configs and metadata of a checkpoint, without reading its weights (instant)."""
    return _parse_config(_read_raw(path, want_weights=False))[1]


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

    raw = _read_raw(path, want_weights=True)
    meta, info = _parse_config(raw)  # bounded by ModelConfig: building it is affordable
    try:
        net = UNetPlusPlus.from_config(info.model)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{raw.config_name}: cannot build the model ({exc})") from None
    _match_shapes(net, _header_shapes(raw), raw)  # before any tensor is made from the file
    tensors = _parse_weights(raw)
    state = _match_weights(net, tensors, raw)
    _check_sha(raw, meta)
    _check_finite(state, raw)
    net.load_state_dict(state, strict=True)
    net.eval()
    return net.to(resolve_device(device)), info


def _check_finite(state: dict[str, torch.Tensor], raw: _Raw) -> None:
    """Refuse NaN/inf weights: such a model predicts NaN everywhere without another sign."""
    from .nonfinite import non_finite_names

    bad = non_finite_names(state)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CheckpointError(
            f"{raw.weights_name}: non-finite (NaN or infinite) weights in {', '.join(bad[:3])}"
            f"{more}; the run that wrote it diverged: retrain with a lower learning rate"
        )


def _is_checkpoint_zip(path: Path) -> bool:
    """Whether ``path`` is a zip this package wrote (and so may be replaced by a new export)."""
    try:
        _parse_config(_read_zip(path, want_weights=False))
    except (CheckpointError, OSError):
        return False
    return True


def export_zip(checkpoint: str | os.PathLike[str], zip_path: str | os.PathLike[str]) -> Path:
    """Pack a checkpoint (folder, its files, or a zip) into one ``.zip`` to share.

    The zip holds ``config.json`` and ``weights.safetensors`` at its root; it is
    validated by loading first and written atomically (temp file, then rename).
    """
    raw = _read_raw(checkpoint, want_weights=True)
    meta, info = _parse_config(raw)
    net = UNetPlusPlus.from_config(info.model)
    _match_shapes(net, _header_shapes(raw), raw)
    _match_weights(net, _parse_weights(raw), raw)
    _check_sha(raw, meta)
    target = Path(zip_path)
    if target.suffix.lower() != ".zip":
        raise ValueError(f"{target}: the output name must end in .zip, e.g. {target.name}.zip")
    if target.exists() and not _is_checkpoint_zip(target):
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
