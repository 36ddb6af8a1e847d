"""Average the weights of two (or more) checkpoints of one zoo model: a "model soup".

Why: the shipped nuclei model was continued from the one before it with transfer
augmentation (random scale, gamma, blur); the continuation transfers better to shifted
images but lost some accuracy on native DSB images. Both start from the same weights and
keep the same normalisation statistics (``--keep-norm``), so they lie in one basin, and
their uniform average keeps most of each (Wortsman et al. 2022, "Model soups", ICML).

The soup goes to ``RUNS/NAME/best`` with a ``zoo_state.json`` that says what it was made
of; ``train_zoo.py NAME --ship-only --runs-dir RUNS`` then scores it on the held-back
split and ships it with its card, like any trained run::

    python scripts/zoo_soup.py nuclei --of OLD_MODEL NEW_MODEL --runs-dir runs/soup
    python scripts/train_zoo.py nuclei --ship-only --runs-dir runs/soup
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo_ship import write_state  # noqa: E402

from napari_unetpp.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402


def soup(paths: list[str], weights: list[float]) -> tuple[torch.nn.Module, object]:
    """The weighted average of the checkpoints' floating-point tensors (the last one's info).

    Integer buffers (BatchNorm's step counters) are taken from the last checkpoint.
    """
    if len(paths) != len(weights) or len(paths) < 2:
        raise SystemExit("give at least two checkpoints and one weight per checkpoint")
    loaded = [load_checkpoint(p, device="cpu") for p in paths]
    model, info = loaded[-1]
    fields = ("in_channels", "num_classes", "widths", "depth", "spatial_dims", "norm")
    configs = {tuple(getattr(m.config, f) for f in fields) for m, _ in loaded}
    if len(configs) > 1:  # metadata (pixel size, object size) may differ: the last one's kept
        raise SystemExit(f"the checkpoints have different architectures: {configs}")
    states = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m, _ in loaded]
    model.load_state_dict(mix_states(states, weights))
    return model, info


def mix_states(
    states: list[dict[str, torch.Tensor]], weights: list[float]
) -> dict[str, torch.Tensor]:
    """The weighted average of state dicts' floating-point tensors (weights normalised);
    integer buffers (BatchNorm's step counters) from the last state."""
    total = float(sum(weights))
    mixed = {}
    for key, last in states[-1].items():
        if not last.is_floating_point():
            mixed[key] = last
            continue
        acc = sum(w / total * s[key].float() for w, s in zip(weights, states, strict=True))
        mixed[key] = acc.to(last.dtype)
    return mixed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="zoo model name (nuclei, em, ct)")
    parser.add_argument("--of", nargs="+", required=True, help="checkpoint folders to average")
    parser.add_argument("--weights", nargs="+", type=float, default=None, help="default: equal")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/soup"))
    parser.add_argument(
        "--baseline-from", type=Path, default=None, help="a run folder whose baseline.json to reuse"
    )
    args = parser.parse_args(argv)
    weights = args.weights or [1.0] * len(args.of)
    model, info = soup(args.of, weights)
    run = args.runs_dir / args.name
    save_checkpoint(run / "best", model, info)  # type: ignore[arg-type]
    cards = [load_checkpoint(p, device="cpu")[1].card for p in args.of]
    write_state(
        args.runs_dir,
        args.name,
        {
            "name": args.name,
            "soup": {
                "of": [str(p) for p in args.of],
                "weights": weights,
                "trainings": [c.get("training", "") for c in cards],
            },
            "widths": list(model.config.widths),  # type: ignore[attr-defined]
            "device": "cpu",
            "seconds": 0.0,
        },
    )
    if args.baseline_from is not None and (args.baseline_from / "baseline.json").exists():
        shutil.copy(args.baseline_from / "baseline.json", run / "baseline.json")
    mix = " + ".join(f"{w:g} x {p}" for w, p in zip(weights, args.of, strict=True))
    print(f"wrote {run / 'best'}: {mix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
