"""``napari-unetpp train`` under torchrun: one model trained by two processes (DDP, gloo, CPU).

The slow test launches the real command the user guide shows, on a real EM crop, and checks
what a user would: it exits cleanly, rank 0 alone reports and writes one checkpoint, the
checkpoint says it was trained by two processes, and the model loads and segments.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unetpp.checkpoint import load_checkpoint
from napari_unetpp.config import PredictConfig
from napari_unetpp.ddp import join_torchrun, process_rank
from napari_unetpp.events import drive
from napari_unetpp.inference import predict

CROP = (slice(192, 320), slice(192, 320))  # 128 x 128, membranes and cells in it
TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def test_join_torchrun_does_nothing_outside_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    leave = join_torchrun("cpu")
    assert not torch.distributed.is_initialized()
    assert process_rank() == 0
    leave()  # harmless

    # a world of one, or a half-set environment, is not torchrun either
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    join_torchrun("cpu")()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR")
    join_torchrun("cpu")()
    assert not torch.distributed.is_initialized()


@pytest.mark.slow
def test_cli_train_under_torchrun_two_processes(em_stack, tmp_path: Path) -> None:
    image, membranes = em_stack
    tifffile.imwrite(tmp_path / "image.tif", image[0][CROP])
    tifffile.imwrite(tmp_path / "labels.tif", membranes[0][CROP])
    tifffile.imwrite(tmp_path / "val_image.tif", image[15][CROP])
    tifffile.imwrite(tmp_path / "val_labels.tif", membranes[15][CROP])
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        "-m",
        "napari_unetpp.cli",
        "train",
        "--images",
        "image.tif",
        "--labels",
        "labels.tif",
        "--val-images",
        "val_image.tif",
        "--val-labels",
        "val_labels.tif",
        "--out",
        "run",
        "--widths",
        "4",
        "8",
        "16",
        "--depth",
        "2",
        "--iterations",
        "40",
        "--patch-size",
        "32",
        "32",
        "--batch-size",
        "2",
        "--validate-every",
        "20",
        "--device",
        "cpu",
        "--seed",
        "1",
        "--label-mode",
        "dense",
        "-q",
    ]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("checkpoint:") == 1, done.stdout  # rank 0 alone reports
    assert done.stderr.count("training on 1 image(s)") == 1, done.stderr

    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["best", "last", "run.json"]
    assert not list(run.glob("*.tmp*")) and not list(run.glob(".*"))  # no half-written saves
    config = json.loads((run / "best" / "config.json").read_text())
    assert config["provenance"]["world_size"] == 2
    assert config["provenance"]["iterations"] == 40

    model, info = load_checkpoint(run / "best")
    val = image[15][CROP]
    probs = drive(predict(model, val, PredictConfig(device="cpu", tile_size=(64, 64)), info.data))
    prob = np.asarray(probs[max(probs)])
    assert prob.shape == val.shape and np.all((prob >= 0) & (prob <= 1))
    truth = membranes[15][CROP] > 0
    # it learned something: membranes look more like membranes than the cells do
    assert prob[truth].mean() > prob[~truth].mean()
