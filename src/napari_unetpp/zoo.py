"""Shipped pretrained models (nuclei, EM membranes, CT organs) and their model cards.

Why a zoo: a biologist should get a useful segmentation, and a starting point
for fine-tuning, without training anything. Each model is an ordinary
checkpoint folder inside the package (``models/<name>/weights.safetensors`` in
float16 + ``config.json``), loaded with :func:`checkpoint.load_checkpoint`: no
network access, no pickle. A model is listed only when its weights are really
in the installed package, so a partial build never advertises a model it lacks.

The held-back splits below are part of each model's definition: the training
script (``scripts/train_zoo.py``) never trains on them, the sample crops
(``_sample_data``) are cut from them, and the scores in the cards are measured
on them.

Example
-------
>>> [e.name for e in available_models()]            # doctest: +SKIP
['em', 'nuclei']
>>> model, info = load_pretrained("em")              # doctest: +SKIP
>>> print(model_card("em"))                          # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .locate import CONFIG_NAME, WEIGHTS_NAME, zoo_spec

__all__ = [
    "ZooEntry",
    "available_models",
    "load_pretrained",
    "shipped_entry",
    "model_card",
    "card_markdown",
    "known_models",
    "models_dir",
    "MODELS_DIR",
    "EM_TEST_SLICES",
    "EM_VAL_SLICES",
    "CT_TEST_SLICES",
    "CT_VAL_SLICES",
    "CT_ORGANS",
    "NUCLEI_HELD_OUT_IDS",
]

#: Where shipped checkpoints live inside the installed package.
MODELS_DIR = Path(__file__).resolve().parent / "models"

#: ISBI 2012 EM stack (slices 0-19 here): ``[start, stop)`` slice blocks.
#: Neighbouring slices are correlated, so splits are blocks, never random pixels.
EM_VAL_SLICES: tuple[int, int] = (12, 15)
EM_TEST_SLICES: tuple[int, int] = (15, 20)

#: TotalSegmentator CT (30 slices at 3 mm): the bottom block is held back; it
#: holds every organ of the model (the right kidney ends at slice 18).
CT_TEST_SLICES: tuple[int, int] = (0, 6)
CT_VAL_SLICES: tuple[int, int] = (6, 10)

#: Organs of the CT model, in output-class order (class k + 1), with their
#: TotalSegmentator label ids in ``ct_totalseg/organs.tif``.
CT_ORGANS: tuple[tuple[str, int], ...] = (
    ("liver", 5),
    ("spleen", 1),
    ("kidney_right", 2),
    ("kidney_left", 3),
    ("stomach", 6),
)

#: DSB 2018 (BBBC038) images never used to train the nuclei model: every 12th id
#: (sorted) of each image-shape group with >= 6 images, so all modalities and
#: sizes are represented (44 of 500 images).
NUCLEI_HELD_OUT_IDS: tuple[str, ...] = (
    "00071198d059ba7f",
    "0b2e702f90aee4ff",
    "1b6044e4858a9b7c",
    "2349e95ece2857c8",
    "2e172afb1f43b359",
    "3874755f6222e830",
    "44ab6a09eedee848",
    "573a657d5e5fcb95",
    "60cb718759bff13f",
    "72b18a405555ad49",
    "88d5a03f8ecd459f",
    "92e7e86e765e05ce",
    "9cbc070031736123",
    "a6593632dcbbe4c9",
    "b560dba92fbf2af7",
    "c00ae67f72816dae",
    "c89ac06daef5c819",
    "d6a880b1f6056f30",
    "e216ec5063d3562b",
    "ead9464a50a17f74",
    "f43169e3d8b4f71e",
    "fd8065bcb1afdbed",
    "00ae65c1c6631ae6",
    "2255d5aba044256b",
    "4590d7d47f521df6",
    "673baf65ae5c571d",
    "8e507d58f4c27cd2",
    "af6b6173c59450bc",
    "ebc18868864ad075",
    "02903040e19ddf92",
    "2a2032c4ed78f3fc",
    "5bda829acd824821",
    "97126a9791f0c117",
    "b6c9b58de0388891",
    "d8607b21411c9c8a",
    "1400420310c90943",
    "07fb37aafa662660",
    "3477024fd843e460",
    "4ee5850b63549794",
    "76faaed50ed6ea68",
    "a90cad45551d62c5",
    "da5f98f2b8a64eee",
    "20b20ab049372d18",
    "091944f1d2611c91",
)


@dataclass(frozen=True)
class ZooEntry:
    """One shipped model: its short name (``zoo:<name>``), a title, what it does, its folder."""

    name: str
    title: str
    description: str
    folder: Path

    @property
    def path(self) -> Path:
        """Alias of :attr:`folder` (the checkpoint folder to load or read)."""
        return self.folder

    @property
    def spec(self) -> str:
        """``zoo:<name>``: how the CLI, the widgets and run records name this model."""
        return zoo_spec(self.name)


#: Every model the zoo knows; only those whose weights are shipped are *available*.
_CATALOGUE: dict[str, tuple[str, str]] = {
    "nuclei": (
        "Nuclei (DSB 2018), instance",
        "Cell nuclei in fluorescence, brightfield and H&E images (single-channel input: "
        "convert RGB to grayscale). Predicts background / interior / boundary and separates "
        "touching nuclei by watershed.",
    ),
    "em": (
        "EM membranes (ISBI 2012)",
        "Cell membranes in serial-section TEM of neural tissue; membrane probability "
        "(cell interior = 1 - membrane).",
    ),
    "ct": (
        "Abdominal CT organs (TotalSegmentator)",
        "Liver, spleen, kidneys and stomach in abdominal CT (Hounsfield units, soft-tissue "
        "window W400 L40), slice by slice; trained at 3 mm.",
    ),
}


def known_models() -> list[str]:
    """Names of all zoo models, shipped or not (what ``train_zoo.py`` can train)."""
    return list(_CATALOGUE)


def models_dir() -> Path:
    """The models folder; ``NAPARI_UNETPP_ZOO`` overrides it (tests, local retraining)."""
    override = os.environ.get("NAPARI_UNETPP_ZOO")
    return Path(override) if override else MODELS_DIR


def _entry(name: str) -> ZooEntry:
    title, description = _CATALOGUE[name]
    return ZooEntry(name, title, description, models_dir() / name)


def _is_shipped(folder: Path) -> bool:
    return (folder / WEIGHTS_NAME).is_file() and (folder / CONFIG_NAME).is_file()


def available_models() -> list[ZooEntry]:
    """The models whose weights are in this installation, in catalogue order."""
    entries = [_entry(name) for name in _CATALOGUE]
    return [e for e in entries if _is_shipped(e.folder)]


def shipped_entry(name: str) -> ZooEntry:
    """The shipped entry called ``name``, or a ``ValueError`` that says what exists.

    :func:`napari_unetpp.locate.locate` resolves ``zoo:NAME`` through it.
    """
    shipped = {e.name: e for e in available_models()}
    if name in shipped:
        return shipped[name]
    names = sorted(shipped) or "none"
    if name in _CATALOGUE:
        raise ValueError(
            f"zoo model {name!r} is not shipped in this installation (available: {names}); "
            f"train it with `python scripts/train_zoo.py {name}`"
        )
    raise ValueError(f"unknown zoo model {name!r}; available: {names}")


def load_pretrained(name: str, device: str = "cpu") -> tuple[Any, Any]:
    """Load a shipped model (float32, eval mode) and its :class:`CheckpointInfo`; no network.

    Returns ``(UNetPlusPlus, CheckpointInfo)``; torch is imported only here, so
    listing the zoo stays instant.
    """
    from .checkpoint import load_checkpoint

    return load_checkpoint(shipped_entry(name).folder, device=device)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(rows: dict[str, dict[str, Any]], columns: list[str]) -> list[str]:
    lines = ["| depth | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for depth in sorted(rows, key=lambda d: int(d)):
        row = rows[depth]
        lines.append(f"| L{depth} | " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return lines


def scale_line(model: Any) -> str:
    """The training scale a card states (``ModelConfig.pixel_size`` / ``object_diameter``)."""
    parts = []
    if getattr(model, "pixel_size", ()):
        size = " x ".join(f"{s:g}" for s in model.pixel_size)
        parts.append(
            f"trained at {size} {model.pixel_unit} pixels (give your pixel size: "
            "`--pixel-size`, the layer's scale, or `PredictConfig.pixel_size`)"
        )
    if getattr(model, "object_diameter", None):
        parts.append(
            f"training median object diameter {model.object_diameter:g} px "
            "(`--diameter D|auto`, `PredictConfig.rescale='auto'`)"
        )
    return "; ".join(parts)


def card_markdown(info: Any, title: str = "") -> str:
    """Markdown model card from a checkpoint's ``card`` and ``metrics`` (used for docs/models.md).

    Text fields of ``info.card`` appear as sections in a fixed order; the per-depth
    table of held-back scores, parameters and CPU time follows, then the baseline.
    """
    card: dict[str, Any] = dict(info.card or {})
    metrics: dict[str, Any] = dict(info.metrics or {})
    lines = [f"## {title or card.get('title', 'UNet++ model')}", ""]
    if card.get("summary"):
        lines += [str(card["summary"]), ""]
    model = info.model
    lines += [
        f"- **Architecture**: UNet++ {model.spatial_dims}D, widths {list(model.widths)}, "
        f"depth {model.depth}, {model.in_channels} input channel(s), "
        f"{model.num_classes} output channel(s)"
        + (f" ({', '.join(model.class_names)})" if model.class_names else ""),
    ]
    scale = scale_line(model)
    if scale:
        lines.append(f"- **Scale**: {scale}")
    for key, label in (
        ("input", "Input"),
        ("data", "Training data"),
        ("split", "Held-back split"),
        ("training", "Training"),
        ("postprocess", "Post-processing"),
        ("hardware", "Hardware"),
        ("time", "Time taken"),
        ("timing", "CPU timing"),
        ("licence", "Licence"),
        ("citation", "Citation"),
    ):
        if card.get(key):
            lines.append(f"- **{label}**: {card[key]}")
    lines.append("")
    rows = metrics.get("depths") or {}
    if rows:
        score = metrics.get("score_name", "iou")
        columns = list(card.get("columns") or [c for c in ("iou", "dice") if c != score])
        columns = [score] + [c for c in columns if c != score] + ["parameters", "ms_per_mpx"]
        # a model trained in napari is scored on its own labels' validation part, if any
        kind = "Held-back" if card.get("split") else "Validation"
        timing = "; ms_per_mpx measured on CPU, see CPU timing" if card.get("timing") else ""
        lines += [
            f"{kind} scores per depth (recommended: L{metrics.get('best_depth', '?')}{timing}):",
            "",
        ]
        lines += _table(rows, columns) + [""]
    baseline = metrics.get("baseline")
    if baseline:
        lines.append(
            "Baseline ("
            + str(baseline.get("method", "random forest"))
            + "): "
            + ", ".join(
                f"{k} {_fmt(v)}"
                for k, v in baseline.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            )
        )
        lines.append("")
    for key, label in (
        ("shift", "Under shift"),
        ("target", "Target"),
        ("verdict", "Target met"),
        ("to_reach_target", "What would reach it"),
        ("limitations", "Limitations"),
    ):
        if card.get(key):
            lines.append(f"- **{label}**: {card[key]}")
    return "\n".join(lines).rstrip() + "\n"


def model_card(name: str) -> str:
    """The model card of a shipped model as markdown (reads ``config.json`` only)."""
    from .checkpoint import read_info

    entry = shipped_entry(name)
    return card_markdown(read_info(entry.folder), entry.title)
