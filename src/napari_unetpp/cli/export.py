"""``napari-unetpp export``: save the pruned network of one depth as its own checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..files import UserError, load_model
from .common import _out
from .tables import _human_count


def cmd_export(args: argparse.Namespace) -> int:
    """Save the pruned network of one depth as its own, smaller checkpoint."""
    import dataclasses

    from ..checkpoint import save_checkpoint

    model, info = load_model(args.checkpoint, device="cpu")
    if args.depth not in model.head_depths:
        raise UserError(f"no head at depth {args.depth}; this model has {list(model.head_depths)}")
    pruned = model.prune(args.depth)
    metrics = dict(info.metrics or {})
    row = (metrics.get("depths") or {}).get(str(args.depth))
    metrics["depths"] = {str(args.depth): row} if row else {}
    metrics["best_depth"] = args.depth
    provenance = {
        **(info.provenance or {}),
        "pruned_from": str(args.checkpoint),
        "pruned_depth": args.depth,
        "original_depth": model.depth,
    }
    new_info = dataclasses.replace(
        info, model=pruned.config, metrics=metrics, provenance=provenance
    )
    out = Path(args.out)
    path = Path(save_checkpoint(out, pruned, new_info, half=args.half))
    _out(
        f"exported L{args.depth}: {_human_count(pruned.num_parameters())} parameters "
        f"(of {_human_count(model.num_parameters())}) -> {path}"
    )
    if args.zip:
        from ..checkpoint import export_zip

        _out(f"zip: {export_zip(path, Path(str(path) + '.zip'))}")
    return 0
