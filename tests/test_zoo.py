"""Model zoo: listing, loading, cards; shipped models segment their sample crops well enough;
the random-forest baseline of scripts/train_zoo.py beats chance on real data."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from napari_unetpp import metrics, zoo
from napari_unetpp._sample_data import load_sample
from napari_unetpp.checkpoint import CheckpointInfo, save_checkpoint
from napari_unetpp.config import DataConfig
from napari_unetpp.model import UNetPlusPlus

ROOT = Path(__file__).resolve().parents[1]

#: Score of each shipped model on its sample crop (scored as in ``_score``, at the model's
#: recommended depth), set from what the shipped model achieved minus a margin of ~0.05
#: (measured for the widths 16..256 models trained on an H200: em membrane IoU 0.672 at L3,
#: nuclei AP@0.5 0.650 at L4, ct mean organ Dice 0.678 at L4). Each floor is well above the
#: trivial prediction (``_trivial``). Retraining a model means re-measuring its floor.
FLOORS: dict[str, float] = {
    "em": 0.62,
    "nuclei": 0.60,
    "ct": 0.63,
}


def _trivial(name: str) -> float:
    """Best trivial score on the sample: everything membrane (EM); no object / organ (0)."""
    if name != "em":
        return 0.0
    _, truth, _ = load_sample("em")
    return metrics.iou(np.ones(truth.shape, bool), truth > 0)


def _load_script(name: str) -> ModuleType:
    path = ROOT / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_script_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _tiny_checkpoint(folder: Path, **card: str) -> Path:
    net = UNetPlusPlus(widths=(4, 8, 16), depth=2, num_classes=1)
    info = CheckpointInfo(
        model=net.config.replace(class_names=("membrane",)),
        data=DataConfig(class_values=(1,)),
        metrics={
            "depths": {
                "1": {"iou": 0.5, "dice": 0.6, "parameters": 10, "ms_per_mpx": 1.0},
                "2": {"iou": 0.7, "dice": 0.8, "parameters": 20, "ms_per_mpx": 2.0},
            },
            "score_name": "iou",
            "best_depth": 2,
            "baseline": {"method": "random forest", "iou": 0.4},
        },
        card={"licence": "test licence", "citation": "test citation", **card},
    )
    return save_checkpoint(folder, net, info, half=True)


# --------------------------------------------------------------------------- listing


def test_zoo_lists_exactly_the_shipped_folders() -> None:
    shipped = (
        sorted(
            p.name
            for p in zoo.MODELS_DIR.glob("*")
            if (p / "weights.safetensors").is_file() and (p / "config.json").is_file()
        )
        if zoo.MODELS_DIR.is_dir()
        else []
    )
    listed = [e.name for e in zoo.available_models()]
    assert sorted(listed) == [n for n in shipped if n in zoo.known_models()]
    assert set(shipped) <= set(zoo.known_models()), "a model folder the zoo does not know"
    for entry in zoo.available_models():
        assert entry.folder == entry.path == zoo.MODELS_DIR / entry.name
        assert entry.title and entry.description


def test_zoo_override_folder_and_partial_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NAPARI_UNETPP_ZOO", str(tmp_path))
    assert zoo.available_models() == []
    _tiny_checkpoint(tmp_path / "em")
    (tmp_path / "nuclei").mkdir()  # a folder without weights is not a model
    (tmp_path / "nuclei" / "config.json").write_text("{}")
    assert [e.name for e in zoo.available_models()] == ["em"]


def test_unknown_and_unshipped_models_are_clear_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NAPARI_UNETPP_ZOO", str(tmp_path))
    with pytest.raises(ValueError, match="unknown zoo model 'cells'"):
        zoo.load_pretrained("cells")
    with pytest.raises(ValueError, match="not shipped.*train_zoo.py ct"):
        zoo.load_pretrained("ct")
    with pytest.raises(ValueError, match="not shipped"):
        zoo.model_card("ct")


def test_load_pretrained_and_card_from_a_tiny_zoo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NAPARI_UNETPP_ZOO", str(tmp_path))
    _tiny_checkpoint(tmp_path / "em", verdict="yes: iou 0.7", hardware="test CPU")
    model, info = zoo.load_pretrained("em")
    assert isinstance(model, UNetPlusPlus) and not model.training
    assert next(model.parameters()).dtype.is_floating_point
    assert info.model.class_names == ("membrane",)
    card = zoo.model_card("em")
    assert card.startswith("## EM membranes")
    assert "| L2 | 0.700 |" in card and "test licence" in card and "test CPU" in card
    assert "random forest" in card and "Target met" in card


def test_train_zoo_writes_docs_from_shipped_cards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = _load_script("train_zoo")
    monkeypatch.setenv("NAPARI_UNETPP_ZOO", str(tmp_path / "models"))
    _tiny_checkpoint(tmp_path / "models" / "em")
    script.write_docs(tmp_path / "models.md")
    text = (tmp_path / "models.md").read_text()
    assert "## EM membranes" in text and "Not shipped yet: nuclei, ct" in text


# --------------------------------------------------------------------------- shipped models


def _score(name: str, model: UNetPlusPlus, info: CheckpointInfo) -> float:
    """Segment the sample crop through the engine (tiled inference, postprocess) and score it."""
    from napari_unetpp import inference, postprocess
    from napari_unetpp.config import PredictConfig

    image, truth, meta = load_sample(name)
    if name == "ct":  # the volume is shipped whole; score only the held-back slices
        z0, z1 = meta["held_out_slices"]
        image, truth = image[z0:z1], truth[z0:z1]
    depth = int(info.metrics.get("best_depth") or model.config.depth)
    probs = inference.predict_array(
        model, image, PredictConfig(device="cpu", depths=(depth,)), info.data
    )
    labels = np.asarray(
        postprocess.probabilities_to_labels(np.asarray(probs[depth]), model.config, info.data)
    )
    if name == "nuclei":
        return metrics.average_precision(labels, truth, 0.5)
    if name == "em":
        return metrics.iou(labels > 0, truth > 0)
    organs = range(1, model.config.num_classes)
    return float(np.mean([metrics.dice(labels == k, truth == k) for k in organs]))


@pytest.mark.parametrize("entry", zoo.available_models(), ids=lambda e: e.name)
def test_shipped_model_files_config_and_card(entry: zoo.ZooEntry) -> None:
    config = json.loads((entry.folder / "config.json").read_text())
    assert (entry.folder / "weights.safetensors").stat().st_size < 10_000_000
    assert config["weights"]["dtype"].startswith("float16")
    model, info = zoo.load_pretrained(entry.name)
    image, _, meta = load_sample(entry.name)
    assert info.model.in_channels == 1 and info.model.spatial_dims == 2
    expected_classes = {"em": 1, "nuclei": 3, "ct": len(meta["class_names"])}[entry.name]
    assert info.model.num_classes == expected_classes
    if entry.name == "ct":
        assert tuple(info.model.class_names) == tuple(meta["class_names"])
        assert info.data.normalization.mode == "window"
    if entry.name == "nuclei":
        assert info.data.target == "instance"
    rows = info.metrics["depths"]
    assert sorted(int(d) for d in rows) == list(model.head_depths)
    for row in rows.values():
        assert row["parameters"] > 0 and row["ms_per_mpx"] > 0
        assert 0 <= row[info.metrics["score_name"]] <= 1
    assert info.metrics["baseline"]["method"].startswith("random forest")
    for key in (
        "data",
        "split",
        "licence",
        "citation",
        "hardware",
        "time",
        "training",
        "target",
        "verdict",
    ):
        assert info.card.get(key), f"card of {entry.name} lacks {key!r}"
    assert "## " in zoo.model_card(entry.name)


@pytest.mark.parametrize("entry", zoo.available_models(), ids=lambda e: e.name)
def test_shipped_model_segments_its_sample(entry: zoo.ZooEntry) -> None:
    assert entry.name in FLOORS, f"set a score floor for the new zoo model {entry.name!r}"
    assert FLOORS[entry.name] > _trivial(entry.name) + 0.1
    model, info = zoo.load_pretrained(entry.name, device="cpu")
    score = _score(entry.name, model, info)
    assert score >= FLOORS[entry.name], (
        f"zoo model {entry.name} scores {score:.3f} on its sample, below the floor "
        f"{FLOORS[entry.name]}"
    )


# --------------------------------------------------------------------------- baseline


def test_random_forest_baseline_beats_chance_on_real_em(em_stack) -> None:
    pytest.importorskip("sklearn")
    _load_script("train_zoo")  # puts scripts/ on the path for its sibling modules
    baseline = importlib.import_module("zoo_baseline")
    from napari_unetpp.config import NormalizationConfig

    image, membranes = em_stack
    train_image, train_truth = image[0, :192, :192], membranes[0, :192, :192].astype(np.int64)
    test_image, test_truth = image[15, 192:384, 192:384], membranes[15, 192:384, 192:384]
    norm = NormalizationConfig()
    forest = baseline.train_random_forest(
        [train_image], [train_truth], norm, pixels_per_image=2000, n_estimators=10
    )
    prob = baseline.rf_predict(forest, test_image, norm)
    assert prob.shape == (2, *test_image.shape)
    np.testing.assert_allclose(prob.sum(0), 1, atol=1e-5)
    pred = prob[1] > 0.5
    chance = metrics.iou(np.ones_like(pred), test_truth > 0)  # everything membrane
    score = metrics.iou(pred, test_truth > 0)
    assert score > chance + 0.15, (score, chance)
    accuracy = float((pred == (test_truth > 0)).mean())
    assert accuracy > max(test_truth.mean(), 1 - test_truth.mean()) + 0.05


# --------------------------------------------------------------------------- train -> ship


@pytest.mark.slow
def test_train_zoo_time_budget_then_ship_only(tmp_path: Path, monkeypatch, data_dir: Path) -> None:
    """The lent-GPU workflow on real EM data, CPU-sized: train fitted to a time budget without
    shipping, then score the run's best checkpoint on the held-back slices and ship it."""
    script = _load_script("train_zoo")
    monkeypatch.setattr(importlib.import_module("zoo_data"), "DATA", data_dir)
    runs, models, docs = tmp_path / "runs", tmp_path / "models", tmp_path / "models.md"
    monkeypatch.setenv("NAPARI_UNETPP_ZOO", str(models))
    tiny = [
        "--widths",
        "4",
        "8",
        "16",
        "32",
        "64",
        "--batch-size",
        "1",
        "--patch-size",
        "32",
        "32",
        "--validate-every",
        "10",
        "--runs-dir",
        str(runs),
        "--models-dir",
        str(models),
        "--docs",
        str(docs),
    ]
    assert script.main(["em", "--no-ship", "--time-budget", "0.05", *tiny]) == 0
    state = json.loads((runs / "em" / "zoo_state.json").read_text())
    assert state["iterations"] >= 10 and state["iterations"] % 10 == 0  # whole validations
    assert state["batch_size"] == 1 and state["patch_size"] == [32, 32]
    assert state["hardware"].startswith("CPU")
    assert (runs / "em" / "best" / "config.json").is_file()
    assert not (models / "em").exists()  # --no-ship ships nothing

    # the random forest takes minutes: give the run folder a cached baseline to compare with
    (runs / "em" / "baseline.json").write_text(
        json.dumps(
            {"method": "random forest (cached for this test)", "iou": 0.2, "interior_iou": 0.5}
        )
    )
    assert script.main(["em", "--ship-only", *tiny]) == 0
    model, info = zoo.load_pretrained("em", device="cpu")
    assert tuple(model.config.widths) == (4, 8, 16, 32, 64)
    rows = info.metrics["depths"]
    best = max(rows.values(), key=lambda row: row["iou"])
    assert info.card["target"].startswith("iou >= 0.70, interior_iou >= 0.90")
    met = best["iou"] >= 0.70 and best["interior_iou"] >= 0.90 and best["iou"] > 0.2
    assert info.card["verdict"].startswith("yes" if met else "no")
    assert f"iou {best['iou']:.3f}" in info.card["verdict"]
    assert f"--iterations {state['iterations']}" in info.card["training"]
    assert "## EM membranes" in docs.read_text()


