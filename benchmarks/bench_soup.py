"""Weight of a two-model soup, scored on the nuclei *validation* images (never the test split).

The validation images are the trainer's own: the seed-0 10 % of the training ids that
``split_validation`` holds out. ``alpha`` is the weight of the second model. Run::

    python benchmarks/bench_soup.py OLD_MODEL NEW_MODEL --alphas 0 0.5 0.75 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import zoo_specs  # noqa: E402
from zoo_data import load_nucleus, nuclei_split  # noqa: E402
from zoo_soup import mix_states  # noqa: E402

from napari_unetpp.checkpoint import load_checkpoint  # noqa: E402
from napari_unetpp.config import PredictConfig  # noqa: E402
from napari_unetpp.inference import predict_array  # noqa: E402
from napari_unetpp.patches import split_validation  # noqa: E402
from napari_unetpp.postprocess import probabilities_to_labels  # noqa: E402


def validation_ids(fraction: float = 0.1, seed: int = 0) -> list[str]:
    """The ids the trainer holds out of the nuclei training ids (its own split function,
    given the ids in the order it is given the images)."""
    train_ids, _ = nuclei_split()
    return split_validation(train_ids, fraction, np.random.default_rng(seed))[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.0, 0.5, 1.0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    pairs = [load_nucleus(i) for i in validation_ids()]
    first, _ = load_checkpoint(args.first, device="cpu")
    model, info = load_checkpoint(args.second, device="cpu")
    a = {k: v.detach().clone() for k, v in first.state_dict().items()}
    b = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for alpha in args.alphas:
        model.load_state_dict(mix_states([a, b], [1 - alpha, alpha]))
        scores = {}
        for depth in (3, 4):
            config = PredictConfig(device="cpu", pruned_depth=depth)
            labels = [
                np.asarray(
                    probabilities_to_labels(
                        predict_array(model, image, config, info.data)[depth], info.model, info.data
                    )
                )
                for image, _ in pairs
            ]
            scores[f"L{depth}"] = zoo_specs._nuclei_score(labels, pairs)
        print(json.dumps({"alpha": alpha, **scores}), flush=True)


if __name__ == "__main__":
    main()
