"""Share a model: a pruned checkpoint, TorchScript, ONNX or a bioimage.io package.

Why one entry point: the pruning panel, the CLI and a notebook all write exports, and two
diverged copies of "save the pruned network" existed before. Every format goes through
:func:`export_model`; a pruned checkpoint through :func:`export_pruned`; the bioimage.io
package writer lives in :mod:`bioimageio`.

The TorchScript, ONNX and bioimage.io exports hold a :class:`ProbabilityNet`: it takes
an already *normalised* ``(b, c, y, x)`` (or ``(b, c, z, y, x)``) float32 tensor and
returns probabilities (sigmoid for one class, softmax over the classes otherwise) of one
depth (the pruned network, exactly head ``d``) or of all heads stacked as channels
(depth 1's classes first). Spatial sizes must be multiples of ``2**d`` (``d`` the
deepest exported head): the exported graph has no padding. Nothing here writes pickle:
a ``pytorch_state_dict`` weights entry would need it, so none is written (our own
checkpoints are safetensors + JSON; TorchScript stores its code and tensors in a zip
that ``torch.jit.load`` reads without running Python pickles of arbitrary classes).

Example
-------
>>> from napari_unetpp.export import export_model
>>> export_model("zoo:em", "em_L3.zip", "bioimageio", depth=3)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import tempfile
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .locate import is_zoo, zoo_name

if TYPE_CHECKING:
    from .checkpoint import CheckpointInfo
    from .model import UNetPlusPlus

__all__ = [
    "FORMATS",
    "ProbabilityNet",
    "probability_net",
    "export_pruned",
    "export_torchscript",
    "export_onnx",
    "export_model",
]

#: What ``napari-unetpp export --format`` accepts: a pruned checkpoint (folder or zip),
#: a bioimage.io package, a bare ONNX or TorchScript file.
FORMATS = ("folder", "zip", "bioimageio", "onnx", "torchscript")

#: Formats that would need pickle; refused with a reason.
PICKLE_FORMATS = ("pytorch", "pytorch_state_dict", "pt", "pth", "pickle")

#: ONNX opset of the exports (the dynamo exporter of torch >= 2.9 starts at 18).
ONNX_OPSET = 18


# --------------------------------------------------------------------------- the network


class ProbabilityNet(nn.Module):
    """A UNet++ as a self-contained predictor: normalised input -> probabilities.

    ``depths`` are the heads whose probabilities are returned, stacked along channels
    (``num_classes`` channels per depth, shallowest first).
    """

    def __init__(self, net: UNetPlusPlus, depths: Sequence[int]) -> None:
        super().__init__()
        self.net = net
        self.depths = [int(d) for d in depths]
        self.softmax = net.config.num_classes > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x, self.depths)
        probs = [
            torch.softmax(logits[d], dim=1) if self.softmax else torch.sigmoid(logits[d])
            for d in self.depths
        ]
        return probs[0] if len(probs) == 1 else torch.cat(probs, dim=1)

    @property
    def multiple(self) -> int:
        """Spatial sizes must be multiples of this (``2**`` the deepest head)."""
        return 2 ** max(self.depths)


def _chosen_depth(model: UNetPlusPlus, info: CheckpointInfo | None, depth: int | None) -> int:
    """``depth``, or the model's recommended (best) depth, or its deepest head."""
    if depth is None:
        best = (info.metrics.get("best_depth") if info is not None else None) or max(
            model.head_depths
        )
        depth = int(best) if int(best) in model.head_depths else max(model.head_depths)
    if depth not in model.head_depths:
        raise ValueError(f"no head at depth {depth}; this model has {list(model.head_depths)}")
    return int(depth)


def probability_net(
    model: UNetPlusPlus,
    depth: int | None = None,
    all_heads: bool = False,
    info: CheckpointInfo | None = None,
) -> ProbabilityNet:
    """The network to export, on CPU in eval mode: the pruned L``depth`` or all heads."""
    model = model.to("cpu").float().eval()
    if all_heads:
        if depth is not None:
            raise ValueError("give either a depth or all_heads, not both")
        return ProbabilityNet(model, model.head_depths).eval()
    d = _chosen_depth(model, info, depth)
    return ProbabilityNet(model.prune(d).eval(), [d]).eval()


