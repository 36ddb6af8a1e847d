"""Reading and validating checkpoint files: the part of :mod:`.checkpoint` that trusts nothing.

Why a module of its own: everything here runs on bytes a stranger may have
sent. It never unpickles (no ``torch.load``); it refuses pickle files from
their name or first byte, without opening them as pickles; it caps every read
(a FIFO, ``/dev/zero`` or a zip bomb fails at once); and it checks the weights
against the network ``config.json`` describes from the safetensors header,
before any tensor is made. Where a user's model is (run folders, ``zoo:NAME``)
is :mod:`.locate`'s question; the public API is in :mod:`.checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _safetensors_load
from torch import nn

from . import __version__
from .config import ModelConfig
from .limits import MAX_PARAMETERS, estimate_parameters
from .locate import (
    BIOIMAGEIO_RDF,
    CONFIG_NAME,
    FORMAT,
    FORMAT_VERSION,
    MAX_CONFIG_BYTES,
    PICKLE_SUFFIXES,
    WEIGHTS_NAME,
    zip_members,
)
from .stores import read_regular_file

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
class Raw:
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


def _bioimageio_error(name: str) -> CheckpointError:
    """Why not the pickle message: its TorchScript weights are no state dict to convert."""
    return CheckpointError(
        f"{name}: this is a bioimage.io package ({BIOIMAGEIO_RDF}), made for bioimage.io tools "
        "(bioimageio.core, deepImageJ, ilastik), not a napari-unetpp checkpoint; load the model "
        "it was exported from, or export one to share with `napari-unetpp export MODEL --out "
        "PATH --format folder` (or zip)"
    )


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
    except Exception:  # noqa: BLE001 - any problem is reported by parse_config
        return _MAX_WEIGHTS_BYTES
    # convolution weights (estimated) plus norms, biases and buffers, plus the header
    return int(4 * 1.25 * estimate_parameters(model)) + 4 * 2**20


def _read_zip(path: Path, want_weights: bool) -> Raw:
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/")]
            members = zip_members(names)
            if members is None:
                if BIOIMAGEIO_RDF in names:
                    raise _bioimageio_error(str(path))
                if any(n.endswith(".pkl") or n.rsplit("/", 1)[-1] == "data.pkl" for n in names):
                    raise _pickle_error(str(path), "this is a PyTorch (torch.save) zip of pickles")
                raise CheckpointError(
                    f"{path}: no {CONFIG_NAME} in this zip; a checkpoint zip holds "
                    f"{CONFIG_NAME} and {WEIGHTS_NAME} (make one with export_zip)"
                )
            config_member, weights_member = members
            if archive.getinfo(config_member).file_size > MAX_CONFIG_BYTES:
                raise CheckpointError(f"{path}: {config_member} is implausibly large")
            config = archive.read(config_member)
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
            return Raw(config, f"{path}:{config_member}", weights, f"{path}:{weights_member}")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated zip file ({exc})") from None
    except OSError as exc:  # CRC errors, unreadable file
        raise CheckpointError(f"{path}: cannot read the zip file ({exc})") from None


def read_raw(path: str | os.PathLike[str], want_weights: bool = True) -> Raw:
    """Find and read ``config.json`` (and the weights) for any accepted kind of path."""
    path = Path(path)
    if not path.exists():
        raise _missing_error(path)
    if path.is_dir():
        folder = path
        weights_path = folder / WEIGHTS_NAME
        if not (folder / CONFIG_NAME).exists():
            if (folder / BIOIMAGEIO_RDF).is_file():
                raise _bioimageio_error(str(folder))
            pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
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
        if path.suffix.lower() in PICKLE_SUFFIXES or (_looks_like_pickle(head) and not tensors):
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
        config = _read_capped(config_path, MAX_CONFIG_BYTES, CONFIG_NAME)
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
    return Raw(config, str(config_path), weights, str(weights_path))


def parse_config(raw: Raw) -> dict[str, Any]:
    """``config.json`` as a dict, refused unless it is JSON with our marker and a format we read."""
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
    return data


def parse_weights(raw: Raw) -> dict[str, torch.Tensor]:
    name = raw.weights_name
    blob = raw.weights
    assert blob is not None  # read_raw(want_weights=True) guarantees it
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


def header_shapes(raw: Raw) -> dict[str, tuple[int, ...]]:
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


def check_sha(raw: Raw, meta: dict[str, Any]) -> None:
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


def match_shapes(net: nn.Module, shapes: dict[str, tuple[int, ...]], raw: Raw) -> None:
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


def match_weights(
    net: nn.Module, tensors: dict[str, torch.Tensor], raw: Raw
) -> dict[str, torch.Tensor]:
    """The loaded tensors, checked against the network and cast to its dtypes."""
    match_shapes(net, {k: tuple(v.shape) for k, v in tensors.items()}, raw)
    expected = net.state_dict()
    return {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in tensors.items()}


def check_finite(state: dict[str, torch.Tensor], raw: Raw) -> None:
    """Refuse NaN/inf weights: such a model predicts NaN everywhere without another sign."""
    from .nonfinite import non_finite_names

    bad = non_finite_names(state)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CheckpointError(
            f"{raw.weights_name}: non-finite (NaN or infinite) weights in {', '.join(bad[:3])}"
            f"{more}; the run that wrote it diverged: retrain with a lower learning rate"
        )