# --------------------------------------------------------------------------- post-processing


def test_zoo_threshold_is_chosen_on_the_trainers_validation_images(monkeypatch) -> None:
    """``zoo_specs.nuclei_validation_ids`` names exactly the images the Trainer held out for
    model selection (so the threshold is chosen where the best step was, never on the
    held-back split)."""
    from napari_unetpp.config import ModelConfig, TrainConfig
    from napari_unetpp.train_data import prepare_data

    _load_script("train_zoo")
    specs = importlib.import_module("zoo_specs")
    ids = [f"id{k:02d}" for k in range(30)]
    monkeypatch.setattr(specs, "nuclei_split", lambda: (ids, ["held"]))
    rng = np.random.default_rng(1)
    images = [rng.random((16, 16)).astype(np.float32) for _ in ids]
    labels = [(image > 0.5).astype(np.int32) for image in images]
    data = prepare_data(
        images,
        labels,
        None,
        None,
        ModelConfig(widths=(4, 8, 16), depth=2, num_classes=3),
        TrainConfig(patch_size=(16, 16), validation_fraction=0.1, seed=specs.SEED),
        DataConfig(target="instance"),
        np.random.default_rng(0),
    )
    held = [int(name.split()[1]) for name in data.description["validation"]]
    assert [ids[k] for k in held] == specs.nuclei_validation_ids() and len(held) == 3


