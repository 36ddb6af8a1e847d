"""``napari-unetpp export``: a pruned checkpoint, a bioimage.io package, ONNX or TorchScript."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..files import UserError
from .common import _out

#: ``export.FORMATS``, spelled here so that ``--help`` does not import torch (a test compares).
EXPORT_FORMATS = ("folder", "zip", "bioimageio", "onnx", "torchscript")
#: ``export.PICKLE_FORMATS``, likewise: refused with the reason, not as "invalid choice".
PICKLE_FORMATS = ("pytorch", "pytorch_state_dict", "pt", "pth", "pickle")


def export_format(text: str) -> str:
    """``--format``: a pickle format is refused saying why (the user guide promises it)."""
    if text.lower() in PICKLE_FORMATS:
        raise argparse.ArgumentTypeError(
            f"{text!r} would write a pickle (unsafe to load); TorchScript and ONNX load in "
            "PyTorch and everywhere else without pickle: use --format torchscript or onnx"
        )
    return text


def cmd_export(args: argparse.Namespace) -> int:
    """Write the model in the chosen format, one depth or all heads (``export.export_model``)."""
    from ..export import export_model

    try:
        path = export_model(
            args.checkpoint,
            args.out,
            args.format,
            depth=args.depth,
            all_heads=args.all_heads,
            half=args.half,
            license=args.license,
        )
    except ImportError as exc:  # onnx / onnxscript not installed
        raise UserError(f"{exc}; install them with: pip install 'napari-unetpp[export]'") from None
    except ValueError as exc:
        raise UserError(str(exc)) from None
    heads = "all heads" if args.all_heads else f"L{args.depth}" if args.depth else "best depth"
    _out(f"exported {args.format} ({heads}) -> {path}")
    if args.zip and args.format == "folder":
        from ..checkpoint import export_zip

        _out(f"zip: {export_zip(path, Path(str(path) + '.zip'))}")
    return 0