def _example(net: ProbabilityNet, size: int = 64) -> torch.Tensor:
    """A random input of the network's shape; sides a multiple of ``net.multiple``."""
    side = max(size, net.multiple) // net.multiple * net.multiple
    config = net.net.config
    shape = (1, config.in_channels) + (side,) * config.spatial_dims
    return torch.rand(shape, generator=torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------- checkpoints


def export_pruned(
    model: UNetPlusPlus,
    info: CheckpointInfo,
    depth: int,
    out: str | os.PathLike[str],
    *,
    source: str = "",
    half: bool = False,
) -> Path:
    """Save the depth-``depth`` network as its own checkpoint (folder, or ``.zip`` by name).

    Its metrics table keeps only that depth's row (``best_depth`` becomes ``depth``); the
    provenance says where it was pruned from (``source``: a ``zoo:`` name or a path).
    Returns the folder (or zip) written.
    """
    if depth not in model.head_depths:
        raise ValueError(f"no head at depth {depth}; this model has {list(model.head_depths)}")
    pruned = model.prune(depth).eval()
    metrics = dict(info.metrics or {})
    row = (metrics.get("depths") or {}).get(str(depth))
    metrics["depths"] = {str(depth): row} if row is not None else {}
    metrics["best_depth"] = depth
    provenance = {
        **(info.provenance or {}),
        "pruned_from": source or str(info.provenance.get("pruned_from", "")),
        "pruned_depth": depth,
        "original_depth": model.depth,
    }
    new_info = dataclasses.replace(
        info, model=pruned.config, metrics=metrics, provenance=provenance
    )
    return _save(pruned, new_info, Path(out), half)


# --------------------------------------------------------------------------- weights files


#: The mark an ONNX (metadata property) or TorchScript (extra file) export carries: a later
#: export may replace a file with it, and never any other file (a user's own ``model.onnx``).
EXPORT_MARK = "napari_unetpp"


def _check_replaceable(target: Path) -> None:
    """Refuse to replace a file (or folder) that is not one of our ONNX / TorchScript exports."""
    if target.exists() and not (target.is_file() and _is_our_export(target)):
        raise ValueError(
            f"{target} exists and is not an export of napari-unetpp; choose a new path "
            "(it is left as it is)"
        )


def _is_our_export(path: Path) -> bool:
    """Whether ``path`` carries :data:`EXPORT_MARK` (read from the zip directory or the ONNX
    header; files over 2 GiB are never ours: these models are a few MB)."""
    import zipfile

    if path.stat().st_size > 2**31:
        return False
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith(f"/extra/{EXPORT_MARK}") for n in archive.namelist())
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not ONNX (or no onnx installed): not ours
        return False
    return any(entry.key == EXPORT_MARK for entry in model.metadata_props)


def export_torchscript(net: ProbabilityNet, out: str | os.PathLike[str]) -> Path:
    """Trace ``net`` to a TorchScript file (any batch and any multiple-of-``2**d`` size)."""
    from . import __version__

    target = Path(out)
    _check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # the size checks in forward become constants: right for multiples of 2**d;
        # torch 2.13 deprecates TorchScript, but it is bioimage.io's PyTorch format
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(net, _example(net), check_trace=False)
        mark = {EXPORT_MARK: __version__}
        _atomic(target, lambda tmp: torch.jit.save(traced, str(tmp), _extra_files=mark))
    return target


