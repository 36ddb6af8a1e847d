"""A fine-tune on correct dense organ masks must not hurt the slices nobody painted.

Why: the Train dock's ``ct-dense`` scenario (``bench_dock_finetune.py``) fine-tuned the
shipped CT model on dense masks of its five organs on slices 90-105 of the scan, in the
model's own values, with the dock's defaults, and unseen slices 70-85 got worse (L4 liver
Dice 0.912 -> 0.801). This runs the same fine-tune headless, through the engine with the
settings ``train --from`` and the dock share (``cli.train.fine_tune_defaults``), and
scores organ Dice at every depth on slices 70-85 and on the painted slab.

Arms: ``slab`` (the image is the slab, as in the dock scenario) and ``stack`` (the image
is slices 60-111, the masks on 90-105 only, every other slice unpainted). ``--preserve W``
sets ``TrainConfig.preserve_weight`` (default: the engine's).

Run (CPU, 1 torch thread; 6-25 min per arm on 2 busy shared cores)::

    NAPARI_UNETPP_DATA=/work/shared/data OMP_NUM_THREADS=1 PYTHONPATH=src \\
        python benchmarks/bench_finetune_dense.py slab --out /tmp/dense_slab
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from bench_dock_finetune import MODEL_VALUES, _scores

from napari_unetpp.config import DataConfig, TrainConfig
from napari_unetpp.datasets import shared_data_dir
from napari_unetpp.events import drive
from napari_unetpp.files import load_model
from napari_unetpp.training import Trainer


def _defaults() -> dict:
    """The fine-tune's settings shared by the dock and ``train --from``."""
    try:
        from napari_unetpp.cli.train import fine_tune_defaults
    except ImportError:  # code before they were shared: the dock's values
        return {"iterations": 200, "batch_size": 4, "learning_rate": 1e-4, "patch_size": (128, 128)}
    return fine_tune_defaults(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arm", choices=["slab", "stack", "start"])
    parser.add_argument("--preserve", type=float, default=None)
    parser.add_argument("--out", type=Path, default=Path("dense_run"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = shared_data_dir()
    if data is None:
        raise SystemExit("set NAPARI_UNETPP_DATA to the shared data folder")
    scan = tifffile.imread(data / "ct_totalseg" / "ct_full.tif")
    ids = tifffile.imread(data / "ct_totalseg" / "organs_full.tif")
    organs = np.zeros(ids.shape, np.uint8)
    for tool, value in MODEL_VALUES.items():
        organs[ids == tool] = value
    unseen, slab = (scan[70:86], organs[70:86]), (scan[90:106], organs[90:106])
    if args.arm == "start":
        print("start unseen", _scores("zoo:ct", *unseen, 5), flush=True)
        print("start slab  ", _scores("zoo:ct", *slab, 5), flush=True)
        return
    if args.arm == "slab":
        image, labels = scan[90:106].copy(), organs[90:106].copy()
    else:
        image, labels = scan[60:112].copy(), np.zeros((52, *organs.shape[1:]), np.uint8)
        labels[30:46] = organs[90:106]
    _, info = load_model("zoo:ct")
    train = TrainConfig(**_defaults(), preserve_weight=args.preserve)
    dense = DataConfig(normalization=info.data.normalization, label_mode="dense")
    shutil.rmtree(args.out, ignore_errors=True)
    began = time.time()
    trainer = Trainer(info.model, train, dense, initial="zoo:ct", output_dir=args.out)
    result = drive(trainer.run(image, labels))
    provenance = result.info.provenance
    print(
        f"{args.arm}: {time.time() - began:.0f} s, best step {provenance['best_step']}, "
        f"preserve {args.preserve}, recommended L{result.info.metrics['best_depth']}",
        flush=True,
    )
    print("after unseen", _scores(str(args.out / "best"), *unseen, 5), flush=True)
    print("after slab  ", _scores(str(args.out / "best"), *slab, 5), flush=True)


if __name__ == "__main__":
    main()
