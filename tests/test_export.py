"""Exports load back in their own ecosystems and give the model's own probabilities.

TorchScript (torch.jit.load), ONNX (onnxruntime) and bioimage.io packages (validated by
bioimageio.spec; their weights run on the rdf's preprocessed test input and must give the
test output) of one depth and of all heads, compared with the network's sigmoid / softmax
within 1e-4; pruned checkpoints (folder, zip) load with load_checkpoint.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import torch
from bioimageio.spec import load_model_description

from napari_unetpp.checkpoint import CheckpointInfo, load_checkpoint, save_checkpoint
from napari_unetpp.config import DataConfig, NormalizationConfig
from napari_unetpp.export import export_model, export_pruned
from napari_unetpp.model import UNetPlusPlus
from napari_unetpp.normalization import normalize

TOL = 1e-4

# torch 2.13 deprecates TorchScript; bioimage.io still runs it, so the exports load it
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


def _net(num_classes: int) -> UNetPlusPlus:
    torch.manual_seed(num_classes)
    net = UNetPlusPlus(1, num_classes, widths=(4, 8, 16, 32), depth=3).eval()
    for module in net.modules():  # non-trivial batch-norm statistics: eval mode must use them
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return net


def _info(net: UNetPlusPlus, norm: NormalizationConfig | None = None) -> CheckpointInfo:
    metrics = {"depths": {"1": {"iou": 0.5}, "2": {"iou": 0.6}, "3": {"iou": 0.7}}, "best_depth": 2}
    card = {"title": "Test model", "licence": "Apache-2.0 (test)", "summary": "A test."}
    data = DataConfig(normalization=norm or NormalizationConfig())
    return CheckpointInfo(model=net.config, data=data, metrics=metrics, card=card)


def _expected(net: UNetPlusPlus, x: torch.Tensor, depths: list[int]) -> np.ndarray:
    """The network's own probabilities of ``depths``, stacked as channels."""
    with torch.no_grad():
        logits = net.eval()(x, depths)
    act = (
        (lambda t: torch.sigmoid(t))
        if net.config.num_classes == 1
        else (lambda t: torch.softmax(t, dim=1))
    )
    return torch.cat([act(logits[d]) for d in depths], dim=1).numpy()


