"""What makes a run resumable: optimizer, RNG and progress beside ``output_dir/last``.

Safetensors + JSON, never pickle: the optimizer's tensors go to
``optimizer.safetensors``, everything else (step, numpy RNG, best so far,
optimizer scalars) to ``trainer_state.json``. Both are written atomically, so a
killed run leaves either the old or the new state, never half of one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

__all__ = [
    "OPTIMIZER_FILE",
    "STATE_FILE",
    "load_resume_state",
    "optimizer_from_files",
    "save_resume_state",
    "started_from",
]

#: Files beside ``output_dir/last`` that make a run resumable (safetensors + JSON, no pickle).
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state as flat tensors (safetensors) plus JSON for everything else."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict[str, Any]:
    """The optimizer state dict back from :func:`optimizer_to_files`' two parts."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_resume_state(
    folder: Path,
    optimizer: torch.optim.Optimizer,
    step: int,
    rng: np.random.Generator,
    best: dict[str, Any],
    rank_rngs: list[dict[str, Any]] | None = None,
) -> None:
    """Optimizer, RNG and progress beside the ``last`` checkpoint (no pickle anywhere).

    ``rank_rngs``: under DDP, every rank's numpy RNG state (``ddp.gather_json``), so that
    each rank resumes its own patch stream (:func:`rank_rng_state`)."""
    tensors, meta = optimizer_to_files(optimizer)
    tensors["__torch_rng__"] = torch.get_rng_state()
    _write_atomic(folder / OPTIMIZER_FILE, lambda p: save_file(tensors, str(p)))
    state = {"step": step, "numpy_rng": rng.bit_generator.state, "best": best, "optimizer": meta}
    if rank_rngs is not None:
        state["numpy_rng_ranks"] = rank_rngs
    _write_atomic(folder / STATE_FILE, lambda p: p.write_text(json.dumps(state)))


def load_resume_state(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON state and the tensors written by :func:`save_resume_state`."""
    state_file, tensor_file = folder / STATE_FILE, folder / OPTIMIZER_FILE
    if not state_file.is_file() or not tensor_file.is_file():
        raise ValueError(
            f"cannot resume: {folder} has no {STATE_FILE}/{OPTIMIZER_FILE}; train without "
            "resume, or point resume at an output_dir/last folder of an earlier run"
        )
    return json.loads(state_file.read_text()), load_file(str(tensor_file))


def rank_rng_state(state: dict[str, Any], rank: int) -> dict[str, Any] | None:
    """The numpy RNG state rank ``rank`` continues with; None: keep its fresh stream.

    Rank 0, or any rank of a run that saved every rank's (``numpy_rng_ranks``), gets its
    own; another rank of a run saved by fewer processes keeps its own seed's stream, so
    no two ranks ever draw the same patches."""
    ranks = state.get("numpy_rng_ranks") or []
    if rank < len(ranks):
        return ranks[rank]
    return state["numpy_rng"] if rank == 0 else None


def started_from(resume_from: Path, fallback: str) -> str:
    """Where the resumed run first started (its provenance), so a resume keeps the origin."""
    try:
        info_file = resume_from / "config.json"
        provenance = json.loads(info_file.read_text()).get("provenance", {})
        return str(provenance.get("started_from", fallback))
    except (OSError, ValueError):
        return fallback
