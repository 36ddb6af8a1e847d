"""The bioimage.io model package: ``rdf.yaml``, test tensors, cover, README, weights.

Why apart from :mod:`export`: the package writer is most of the export code (the rdf's
axes, preprocessing, licence and citations read off the model card), while the network
and its weights files are shared with the bare ONNX/TorchScript exports; it uses
:func:`export.probability_net`, :func:`export.export_torchscript` and
:func:`export.export_onnx` and is reached through :func:`export.export_model`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .export import (
    ONNX_OPSET,
    ProbabilityNet,
    _atomic,
    export_onnx,
    export_torchscript,
    probability_net,
)
from .locate import BIOIMAGEIO_RDF, is_bioimageio_package

if TYPE_CHECKING:
    from .checkpoint import CheckpointInfo
    from .model import UNetPlusPlus

__all__ = ["export_bioimageio", "BIOIMAGEIO_FORMAT_VERSION"]

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


def _check_licence(spdx: str) -> None:
    """Refuse, before any work, a licence id bioimage.io rejects: `--license` with a typo
    wrote a package that does not validate. Unchecked without ``bioimageio.spec``."""
    try:
        from bioimageio.spec.model.v0_5 import DeprecatedLicenseId, LicenseId
    except ImportError:
        return
    for kind in (LicenseId, DeprecatedLicenseId):
        try:
            kind(spdx)
            return
        except ValueError:  # pydantic's ValidationError is one
            continue
    raise ValueError(
        f"licence {spdx!r} is not an SPDX id that bioimage.io accepts; give one such as "
        "CC-BY-4.0, CC-BY-NC-4.0, MIT or BSD-3-Clause (https://spdx.org/licenses)"
    )


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
    axes = ["channel", *_space_names(info)]  # jointly, per image (as normalization.normalize)
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
    from .postprocess import label_threshold
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
        + f" Labels: threshold at {label_threshold(info.model):g} (one class) or argmax over "
        + "the classes.\n\n"
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
    empty_folder = target.is_dir() and not any(target.iterdir())
    if target.exists() and not empty_folder and not is_bioimageio_package(target):
        # a user's photos.zip or folder is never replaced; only an earlier package is
        raise ValueError(f"{target} exists and is not a bioimage.io package; choose a new path")
    spdx = license or _spdx(info.card)
    _check_licence(spdx)
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
        rdf = _rdf(info, net, title, spdx, folder)
        (folder / BIOIMAGEIO_RDF).write_text(json.dumps(rdf, indent=2), encoding="utf-8")
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