@pytest.mark.parametrize("name", ["nuclei", "em"])
def test_a_models_own_threshold_is_read_from_its_config_and_used_by_predict(
    name: str, tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``napari-unetpp predict zoo:NAME`` cuts the labels at the threshold the model's
    config.json records (``train_zoo.py`` chooses it on validation) unless ``--threshold``
    says otherwise. A copy of the shipped model recording 0.7, on its sample crop."""
    import dataclasses

    import tifffile

    from napari_unetpp.cli import main

    model, info = zoo.load_pretrained(name, device="cpu")
    if info.card.get("postprocess"):  # the card states the threshold the config holds
        own = 0.5 if model.config.threshold is None else model.config.threshold
        assert f"threshold {own:.2f}" in info.card["postprocess"]
    model.config = model.config.replace(threshold=0.7)
    zoo_dir = tmp_path / "zoo"
    save_checkpoint(zoo_dir / name, model, dataclasses.replace(info, model=model.config))
    monkeypatch.setenv("NAPARI_UNETPP_ZOO", str(zoo_dir))
    assert zoo.load_pretrained(name)[0].config.threshold == 0.7
    image, _, _ = load_sample(name)
    image = image[-1] if image.ndim == 3 else image  # one EM slice is enough
    tifffile.imwrite(tmp_path / "in.tif", image)
    found = {}
    runs = {"own": [], "given": ["--threshold", "0.7"], "half": ["--threshold", "0.5"]}
    for key, flags in runs.items():
        out = tmp_path / key
        argv = ["predict", f"zoo:{name}", str(tmp_path / "in.tif"), "--out", str(out), "-q"]
        assert main([*argv, *flags]) == 0, capsys.readouterr().err
        found[key] = tifffile.imread(out / "in_labels.tif")
    np.testing.assert_array_equal(found["own"], found["given"])
    assert (found["own"] > 0).sum() < (found["half"] > 0).sum()
