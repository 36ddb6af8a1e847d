"""Checkpoints: exact round trips, fp16 shipping, atomic saves, clear errors, no unpickling."""

from __future__ import annotations

import datetime
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_unetpp import __version__
from napari_unetpp import checkpoint as ckpt
from napari_unetpp.checkpoint import (
    CheckpointError,
    CheckpointInfo,
    export_zip,
    load_checkpoint,
    read_info,
    save_checkpoint,
)
from napari_unetpp.config import DataConfig, ModelConfig, NormalizationConfig, TrainConfig
from napari_unetpp.model import UNetPlusPlus

WIDTHS = (4, 8, 16)


@pytest.fixture
def no_unpickling(monkeypatch):
    """Any attempt to unpickle during the test fails it loudly."""

    def forbidden(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)


def _net(spatial_dims: int = 2, seed: int = 0, **kwargs) -> UNetPlusPlus:
    """A tiny network with non-trivial BatchNorm statistics (one train-mode pass)."""
    torch.manual_seed(seed)
    net = UNetPlusPlus(widths=WIDTHS, depth=2, spatial_dims=spatial_dims, **kwargs)
    with torch.no_grad():
        net.train()
        net(torch.randn(2, net.config.in_channels, *(16,) * spatial_dims) * 3 + 1)
    return net.eval()


def _info(net: UNetPlusPlus, **kwargs) -> CheckpointInfo:
    return CheckpointInfo(model=net.config, data=DataConfig(), **kwargs)


def _x(net: UNetPlusPlus, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    size = (24, 20) if net.config.spatial_dims == 2 else (8, 12, 8)
    return torch.randn(2, net.config.in_channels, *size, generator=g)


def _same_outputs(a: UNetPlusPlus, b: UNetPlusPlus, x: torch.Tensor) -> bool:
    with torch.no_grad():
        out_a, out_b = a(x), b(x)
    return list(out_a) == list(out_b) and all(torch.equal(out_a[d], out_b[d]) for d in out_a)


def _saved(tmp_path: Path, net: UNetPlusPlus | None = None, name: str = "model") -> Path:
    net = net or _net()
    return save_checkpoint(tmp_path / name, net, _info(net))


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_round_trip_is_bit_identical(tmp_path, no_unpickling, spatial_dims):
    net = _net(spatial_dims, num_classes=3, norm="batch")
    folder = save_checkpoint(tmp_path / "m", net, _info(net))
    assert folder == tmp_path / "m"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "weights.safetensors"]
    loaded, info = load_checkpoint(folder)
    assert not loaded.training
    assert info.model == net.config
    assert _same_outputs(net, loaded, _x(net))
    for key, value in net.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_round_trip_of_a_pruned_model(tmp_path, no_unpickling):
    net = _net(norm="group")
    pruned = net.prune(1)
    loaded, info = load_checkpoint(save_checkpoint(tmp_path / "p", pruned, _info(pruned)))
    assert info.model.depth == 1 and not info.model.deep_supervision
    assert loaded.head_depths == (1,)
    assert loaded.num_parameters() == pruned.num_parameters() < net.num_parameters()
    assert _same_outputs(pruned, loaded, _x(net))
    with torch.no_grad():  # and still head 1 of the full network
        assert torch.equal(net(_x(net), depths=[1])[1], loaded(_x(net))[1])