def _onnx(path: Path, x: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _jit(path: Path, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.jit.load(str(path)).eval()(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize(("num_classes", "depth", "all_heads"), [(1, 2, False), (3, None, True)])
def test_torchscript_and_onnx_give_the_models_probabilities(
    tmp_path: Path, num_classes: int, depth: int | None, all_heads: bool
) -> None:
    net = _net(num_classes)
    info = _info(net)
    depths = [1, 2, 3] if all_heads else [2]
    ts = export_model(net, tmp_path / "m.pt", "torchscript", depth, all_heads, info=info)
    ox = export_model(net, tmp_path / "m.onnx", "onnx", depth, all_heads, info=info)
    for shape in [(1, 1, 64, 64), (2, 1, 48, 72)]:  # other batch and sizes than traced
        x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
        want = _expected(net, x, depths)
        assert want.shape[1] == num_classes * len(depths)
        np.testing.assert_allclose(_jit(ts, x.numpy()), want, atol=TOL)
        np.testing.assert_allclose(_onnx(ox, x.numpy()), want, atol=TOL)


def test_default_depth_is_the_recommended_one(tmp_path: Path) -> None:
    net = _net(1)
    ts = export_model(net, tmp_path / "m.pt", "torchscript", info=_info(net))  # best_depth 2
    x = torch.rand(1, 1, 64, 64)
    np.testing.assert_allclose(_jit(ts, x.numpy()), _expected(net, x, [2]), atol=TOL)


@pytest.mark.parametrize("fmt, name", [("onnx", "m.onnx"), ("torchscript", "m.pt")])
def test_an_export_never_replaces_a_file_it_did_not_write(
    tmp_path: Path, fmt: str, name: str
) -> None:
    """`export --out notes.onnx` over a user's file replaced it silently; now refused, and
    only our own earlier export (marked in the file) is replaced."""
    net = _net(1)
    precious = tmp_path / name
    precious.write_text("my own notes")
    with pytest.raises(ValueError, match="not an export of napari-unetpp"):
        export_model(net, precious, fmt, info=_info(net))
    assert precious.read_text() == "my own notes"
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="not an export of napari-unetpp"):
        export_model(net, tmp_path / "folder", fmt, info=_info(net))
    ours = tmp_path / "ours" / name
    export_model(net, ours, fmt, info=_info(net))
    export_model(net, ours, fmt, info=_info(net))  # our own: replaced
    x = torch.rand(1, 1, 64, 64)
    got = _onnx(ours, x.numpy()) if fmt == "onnx" else _jit(ours, x.numpy())
    np.testing.assert_allclose(got, _expected(net, x, [2]), atol=TOL)


def test_a_bioimageio_zip_never_replaces_a_zip_that_is_no_package(tmp_path: Path) -> None:
    """`export --format bioimageio --out photos.zip` replaced any existing .zip (a user's
    photos); only an earlier bioimage.io package (rdf.yaml inside) may be replaced."""
    net = _net(1)
    photos = tmp_path / "photos.zip"
    with zipfile.ZipFile(photos, "w") as archive:
        archive.writestr("holiday.jpg", "a photo")
    with pytest.raises(ValueError, match="not a bioimage.io package"):
        export_model(net, photos, "bioimageio", info=_info(net))
    assert zipfile.ZipFile(photos).namelist() == ["holiday.jpg"]
    package = tmp_path / "package.zip"
    export_model(net, package, "bioimageio", info=_info(net))
    export_model(net, package, "bioimageio", info=_info(net))  # an earlier package: replaced
    assert "rdf.yaml" in zipfile.ZipFile(package).namelist()


def test_a_licence_bioimageio_rejects_is_refused_before_any_work(tmp_path: Path) -> None:
    """`--license nonsense` wrote a package that bioimage.io rejects; now refused up front."""
    net = _net(1)
    with pytest.raises(ValueError, match="not an SPDX id"):
        export_model(net, tmp_path / "p", "bioimageio", info=_info(net), license="nonsense")
    assert not list(tmp_path.iterdir())


def _preprocess(x: np.ndarray, steps: list[dict[str, Any]]) -> np.ndarray:
    """Apply the rdf's preprocessing as a bioimage.io consumer does (per sample)."""
    for step in steps:
        kwargs = step.get("kwargs", {})
        if step["id"] == "ensure_dtype":
            x = x.astype(kwargs["dtype"])
        elif step["id"] == "scale_range":
            assert kwargs["axes"][0] == "channel" and "batch" not in kwargs["axes"]
            axes = tuple(range(1, x.ndim))
            low = np.percentile(x, kwargs["min_percentile"], axis=axes, keepdims=True)
            high = np.percentile(x, kwargs["max_percentile"], axis=axes, keepdims=True)
            x = (x - low) / (high - low + kwargs["eps"])
        elif step["id"] == "scale_linear":
            x = x * kwargs["gain"] + kwargs["offset"]
        elif step["id"] == "clip":
            x = np.clip(x, kwargs["min"], kwargs["max"])
        else:
            raise AssertionError(f"unexpected preprocessing {step['id']}")
    return x.astype(np.float32)


def _check_package(folder: Path, net: UNetPlusPlus, info: CheckpointInfo, depths: list[int]):
    """The package validates, and its weights turn its test input into its test output."""
    description = load_model_description(folder / "rdf.yaml", perform_io_checks=True)
    assert description.validation_summary.status == "valid-format", (
        description.validation_summary.format()
    )
    rdf = json.loads((folder / "rdf.yaml").read_text())
    for key in ("name", "description", "authors", "cite", "license", "covers", "documentation"):
        assert rdf[key], key
    assert set(rdf["weights"]) == {"torchscript", "onnx"}  # no pytorch_state_dict (pickle)
    assert not list(folder.glob("*.pkl")) and not list(folder.glob("*.pth"))
    (inp,), (out,) = rdf["inputs"], rdf["outputs"]
    step = 2 ** max(depths)
    assert [a["size"] for a in inp["axes"][2:]] == [{"min": step, "step": step}] * 2
    raw = np.load(folder / inp["test_tensor"]["source"], allow_pickle=False)
    test_output = np.load(folder / out["test_tensor"]["source"], allow_pickle=False)
    x = _preprocess(raw, inp["preprocessing"])
    # the rdf's preprocessing is the engine's normalisation; the output the model's own
    np.testing.assert_allclose(x[0], normalize(raw[0], info.data.normalization), atol=1e-5)
    want = _expected(net, torch.from_numpy(x), depths)
    np.testing.assert_allclose(test_output, want, atol=TOL)
    weights = rdf["weights"]
    np.testing.assert_allclose(_jit(folder / weights["torchscript"]["source"], x), want, atol=TOL)
    np.testing.assert_allclose(_onnx(folder / weights["onnx"]["source"], x), want, atol=TOL)
    assert len(out["axes"][1]["channel_names"]) == want.shape[1]
    assert (folder / "cover.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return rdf


def test_bioimageio_zip_of_all_heads_multiclass(tmp_path: Path) -> None:
    net = _net(3)
    info = _info(net, NormalizationConfig(mode="window", low=50.0, high=150.0, clip=True))
    path = export_model(net, tmp_path / "pkg.zip", "bioimageio", all_heads=True, info=info)
    assert zipfile.is_zipfile(path)
    with zipfile.ZipFile(path) as archive:
        archive.extractall(tmp_path / "unzipped")
    rdf = _check_package(tmp_path / "unzipped", net, info, [1, 2, 3])
    assert [s["id"] for s in rdf["inputs"][0]["preprocessing"]][1:] == ["scale_linear", "clip"]
    assert rdf["license"] == "Apache-2.0"
    assert load_model_description(path, perform_io_checks=True).validation_summary.status == (
        "valid-format"
    )


def test_bioimageio_folder_of_the_shipped_em_model_at_one_depth(tmp_path: Path) -> None:
    path = export_model("zoo:em", tmp_path / "em_L2", "bioimageio", depth=2)
    net, info = load_checkpoint(Path(__file__).parents[1] / "src/napari_unetpp/models/em")
    rdf = _check_package(path, net, info, [2])
    assert [s["id"] for s in rdf["inputs"][0]["preprocessing"]] == ["ensure_dtype", "scale_range"]
    assert rdf["license"] == "CC-BY-NC-4.0"  # the card: non-commercial research use only
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == ["membrane"]
    assert rdf["inputs"][0]["axes"][2]["unit"] == "nanometer"
    assert "ISBI 2012" in (path / "README.md").read_text()


def test_pickle_formats_are_refused(tmp_path: Path) -> None:
    net = _net(1)
    for fmt in ("pytorch_state_dict", "pt"):
        with pytest.raises(ValueError, match="pickle"):
            export_model(net, tmp_path / "m", fmt, info=_info(net))
    with pytest.raises(ValueError, match="unknown export format"):
        export_model(net, tmp_path / "m", "keras", info=_info(net))
    with pytest.raises(ValueError, match="either a depth or all_heads"):
        export_model(net, tmp_path / "m", "onnx", 2, True, info=_info(net))
    with pytest.raises(ValueError, match="no head at depth 5"):
        export_model(net, tmp_path / "m", "torchscript", 5, info=_info(net))
    assert not list(tmp_path.iterdir())


def test_export_pruned_folder_and_zip(tmp_path: Path) -> None:
    net = _net(1)
    info = _info(net)
    source = save_checkpoint(tmp_path / "full", net, info)
    folder = export_model(str(source), tmp_path / "L1", "folder", depth=1)
    packed = export_model(str(source), tmp_path / "L1b", "zip", depth=1)
    whole = export_pruned(net, info, 3, tmp_path / "L3.zip", source="mine")
    assert packed.suffix == ".zip" and whole.suffix == ".zip"
    x = torch.rand(1, 1, 40, 40)
    for path, depth in ((folder, 1), (packed, 1), (whole, 3)):
        loaded, loaded_info = load_checkpoint(path)
        assert loaded.head_depths == (depth,)
        assert loaded_info.metrics["depths"] == {str(depth): info.metrics["depths"][str(depth)]}
        assert loaded_info.metrics["best_depth"] == depth
        assert loaded_info.provenance["pruned_depth"] == depth
        assert loaded_info.provenance["original_depth"] == 3
        with torch.no_grad():
            torch.testing.assert_close(loaded.eval()(x)[depth], net(x, [depth])[depth])
    assert load_checkpoint(folder)[1].provenance["pruned_from"] == str(source)
    assert load_checkpoint(whole)[1].provenance["pruned_from"] == "mine"
    all_heads = export_model(str(source), tmp_path / "all", "folder", all_heads=True)
    assert load_checkpoint(all_heads)[0].head_depths == (1, 2, 3)


def test_cli_export_writes_onnx_and_a_bioimageio_package(tmp_path: Path) -> None:
    """``napari-unetpp export --format ...``: the command users run, loaded back."""
    from napari_unetpp.cli import export as cli_export
    from napari_unetpp.cli import main
    from napari_unetpp.cli.export import EXPORT_FORMATS
    from napari_unetpp.export import FORMATS, PICKLE_FORMATS

    assert EXPORT_FORMATS == FORMATS  # the parser spells them without importing torch
    assert cli_export.PICKLE_FORMATS == PICKLE_FORMATS
    net = _net(1)
    folder = save_checkpoint(tmp_path / "model", net, _info(net))
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", str(folder), "--out", str(onnx_path), "--format", "onnx"]) == 0
    x = np.random.default_rng(0).random((1, 1, 64, 64), dtype=np.float32)
    expected = _expected(net, torch.from_numpy(x), [2])  # the card's recommended depth
    np.testing.assert_allclose(_onnx(onnx_path, x), expected, atol=TOL)
    package = tmp_path / "package"
    assert main(["export", str(folder), "--out", str(package), "--format", "bioimageio"]) == 0
    _check_package(package, net, _info(net), [2])
    with pytest.raises(SystemExit) as refused:  # argparse: not a choice, nothing written
        main(["export", str(folder), "--out", str(tmp_path / "x"), "--format", "pickle"])
    assert refused.value.code == 2 and not (tmp_path / "x").exists()


def test_bioimageio_readme_states_the_models_own_threshold(tmp_path: Path) -> None:
    """A package's README tells a bioimage.io user where to cut a one-class model's
    probabilities: the model's own threshold (``ModelConfig.threshold``), not always 0.5."""
    net = _net(1)
    net.config = net.config.replace(threshold=0.7)
    path = export_model(net, tmp_path / "own", "bioimageio", info=_info(net))
    assert "Labels: threshold at 0.7 (one class)" in (path / "README.md").read_text()
