"""Share a model: a pruned checkpoint, TorchScript, ONNX or a bioimage.io package.

Why one module: the pruning panel, the CLI and a notebook all write exports, and two
diverged copies of "save the pruned network" existed before. Every format goes through
:func:`export_model`; a pruned checkpoint through :func:`export_pruned`.

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
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
import warnings
import zipfile
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
    "export_bioimageio",
    "export_model",
]

#: What ``napari-unetpp export --format`` accepts: a pruned checkpoint (folder or zip),
#: a bioimage.io package, a bare ONNX or TorchScript file.
FORMATS = ("folder", "zip", "bioimageio", "onnx", "torchscript")

#: Formats that would need pickle; refused with a reason.
PICKLE_FORMATS = ("pytorch", "pytorch_state_dict", "pt", "pth", "pickle")

#: ONNX opset of the exports (the dynamo exporter of torch >= 2.9 starts at 18).
ONNX_OPSET = 18

#: bioimage.io model spec version the ``rdf.yaml`` follows.
BIOIMAGEIO_FORMAT_VERSION = "0.5.4"

UNETPP_CITATION = {
    "text": "Zhou et al. (2020) UNet++: Redesigning Skip Connections to Exploit Multiscale "
    "Features in Image Segmentation, IEEE TMI 39(6)",
    "doi": "10.1109/TMI.2019.2959609",
}

_SPACE_UNITS = {
    "nm": "nanometer",
    "um": "micrometer",
    "µm": "micrometer",
    "micron": "micrometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
}


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


def export_torchscript(net: ProbabilityNet, out: str | os.PathLike[str]) -> Path:
    """Trace ``net`` to a TorchScript file (any batch and any multiple-of-``2**d`` size)."""
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # the size checks in forward become constants: right for multiples of 2**d;
        # torch 2.13 deprecates TorchScript, but it is bioimage.io's PyTorch format
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(net, _example(net), check_trace=False)
        _atomic(target, lambda tmp: torch.jit.save(traced, str(tmp)))
    return target


def export_onnx(net: ProbabilityNet, out: str | os.PathLike[str]) -> Path:
    """Export ``net`` to ONNX (opset :data:`ONNX_OPSET`) with dynamic batch and spatial axes.

    Uses the ``torch.export`` based exporter (the TorchScript one is deprecated); the
    spatial axes are declared as multiples of ``2**d``, so the graph needs no padding.
    Needs the ``export`` extra (``onnx``, ``onnxscript``).
    """
    from torch.export import Dim

    try:
        import onnx  # noqa: F401  (the exporter needs it; say which extra brings it)
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "ONNX export needs onnx and onnxscript: pip install 'napari-unetpp[export]'"
        ) from exc
    target = Path(out)
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


# --------------------------------------------------------------------------- bioimage.io


def _spdx(card: dict[str, Any]) -> str:
    """The SPDX licence id of the weights: the card's ``spdx``, else read off its licence text.

    Why read it off: the shipped cards state licences in words ("non-commercial research
    use only", "Apache-2.0 (...)"); a permissive id for non-commercial weights would be wrong.
    """
    if card.get("spdx"):
        return str(card["spdx"])
    text = str(card.get("licence") or card.get("license") or "")
    if re.search(r"non-?commercial", text, re.IGNORECASE):
        return "CC-BY-NC-4.0"
    for spdx in ("BSD-3-Clause", "Apache-2.0", "MIT", "CC-BY-4.0", "CC-BY-NC-4.0"):
        if spdx.lower() in text.lower():
            return spdx
    if "CC0" in text:
        return "CC0-1.0"
    return "CC-BY-4.0"


def _cite(card: dict[str, Any]) -> list[dict[str, str]]:
    """UNet++ plus the card's ``cite`` entries, or the DOIs its citation text names."""
    entries = [dict(e) for e in card.get("cite") or [] if e.get("doi") or e.get("url")]
    text = str(card.get("citation") or "")
    for doi in re.findall(r"10\.\d{4,9}/[^\s;,)]+", text):
        entries.append({"text": doi, "doi": doi.rstrip(".")})
    if not any(e.get("doi") == UNETPP_CITATION["doi"] for e in entries):
        entries.append(dict(UNETPP_CITATION))
    return entries


def _authors(card: dict[str, Any]) -> list[dict[str, str]]:
    authors = card.get("authors") or [{"name": "napari-unetpp developers"}]
    return [a if isinstance(a, dict) else {"name": str(a)} for a in authors]


def _preprocessing(info: CheckpointInfo) -> list[dict[str, Any]]:
    """The model's normalisation as bioimage.io operations (what the network expects)."""
    norm = info.data.normalization
    axes = ["channel", *_space_names(info)]  # jointly, per image (as data.normalize)
    steps: list[dict[str, Any]] = [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]
    if norm.mode == "percentile":
        steps.append(
            {
                "id": "scale_range",
                "kwargs": {
                    "axes": axes,
                    "min_percentile": float(norm.low),
                    "max_percentile": float(norm.high),
                    "eps": 1e-6,
                },
            }
        )
    elif norm.mode == "window":
        gain = 1.0 / (norm.high - norm.low)
        steps.append({"id": "scale_linear", "kwargs": {"gain": gain, "offset": -norm.low * gain}})
    if norm.clip and norm.mode != "none":
        steps.append({"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}})
    return steps


def _space_names(info: CheckpointInfo) -> tuple[str, ...]:
    return ("z", "y", "x")[-info.model.spatial_dims :]


def _space_axes(info: CheckpointInfo, multiple: int, as_input: bool) -> list[dict[str, Any]]:
    config = info.model
    names = _space_names(info)
    sizes = list(config.pixel_size or ())
    unit = _SPACE_UNITS.get(str(config.pixel_unit or "").strip())
    axes = []
    for k, name in enumerate(names):
        axis: dict[str, Any] = {"type": "space", "id": name}
        if as_input:
            axis["size"] = {"min": multiple, "step": multiple}
        else:
            axis["size"] = {"tensor_id": "input", "axis_id": name}
        if unit and len(sizes) == len(names):
            axis["unit"], axis["scale"] = unit, float(sizes[k])
        axes.append(axis)
    return axes


def _output_channels(net: ProbabilityNet, info: CheckpointInfo) -> list[str]:
    config = info.model
    names = list(config.class_names) or (
        ["foreground"]
        if config.num_classes == 1
        else [f"class{k}" for k in range(config.num_classes)]
    )
    names = [re.sub(r"[^A-Za-z0-9_]", "_", n) for n in names]
    if len(net.depths) == 1:
        return names
    return [f"L{d}_{n}" for d in net.depths for n in names]


def _test_image(info: CheckpointInfo, multiple: int, image: np.ndarray | None) -> np.ndarray:
    """A raw ``(c, *spatial)`` test image cropped to multiples of ``multiple`` (64 if none)."""
    from .normalization import to_channels_first

    config = info.model
    if image is None:
        rng = np.random.default_rng(0)
        side = max(64, multiple)
        image = rng.normal(100.0, 20.0, (config.in_channels,) + (side,) * config.spatial_dims)
    else:
        image = np.asarray(image)
        channels = info.data.channel_axis
        image = image[None] if channels is None else to_channels_first(image, channels)
        while image.ndim > 1 + config.spatial_dims:  # a stack: its middle slice
            image = image[:, image.shape[1] // 2]
    spatial = image.shape[1:]
    crop = tuple(slice(0, min(s, 256) // multiple * multiple) for s in spatial)
    image = image[(slice(None),) + crop]
    if 0 in image.shape:
        raise ValueError(f"the test image is smaller than {multiple} pixels (2**depth)")
    return np.ascontiguousarray(image, dtype=np.float32)


def _cover(test_input: np.ndarray, test_output: np.ndarray, path: Path) -> None:
    """Input beside output (first channel's foreground, middle slice for 3D): a 2:1 PNG."""
    import imageio.v3 as iio

    def plane(a: np.ndarray) -> np.ndarray:
        a = a[0]
        while a.ndim > 2:
            a = a[a.shape[0] // 2]
        low, high = np.percentile(a, [1, 99.8])
        return np.clip((a - low) / max(high - low, 1e-8), 0, 1)

    probs = test_output[0]
    fg = probs[0] if probs.shape[0] == 1 else 1 - probs[0]  # softmax: 1 - background
    while fg.ndim > 2:
        fg = fg[fg.shape[0] // 2]
    picture = np.concatenate([plane(test_input[0]), np.clip(fg, 0, 1)], axis=1)
    iio.imwrite(path, (picture * 255).round().astype(np.uint8))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _readme(info: CheckpointInfo, net: ProbabilityNet, title: str) -> str:
    from .zoo import card_markdown

    heads = ", ".join(f"L{d}" for d in net.depths)
    norm = info.data.normalization
    return (
        card_markdown(info, title)
        + "\n## This package\n\n"
        + f"Exported by napari-unetpp: UNet++ head(s) {heads}, probabilities "
        + ("(softmax over the classes)" if net.softmax else "(sigmoid)")
        + f". Input: float32 (batch, channel, {', '.join(_space_names(info))}),"
        + f" normalised per image: {norm.mode} {norm.low:g}..{norm.high:g}"
        + (" then clipped to 0..1" if norm.clip else "")
        + f". Every spatial size must be a multiple of {net.multiple}."
        + " Labels: threshold at 0.5 (one class) or argmax over the classes.\n\n"
        + "- Licence (as the model card states it): "
        + str(info.card.get("licence") or info.card.get("license") or "see rdf.yaml")
        + "\n- Citation: "
        + str(info.card.get("citation") or UNETPP_CITATION["text"])
        + "\n\n## Validation\n\n"
        + "The scores above were measured by napari-unetpp on the split the card names. "
        + "The test tensors of this package are napari-unetpp's own probabilities for "
        + "the test input; the TorchScript and ONNX weights reproduce them within 1e-4.\n"
    )


def export_bioimageio(
    model: UNetPlusPlus,
    info: CheckpointInfo,
    out: str | os.PathLike[str],
    *,
    depth: int | None = None,
    all_heads: bool = False,
    test_image: np.ndarray | None = None,
    name: str = "",
    license: str | None = None,
) -> Path:
    """Write a bioimage.io model package (folder, or ``.zip`` by name) and return it.

    Holds ``rdf.yaml`` (model spec 0.5; written as JSON, which is YAML), TorchScript and
    ONNX weights of :func:`probability_net`, a raw test input and the expected
    probabilities as ``.npy``, a cover PNG, ``README.md`` from the model card and the
    licence/citations of the card. ``test_image`` is a raw image of the model's kind
    (cropped to at most 256 per axis); without it a random one is used.
    """
    from .normalization import normalize

    target = Path(out)
    if target.exists() and not (target.is_dir() and not any(target.iterdir())):
        if not (target.suffix.lower() == ".zip" or (target / "rdf.yaml").is_file()):
            raise ValueError(f"{target} exists and is not a bioimage.io package; choose a new path")
    net = probability_net(model, depth, all_heads, info)
    raw = _test_image(info, net.multiple, test_image)
    with torch.no_grad():
        # the engine's normalisation; for a typical test crop the rdf's scale_range equals it
        expected = net(torch.from_numpy(normalize(raw, info.data.normalization))[None]).numpy()
    title = name or str(info.card.get("title") or "UNet++ model")
    target.parent.mkdir(parents=True, exist_ok=True)
    # staged beside the target (mkdir keeps the user's umask; a temp dir would be 0700)
    folder = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    try:
        np.save(folder / "test_input.npy", raw[None], allow_pickle=False)
        np.save(folder / "test_output.npy", expected, allow_pickle=False)
        _cover(raw[None], expected, folder / "cover.png")
        (folder / "README.md").write_text(_readme(info, net, title), encoding="utf-8")
        export_torchscript(net, folder / "weights.torchscript.pt")
        export_onnx(net, folder / "weights.onnx")
        rdf = _rdf(info, net, title, license or _spdx(info.card), folder)
        (folder / "rdf.yaml").write_text(json.dumps(rdf, indent=2), encoding="utf-8")
        if target.suffix.lower() == ".zip":
            _zip_folder(folder, target)
        else:
            _replace_folder(folder, target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return target


def _replace_folder(staged: Path, target: Path) -> None:
    """Move ``staged`` onto ``target``; an old package there is removed only afterwards."""
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        os.replace(target, old)
    os.replace(staged, target)
    shutil.rmtree(old, ignore_errors=True)


def _rdf(
    info: CheckpointInfo, net: ProbabilityNet, title: str, spdx: str, folder: Path
) -> dict[str, Any]:
    """The bioimage.io model description of the files in ``folder``."""
    config = info.model
    channels = list(config.channel_names) or [f"channel{k}" for k in range(config.in_channels)]
    heads = ", ".join(f"L{d}" for d in net.depths)
    norm = info.data.normalization
    summary = str(info.card.get("summary") or "UNet++ segmentation")
    description = (
        f"{summary} UNet++ ({config.spatial_dims}D) head(s) {heads} as probabilities "
        f"({'softmax' if net.softmax else 'sigmoid'}); input normalised per image "
        f"({norm.mode} {norm.low:g}..{norm.high:g}); spatial sizes multiples of {net.multiple}."
    )

    def file(name: str) -> dict[str, str]:
        return {"source": name, "sha256": _sha256(folder / name)}

    return {
        "type": "model",
        "format_version": BIOIMAGEIO_FORMAT_VERSION,
        "name": re.sub(r"[^A-Za-z0-9 _().+-]", " ", title)[:128].strip(),
        "description": description[:1024],
        "authors": _authors(info.card),
        "cite": _cite(info.card),
        "license": spdx,
        "tags": ["unet++", "segmentation", f"{config.spatial_dims}d", "napari-unetpp"],
        "covers": ["cover.png"],
        "documentation": "README.md",
        "inputs": [
            {
                "id": "input",
                "description": "raw image; normalised by the preprocessing",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": channels},
                    *_space_axes(info, net.multiple, as_input=True),
                ],
                "test_tensor": file("test_input.npy"),
                "data": {"type": "float32"},
                "preprocessing": _preprocessing(info),
            }
        ],
        "outputs": [
            {
                "id": "output",
                "description": f"probabilities of {heads}"
                + (" (stacked per depth)" if len(net.depths) > 1 else ""),
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": _output_channels(net, info)},
                    *_space_axes(info, net.multiple, as_input=False),
                ],
                "test_tensor": file("test_output.npy"),
                "data": {"type": "float32", "range": [0.0, 1.0]},
            }
        ],
        "weights": {
            "torchscript": {
                **file("weights.torchscript.pt"),
                "pytorch_version": torch.__version__.split("+")[0],
            },
            "onnx": {
                **file("weights.onnx"),
                "opset_version": ONNX_OPSET,
                "parent": "torchscript",
            },
        },
        "config": {
            "napari_unetpp": {
                "depths": net.depths,
                "spatial_multiple": net.multiple,
                "normalization": norm.to_dict(),
                "num_classes": config.num_classes,
            }
        },
    }


def _zip_folder(folder: Path, target: Path) -> None:
    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.iterdir()):
                archive.write(path, path.name)

    _atomic(target, write)


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
