"""The argument parser of ``napari-unetpp`` and its argument types."""

from __future__ import annotations

import argparse

from .. import __version__
from .common import PROG
from .demo import cmd_demo
from .export import EXPORT_FORMATS, cmd_export, export_format
from .info import cmd_info
from .predict import cmd_predict
from .train import cmd_train


def _depth_arg(text: str) -> int | str:
    """``--depth``: a head depth (int) or ``auto`` (adaptive depth per tile)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a depth (1, 2, ...) or 'auto', got {text!r}"
        ) from None


def _pixel_size_arg(text: str) -> float:
    """One ``--pixel-size`` value: a finite size > 0 (0 divided by zero, -1 was recorded)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"a pixel size must be a number > 0, got {text!r}")
    return value


class _PixelSizes(argparse.Action):
    """At most three values (Z Y X): a fourth was dropped without a word."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option: str | None = None) -> None:  # fmt: skip
        sizes = list(values)  # type: ignore[call-overload]
        if len(sizes) > 3:
            parser.error(
                f"{option}: {len(sizes)} values; give one, or one per spatial axis (Y X or Z Y X)"
            )
        setattr(namespace, self.dest, sizes)


def _add_pixel_size(p: argparse.ArgumentParser, help_text: str) -> None:
    """``--pixel-size`` and ``--pixel-unit``, the same for train, predict and info --on."""
    p.add_argument(
        "--pixel-size",
        nargs="+",
        type=_pixel_size_arg,
        action=_PixelSizes,
        metavar="S",
        help=help_text,
    )
    p.add_argument(
        "--pixel-unit",
        choices=["nm", "um", "mm"],
        default=None,
        help="unit of --pixel-size when it is not the model's",
    )


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        choices=["auto", "cuda", "mps", "cpu"],
        default=None,
        help="compute device (default: auto = cuda, else mps, else cpu)",
    )
    _add_quiet(p)


def _add_quiet(p: argparse.ArgumentParser) -> None:
    """``-q/--quiet`` on every subcommand, so a script can pass it to each of them."""
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (public so docs and tests can inspect it)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="UNet++ segmentation: train, predict, info, export (pruned, ONNX...), demo.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("train", help="train or fine-tune a UNet++ on image/label files")
    t.add_argument(
        "--images",
        nargs="+",
        metavar="PATH",
        help="image files or folders (tif, tiff, png, npy, zarr); required "
        "unless --resume finds them in --out/run.json",
    )
    t.add_argument(
        "--labels",
        nargs="+",
        metavar="PATH",
        help="label files or folders, paired with images by name or sorted order",
    )
    t.add_argument("--val-images", nargs="+", metavar="PATH")
    t.add_argument("--val-labels", nargs="+", metavar="PATH")
    _add_pixel_size(
        t,
        "the images' pixel size (one value, or one per spatial axis; default: each file's "
        "own, when it has one): a fine-tune resamples them to the model's pixel size, a new "
        "model records it",
    )
    t.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="run folder: best/ (the checkpoint), last/ (to resume), run.json",
    )
    t.add_argument("--config", metavar="RUN_JSON", help="run.json (flags override it)")
    t.add_argument(
        "--from",
        dest="from_",
        metavar="CHECKPOINT|zoo:NAME",
        help="fine-tune from a checkpoint or a shipped model",
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out with its recorded settings "
        "and files (--out/run.json, --out/last)",
    )
    t.add_argument("--widths", nargs="+", type=int, metavar="W")
    t.add_argument("--depth", type=int)
    t.add_argument("--spatial-dims", type=int, choices=[2, 3])
    t.add_argument("--iterations", type=int)
    t.add_argument("--patch-size", nargs="+", type=int, metavar="P")
    t.add_argument("--batch-size", type=int)
    t.add_argument(
        "--lr", type=float, help="learning rate (default 1e-3; 1e-4 when fine-tuning with --from)"
    )
    t.add_argument(
        "--freeze-norm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep BatchNorm statistics fixed (default: on with --from, where a few "
        "labels must not re-estimate them; turn off to adapt to another "
        "modality)",
    )
    t.add_argument(
        "--preserve",
        type=float,
        default=None,
        metavar="W",
        help="weight of keeping the starting model's predictions on unlabelled pixels, "
        "on every pixel with dense labels (default with --from and the model's classes: "
        "1, or finetune.DENSE_PRESERVE_WEIGHT with dense labels; else 0; 0 = off)",
    )
    t.add_argument(
        "--train-anyway",
        action="store_true",
        help="fine-tune even when the labels look harmful to the starting model (values "
        "not its own, strokes wider than its objects, dense labels that unteach a class); "
        "without it such a run stops before its first step and says why",
    )
    t.add_argument("--validate-every", type=int)
    t.add_argument(
        "--label-mode",
        choices=["dense", "sparse", "auto"],
        default=None,
        help="dense masks or sparse scribbles (0 = unlabelled); default: as --config says, "
        "else guessed from the first labels, as the Train dock does (auto)",
    )
    t.add_argument("--target", choices=["semantic", "instance"])
    t.add_argument(
        "--channel-axis",
        metavar="AXIS|none",
        help="axis of the image holding channels (default: none)",
    )
    t.add_argument("--normalization", choices=["percentile", "window", "none"])
    t.add_argument("--norm-low", type=float)
    t.add_argument("--norm-high", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved run.json and exit without training",
    )
    _add_common(t)
    t.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="segment images with a checkpoint or shipped model")
    p.add_argument("checkpoint", metavar="CHECKPOINT|zoo:NAME")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--config", metavar="RUN_JSON")
    p.add_argument(
        "--depth",
        type=_depth_arg,
        metavar="D|auto",
        help="run only the pruned network of this depth (fast); 'auto': per tile, "
        "shallow heads first, deeper only where they disagree",
    )
    p.add_argument(
        "--depth-tolerance",
        type=float,
        metavar="F",
        help="--depth auto: stop a tile when fewer than this fraction of its "
        "pixels change label between consecutive depths (0 = deepest, exact)",
    )
    p.add_argument(
        "--disagreement",
        action="store_true",
        help="also write the depth-disagreement map (and depth used for --depth "
        "auto) and <name>_regions.json, the regions to label next",
    )
    p.add_argument("--depths", nargs="+", type=int, help="heads to compute in one pass")
    p.add_argument("--tile", nargs="+", type=int, metavar="T")
    p.add_argument("--overlap", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--tta", action="store_true", help="test-time augmentation (flips)")
    p.add_argument(
        "--full-precision",
        action="store_true",
        help="float32 throughout (by default a GPU, and a CPU with bfloat16 instructions "
        "for 2D models, run the network in bfloat16: 2-3x faster on such a CPU, scores "
        "within 0.004)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="run the network in int8 on the CPU (2D models with BatchNorm; calibrated on "
        "each image's first tiles): 2.1-2.6x faster than float32 on a CPU without "
        "bfloat16, EM membrane IoU unchanged",
    )
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip the check of each result against the training data (it adds one "
        "pass at half size, about a quarter more time; see `info --on`)",
    )
    p.add_argument(
        "--format",
        choices=["tif", "zarr"],
        default=None,
        help="output format (default: zarr for zarr inputs, else tif)",
    )
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="also write <name>_L{d} probabilities per depth",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing files in --out that napari-unetpp did not write "
        "(by default such files, e.g. your own *_labels.tif, are kept)",
    )
    p.add_argument("--threshold", type=float)
    p.add_argument("--min-size", type=int)
    p.add_argument("--channel-axis", metavar="AXIS|none")
    _add_pixel_size(
        p,
        "the images' pixel size (one value, or one per spatial axis, e.g. Z Y X) in the "
        "model's unit (see `info`; default: each file's own); resampled to the model's",
    )
    p.add_argument(
        "--rescale",
        metavar="F|auto",
        help="zoom the images by F before predicting (0.5: objects twice the "
        "training size), or auto: measure the objects in a first pass",
    )
    p.add_argument(
        "--diameter",
        metavar="D|auto",
        help="typical object diameter in pixels (rescale = model's diameter / D), or "
        "auto; needs a model that records its object diameter (zoo:nuclei)",
    )
    p.add_argument(
        "--distributed",
        nargs="?",
        const="local",
        metavar="SCHEDULER|local",
        help="map slices over a dask.distributed cluster (default: a LocalCluster)",
    )
    _add_common(p)
    p.set_defaults(func=cmd_predict)

    i = sub.add_parser("info", help="show a checkpoint's configs and per-depth table")
    i.add_argument("checkpoint", metavar="CHECKPOINT|zoo:NAME")
    i.add_argument("--json", action="store_true", help="everything as JSON")
    i.add_argument(
        "--on",
        nargs="+",
        metavar="IMAGE",
        help="check the model on these images (no labels): does the recommended "
        "depth hold there, and do they look like the training data?",
    )
    i.add_argument(
        "--tolerance",
        type=float,
        default=0.02,
        help="--on: largest fraction of pixels a depth may label differently "
        "from the deepest (default 0.02)",
    )
    _add_pixel_size(
        i,
        "--on: the images' pixel size (default: each file's own), as predict: the check "
        "runs at the model's scale",
    )
    i.add_argument(
        "--strict",
        action="store_true",
        help="--on: exit with status 1 when an image looks unlike the training data",
    )
    i.add_argument(
        "--time",
        action="store_true",
        help="measure ms/Mpx per depth on this CPU now (median of 5 runs after a "
        "warm-up; run it when the machine is idle)",
    )
    _add_common(i)
    i.set_defaults(func=cmd_info)

    e = sub.add_parser(
        "export", help="share a model: pruned checkpoint, bioimage.io package, ONNX, TorchScript"
    )
    e.add_argument("checkpoint", metavar="CHECKPOINT|zoo:NAME")
    e.add_argument("--out", required=True, metavar="PATH")
    e.add_argument(
        "--format",
        type=export_format,
        choices=EXPORT_FORMATS,
        default="folder",
        help="folder/zip: our checkpoint (safetensors + JSON); bioimageio: a bioimage.io model "
        "package (TorchScript + ONNX weights, test tensors, cover); onnx; torchscript",
    )
    heads = e.add_mutually_exclusive_group()
    heads.add_argument("--depth", type=int, help="one depth (default: the recommended one)")
    heads.add_argument(
        "--all-heads", action="store_true", help="every depth, stacked as output channels"
    )
    e.add_argument("--half", action="store_true", help="store weights as float16 (folder/zip)")
    e.add_argument("--zip", action="store_true", help="also write PATH.zip (folder format)")
    e.add_argument(
        "--license", help="SPDX id of the weights for bioimage.io (default: read from the card)"
    )
    _add_quiet(e)  # export shows no progress bar: accepted like on the other subcommands
    e.set_defaults(func=cmd_export)

    d = sub.add_parser("demo", help="segment a bundled sample with a shipped model")
    d.add_argument("--model", choices=["nuclei", "em", "ct"], default="nuclei")
    d.add_argument("--out", default="unetpp-demo", metavar="DIR")
    d.add_argument("--no-viewer", action="store_true", help="do not open napari")
    _add_common(d)
    d.set_defaults(func=cmd_demo)
    return parser