def test_configs_and_metadata_round_trip(tmp_path):
    torch.manual_seed(0)
    net = UNetPlusPlus.from_config(
        ModelConfig(
            in_channels=2,
            num_classes=3,
            widths=WIDTHS,
            depth=2,
            norm="instance",
            class_names=("background", "interior", "boundary"),
            channel_names=("dapi", "actin"),
        )
    )
    info = CheckpointInfo(
        model=net.config,
        data=DataConfig(
            normalization=NormalizationConfig.ct_window(),
            label_mode="sparse",
            target="instance",
            channel_axis=0,
            class_values=(2, 3),
        ),
        train=TrainConfig(iterations=10, patch_size=(32, 32), seed=7),
        metrics={
            "depths": {"1": {"iou": 0.5, "dice": 0.6, "parameters": 123, "ms_per_mpx": 1.5}},
            "score_name": "iou",
            "best_depth": 1,
        },
        provenance={
            "data": "my crops",
            "iterations": np.int64(10),
            "lr": np.float32(0.5),
            "date": datetime.date(2024, 5, 1),
            "source": Path("/data/x.tif"),
        },
        card={"title": "test model", "license": "CC-BY-4.0"},
    )
    assert CheckpointInfo.from_dict(json.loads(json.dumps(info.to_dict()))).model == info.model
    folder = save_checkpoint(tmp_path / "m", net, info)
    back = read_info(folder)
    assert back.model == info.model and back.data == info.data and back.train == info.train
    assert back.metrics == info.metrics and back.card == info.card
    assert back.provenance == {
        "data": "my crops",
        "iterations": 10,
        "lr": 0.5,
        "date": "2024-05-01",
        "source": "/data/x.tif",
    }
    assert back.version == __version__
    raw = json.loads((folder / "config.json").read_text())
    assert raw["format"] == "napari-unetpp-checkpoint" and raw["format_version"] == 1
    assert raw["weights"]["dtype"] == "float32" and len(raw["weights"]["sha256"]) == 64
    loaded, _ = load_checkpoint(folder)
    assert loaded.config.class_names == ("background", "interior", "boundary")
    assert _same_outputs(net.eval(), loaded, _x(net))


def test_every_kind_of_path_loads(tmp_path, no_unpickling):
    net = _net()
    folder = _saved(tmp_path, net)
    zipped = export_zip(folder, tmp_path / "out" / "model.zip")
    archive = shutil.make_archive(str(tmp_path / "cli"), "zip", root_dir=folder)  # what cli does
    nested = tmp_path / "nested.zip"
    with zipfile.ZipFile(nested, "w") as z:  # a zip of the folder itself
        for f in folder.iterdir():
            z.write(f, f"model/{f.name}")
    for path in (
        folder,
        str(folder),
        folder / "config.json",
        folder / "weights.safetensors",
        zipped,
        archive,
        nested,
    ):
        loaded, info = load_checkpoint(path)
        assert _same_outputs(net, loaded, _x(net)), path
        assert read_info(path).model == net.config
    with zipfile.ZipFile(zipped) as z:
        assert sorted(z.namelist()) == ["config.json", "weights.safetensors"]


def test_read_info_does_not_need_the_weights(tmp_path):
    folder = _saved(tmp_path)
    (folder / "weights.safetensors").unlink()
    assert read_info(folder).model.widths == WIDTHS
    with pytest.raises(CheckpointError, match="weights.safetensors: missing"):
        load_checkpoint(folder)


def test_half_precision_round_trip(tmp_path):
    net = _net(num_classes=2)
    full = save_checkpoint(tmp_path / "full", net, _info(net))
    half = save_checkpoint(tmp_path / "half", net, _info(net), half=True)
    size_full = (full / "weights.safetensors").stat().st_size
    size_half = (half / "weights.safetensors").stat().st_size
    assert size_half < 0.6 * size_full
    assert json.loads((half / "config.json").read_text())["weights"]["dtype"] == "float16"
    loaded, _ = load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = _x(net)
    with torch.no_grad():
        ref, out = net(x), loaded(x)
    for d in ref:
        torch.testing.assert_close(out[d], ref[d], rtol=1e-2, atol=1e-2)
    assert not _same_outputs(net, loaded, x)  # really was rounded


def test_half_keeps_values_beyond_the_float16_range(tmp_path):
    net = _net()
    with torch.no_grad():
        net.nodes["x_0_0"][1].running_var.fill_(1e6)  # would be inf in float16
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "h", net, _info(net), half=True))
    assert torch.equal(loaded.nodes["x_0_0"][1].running_var, net.nodes["x_0_0"][1].running_var)


# --------------------------------------------------------------------------- atomic saves