def export_onnx(net: ProbabilityNet, out: str | os.PathLike[str]) -> Path:
    """Export ``net`` to ONNX (opset :data:`ONNX_OPSET`) with dynamic batch and spatial axes.

    Uses the ``torch.export`` based exporter (the TorchScript one is deprecated); the
    spatial axes are declared as multiples of ``2**d``, so the graph needs no padding.
    Needs the ``export`` extra (``onnx``, ``onnxscript``).
    """
    from torch.export import Dim

    try:
        import onnx  # the exporter needs it (and it marks the file): say which extra brings it
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "ONNX export needs onnx and onnxscript: pip install 'napari-unetpp[export]'"
        ) from exc
    from . import __version__

    target = Path(out)
    _check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    axes = ("z", "y", "x")[-net.net.config.spatial_dims :]
    shapes = {0: Dim("batch", min=1, max=1024)}
    for k, name in enumerate(axes):
        shapes[2 + k] = net.multiple * Dim(f"{name}_blocks", min=1, max=65536 // net.multiple)

    def write(tmp: Path) -> None:
        # the exporter prints its steps; the caller reports the result
        quiet = logging.getLogger("torch.onnx")  # "torchvision is not installed" notes
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            with (
                torch.no_grad(),
                contextlib.redirect_stdout(io.StringIO()),
                warnings.catch_warnings(),
            ):
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    net,
                    (_example(net),),
                    str(tmp),
                    dynamo=True,
                    opset_version=ONNX_OPSET,
                    input_names=["input"],
                    output_names=["output"],
                    dynamic_shapes={"x": shapes},
                    external_data=False,
                    verbose=False,
                )
        finally:
            quiet.setLevel(level)
        exported = onnx.load(str(tmp))
        entry = exported.metadata_props.add()
        entry.key, entry.value = EXPORT_MARK, __version__
        onnx.save(exported, str(tmp))

    _atomic(target, write)
    return target


def _atomic(target: Path, write: Any) -> None:
    """Call ``write(tmp)`` then rename ``tmp`` onto ``target``: never a half-written file."""
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}{target.suffix}")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- one entry point


def export_model(
    spec_or_model: str | os.PathLike[str] | UNetPlusPlus,
    out: str | os.PathLike[str],
    fmt: str,
    depth: int | None = None,
    all_heads: bool = False,
    *,
    info: CheckpointInfo | None = None,
    half: bool = False,
    test_image: np.ndarray | None = None,
    license: str | None = None,
) -> Path:
    """Export a model (``zoo:NAME``, a checkpoint path, or a network with ``info``) as ``fmt``.

    ``fmt`` is one of :data:`FORMATS`. ``depth`` picks one head (the pruned network;
    default: the model's recommended depth); ``all_heads`` keeps every head (a checkpoint
    is then saved whole, the other formats stack the heads' probabilities as channels).
    For a shipped model the bioimage.io test image is its sample crop.
    """
    fmt = fmt.lower()
    if fmt in PICKLE_FORMATS:
        raise ValueError(
            f"format {fmt!r} would write a pickle (unsafe to load); use one of {FORMATS}: "
            "TorchScript and ONNX load in PyTorch and everywhere else without pickle"
        )
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    if all_heads and depth is not None:
        raise ValueError("give either a depth or all_heads, not both")
    source = ""
    if isinstance(spec_or_model, nn.Module):
        if info is None:
            raise ValueError("exporting a network needs its CheckpointInfo (info=...)")
        model = spec_or_model
    else:
        from .files import load_model

        source = str(spec_or_model)
        model, info = load_model(source, device="cpu")
        if test_image is None and is_zoo(source):
            from ._sample_data import load_sample

            test_image = load_sample(zoo_name(source))[0]
    model = model.to("cpu").eval()
    if fmt in ("folder", "zip"):
        target = Path(out)
        if fmt == "zip" and target.suffix.lower() != ".zip":
            target = target.with_name(target.name + ".zip")
        if all_heads:
            return _save(model, info, target, half)
        return export_pruned(
            model, info, _chosen_depth(model, info, depth), target, source=source, half=half
        )
    if fmt == "bioimageio":
        from .bioimageio import export_bioimageio

        return export_bioimageio(
            model,
            info,
            out,
            depth=depth,
            all_heads=all_heads,
            test_image=test_image,
            license=license,
        )
    net = probability_net(model, depth, all_heads, info)
    return export_onnx(net, out) if fmt == "onnx" else export_torchscript(net, out)


def _save(model: UNetPlusPlus, info: CheckpointInfo, target: Path, half: bool) -> Path:
    """``model`` as a checkpoint folder, or a zip when ``target`` ends in ``.zip``."""
    from .checkpoint import export_zip, save_checkpoint

    if target.suffix.lower() != ".zip":
        return Path(save_checkpoint(target, model, info, half=half))
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        return export_zip(save_checkpoint(Path(tmp) / target.stem, model, info, half=half), target)