def test_overwrite_replaces_and_keeps_extra_files(tmp_path):
    first, second = _net(seed=0), _net(seed=1)
    folder = _saved(tmp_path, first)
    (folder / "README.md").write_text("my notes")
    (folder / "state").mkdir()
    (folder / "state" / "opt.json").write_text("{}")
    save_checkpoint(folder, second, _info(second))
    assert _same_outputs(second, load_checkpoint(folder)[0], _x(second))
    assert (folder / "README.md").read_text() == "my notes"
    assert (folder / "state" / "opt.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp leftovers


def _fail_serialising(*args, **kwargs):
    raise RuntimeError("simulated failure while serialising the weights")


def _fail_half_way(path: Path, data: bytes) -> None:
    """Write half a file, then 'lose power' (disk full / crash mid-write)."""
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
    if path.name == "config.json":
        raise OSError(28, "No space left on device")
    with open(path, "wb") as handle:
        handle.write(data)


@pytest.mark.parametrize(
    "target, replacement",
    [("_safetensors_save", _fail_serialising), ("_write_bytes", _fail_half_way)],
)
def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, target, replacement):
    old, new = _net(seed=0), _net(seed=1)
    folder = _saved(tmp_path, old)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setattr(ckpt, target, replacement)
    with pytest.raises((RuntimeError, OSError)):
        save_checkpoint(folder, new, _info(new))
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert _same_outputs(old, load_checkpoint(folder)[0], _x(old))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # temp folder cleaned up


def test_interrupt_during_the_swap_rolls_back(tmp_path, monkeypatch):
    old, new = _net(seed=0), _net(seed=1)
    folder = _saved(tmp_path, old)
    real_rename = os.rename
    calls = []

    def rename(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # old folder moved aside, new one not yet in place
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(ckpt.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(folder, new, _info(new))
    monkeypatch.undo()
    assert _same_outputs(old, load_checkpoint(folder)[0], _x(old))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_missing_checkpoint_points_at_a_leftover_of_a_crashed_save(tmp_path):
    folder = _saved(tmp_path)
    leftover = tmp_path / ".model.old-1234abcd"
    folder.rename(leftover)
    with pytest.raises(CheckpointError, match="interrupted save") as info:
        load_checkpoint(folder)
    assert str(leftover) in str(info.value)


def test_save_refuses_to_clobber_other_folders_and_mismatched_info(tmp_path):
    net = _net()
    data = tmp_path / "data"
    data.mkdir()
    (data / "image.tif").write_bytes(b"precious")
    with pytest.raises(ValueError, match="not a napari-unetpp checkpoint"):
        save_checkpoint(data, net, _info(net))
    assert (data / "image.tif").read_bytes() == b"precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        save_checkpoint(tmp_path / "file", net, _info(net))
    with pytest.raises(ValueError, match="export_zip"):
        save_checkpoint(tmp_path / "m.zip", net, _info(net))
    other = CheckpointInfo(model=net.config.replace(num_classes=2), data=DataConfig())
    with pytest.raises(ValueError, match="num_classes"):
        save_checkpoint(tmp_path / "m", net, other)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_checkpoint(save_checkpoint(empty, net, _info(net)))[1].model == net.config


# --------------------------------------------------------------------------- corrupt files


def _rewrite_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _break(folder: Path, case: str) -> Path:
    """Damage a good checkpoint in one way; return the file the error must name."""
    weights, config = folder / "weights.safetensors", folder / "config.json"
    if case == "no config":
        config.unlink()
        return config
    if case == "no weights":
        weights.unlink()
        return weights
    if case == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        return weights
    if case == "tiny weights":
        weights.write_bytes(b"\x01\x02")
        return weights
    if case == "garbage weights":
        weights.write_bytes(b"\xff" * 64)
        return weights
    if case == "flipped bit":
        blob = bytearray(weights.read_bytes())
        blob[-3] ^= 0x10  # inside the tensor data: still parses
        weights.write_bytes(bytes(blob))
        return weights
    if case == "truncated json":
        config.write_text(config.read_text()[:50])
        return config
    if case == "binary json":
        config.write_bytes(b"\xff\xfe\x00garbage")
        return config
    if case == "json list":
        config.write_text("[1, 2]")
        return config
    if case == "wrong marker":
        _rewrite_config(folder, format="someone-elses-format")
        return config
    if case == "newer format":
        _rewrite_config(folder, format_version=99)
        return config
    if case == "invalid model":
        _rewrite_config(folder, model={"depth": 0, "widths": [4, 8, 16]})
        return config
    if case == "unknown field":
        data = json.loads(config.read_text())
        data["model"]["colour"] = "blue"
        config.write_text(json.dumps(data))
        return config
    raise AssertionError(case)


CASES = {
    "no config": "missing",
    "no weights": "missing",
    "truncated weights": "corrupt or truncated",
    "tiny weights": "truncated",
    "garbage weights": "corrupt or truncated",
    "flipped bit": "checksum",
    "truncated json": "not valid JSON",
    "binary json": "not valid JSON",
    "json list": "JSON object",
    "wrong marker": "not a napari-unetpp checkpoint",
    "newer format": "upgrade napari-unetpp",
    "invalid model": "invalid configuration",
    "unknown field": "colour",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_corrupt_checkpoints_raise_checkpoint_error_naming_the_file(tmp_path, no_unpickling, case):
    folder = _saved(tmp_path)
    culprit = _break(folder, case)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(folder)
    message = str(info.value)
    assert str(culprit) in message and CASES[case] in message, message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "other_kwargs, expected",
    [
        # same keys, other shapes
        (
            {"widths": (4, 8, 32)},
            r"shape mismatch nodes\.x_1_1\.up\.weight: "
            r"file \(32, 8, 2, 2\) vs config \(16, 8, 2, 2\)",
        ),
        # more nodes and heads than the config
        ({"depth": 3, "widths": (4, 8, 16, 32)}, r"unexpected keys heads\.head_3"),
        # fewer heads than the config
        ({"deep_supervision": False}, r"missing keys heads\.head_1"),
    ],
)
def test_weights_that_do_not_fit_the_config_name_the_keys(tmp_path, other_kwargs, expected):
    folder = _saved(tmp_path)
    torch.manual_seed(0)
    kwargs = {"widths": WIDTHS, "depth": 2, **other_kwargs}
    other = UNetPlusPlus(**kwargs)
    other_folder = save_checkpoint(tmp_path / "other", other, _info(other))
    shutil.copy(other_folder / "weights.safetensors", folder / "weights.safetensors")
    with pytest.raises(CheckpointError, match=expected) as info:
        load_checkpoint(folder)
    assert str(folder / "weights.safetensors") in str(info.value)


def test_missing_folder_and_bad_zip(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist") as info:
        load_checkpoint(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path)  # a folder without config.json
    zipped = export_zip(_saved(tmp_path), tmp_path / "m.zip")
    zipped.write_bytes(zipped.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt or truncated zip") as info:
        load_checkpoint(zipped)
    assert str(zipped) in str(info.value)
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("notes.txt", "hi")
    with pytest.raises(CheckpointError, match="no config.json in this zip"):
        read_info(empty)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(other)
    with pytest.raises(ValueError, match=r"\.zip"):
        export_zip(tmp_path / "model", tmp_path / "out.tar")


# --------------------------------------------------------------------------- pickles


class _Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_the_payload_really_runs_when_unpickled(tmp_path):
    """Sanity check of the test itself: plain pickle would execute it."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


def test_pickle_files_are_refused_without_running_them(tmp_path, no_unpickling):
    marker = tmp_path / "PWNED"
    payload = pickle.dumps({"state_dict": _Payload(marker)})
    offers = []

    legacy = tmp_path / "model.pth"  # pickle bytes (protocol >= 2 starts with 0x80)
    legacy.write_bytes(payload)
    offers.append(legacy)

    torch_zip = tmp_path / "model.pt"  # torch.save's zip of pickles, under .pt and .zip names
    torch.save({"state_dict": _Payload(marker)}, torch_zip)
    assert not marker.exists()
    offers.append(torch_zip)
    disguised_zip = tmp_path / "model.zip"
    shutil.copy(torch_zip, disguised_zip)
    offers.append(disguised_zip)

    no_suffix = tmp_path / "weights"  # no telling suffix: the magic byte gives it away
    no_suffix.write_bytes(payload)
    offers.append(no_suffix)

    folder_with_pth = tmp_path / "downloaded"
    folder_with_pth.mkdir()
    shutil.copy(legacy, folder_with_pth / "best.pth")
    offers.append(folder_with_pth)

    renamed = _saved(tmp_path, name="renamed")  # a pickle renamed to weights.safetensors
    (renamed / "weights.safetensors").write_bytes(payload)
    offers.append(renamed)

    for offer in offers:
        with pytest.raises(CheckpointError, match="never unpickles") as info:
            load_checkpoint(offer)
        assert "convert" in str(info.value)
        assert str(offer) in str(info.value) or offer.is_dir()
        if offer != renamed:
            with pytest.raises(CheckpointError, match="never unpickles"):
                read_info(offer)
    assert not marker.exists()


def test_checkpoint_modules_never_call_torch_load():
    from napari_unetpp import _checkpoint_io

    for module in (ckpt, _checkpoint_io):
        source = Path(module.__file__).read_text()
        mentions = [line.strip() for line in source.splitlines() if "torch.load(" in line]
        assert all(line.startswith('"') for line in mentions), mentions  # only the user hint
        assert "import pickle" not in source and "pickle.load" not in source


def test_a_checkpoint_with_nan_weights_is_refused_at_load(tmp_path: Path) -> None:
    net = _net()
    with torch.no_grad():
        next(iter(net.parameters()))[0].fill_(float("nan"))
    folder = save_checkpoint(tmp_path / "nan", net, _info(net))
    with pytest.raises(CheckpointError, match="non-finite"):
        load_checkpoint(folder)


@pytest.mark.parametrize("first_bytes", [b"\x80", b"PK"])
def test_safetensors_whose_header_length_looks_like_pickle_or_zip_loads(first_bytes):
    """1 in 256 header sizes start with 0x80 (pickle's PROTO); such a file was refused."""
    from safetensors.torch import save

    target = int.from_bytes(first_bytes.ljust(2, b"\x00")[:2], "little")
    blob = b""
    for n in range(1, 20000):  # grow one tensor name until the header length matches
        blob = save({"w" * n: torch.ones(2)})
        length = int.from_bytes(blob[:8], "little")
        if length % (256 ** len(first_bytes)) == target:
            break
    assert blob.startswith(first_bytes)
    from napari_unetpp import _checkpoint_io as io

    raw = io.Raw(b"{}", "config.json", blob, "weights.safetensors")
    assert list(io.parse_weights(raw).values())[0].tolist() == [1.0, 1.0]
    assert list(io.header_shapes(raw).values()) == [(2,)]


def test_a_bioimageio_package_is_named_not_called_a_pickle(tmp_path: Path) -> None:
    """`export --format bioimageio` writes rdf.yaml + TorchScript: pointed back at napari-unetpp
    it must say what it is and what to load instead, not suggest torch.load on TorchScript."""
    package = tmp_path / "em_bioimageio"
    package.mkdir()
    (package / "rdf.yaml").write_text("format_version: 0.5.3\ntype: model\n")
    (package / "weights.torchscript.pt").write_bytes(b"PK\x03\x04 not really")
    with zipfile.ZipFile(tmp_path / "em_bioimageio.zip", "w") as archive:
        for member in package.iterdir():
            archive.write(member, member.name)
    for path in (package, tmp_path / "em_bioimageio.zip"):
        with pytest.raises(CheckpointError, match="bioimage.io package .*--format folder") as err:
            load_checkpoint(path)
        assert "torch.load" not in str(err.value)
