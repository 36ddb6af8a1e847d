"""locate: every kind of model a user can point at, decided in one place and without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from napari_unetpp import locate as loc
from napari_unetpp.locate import (
    CONFIG_NAME,
    FORMAT,
    WEIGHTS_NAME,
    ModelLocation,
    find_checkpoint,
    is_zoo,
    locate,
    portable_spec,
    zoo_name,
    zoo_spec,
)


def _fake_checkpoint(folder: Path, marker: str = FORMAT, weights: bool = True) -> Path:
    """The two files of a checkpoint folder; locate and the probes never read the weights."""
    folder.mkdir(parents=True)
    (folder / CONFIG_NAME).write_text(json.dumps({"format": marker, "format_version": 1}))
    if weights:
        (folder / WEIGHTS_NAME).write_bytes(b"\0" * 16)
    return folder


def _zip_of(folder: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(folder.iterdir()):
            zf.write(file, prefix + file.name)
    return archive


# --------------------------------------------------------------------------- locate


def test_each_kind_of_path(tmp_path: Path) -> None:
    folder = _fake_checkpoint(tmp_path / "model")
    archive = _zip_of(folder, tmp_path / "model.zip")
    other = tmp_path / "model.pt"
    other.write_bytes(b"\x80\x02")
    expected = {
        folder: ModelLocation("folder", folder),
        folder / CONFIG_NAME: ModelLocation("config", folder / CONFIG_NAME),
        folder / WEIGHTS_NAME: ModelLocation("weights", folder / WEIGHTS_NAME),
        archive: ModelLocation("zip", archive),
        other: ModelLocation("file", other),  # the checkpoint reader refuses it as a pickle
    }
    for path, where in expected.items():
        assert locate(path) == where
        assert locate(str(path)) == where


def test_a_run_folder_means_its_best_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    best = _fake_checkpoint(run / "best")
    _fake_checkpoint(run / "last")
    assert locate(run) == ModelLocation("run", best)
    assert portable_spec(run) == str(best.resolve())
    # a folder that is a checkpoint itself stays itself, even with a best/ inside
    _fake_checkpoint(tmp_path / "outer")
    _fake_checkpoint(tmp_path / "outer" / "best")
    assert locate(tmp_path / "outer").kind == "folder"
    # a folder without a checkpoint is handed on as a folder (the reader says what is missing)
    (tmp_path / "empty").mkdir()
    assert locate(tmp_path / "empty") == ModelLocation("folder", tmp_path / "empty")


def test_a_missing_path_says_what_may_be_given(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError) as info:
        locate(missing)
    message = str(info.value)
    assert f"checkpoint {missing} does not exist" in message
    for accepted in ("checkpoint folder", "config.json", ".zip", "training run folder", "zoo:NAME"):
        assert accepted in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        portable_spec(str(missing))


def test_portable_spec_is_absolute_and_keeps_zoo_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _fake_checkpoint(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    assert portable_spec("model") == str(folder.resolve())
    assert portable_spec(Path("model") / CONFIG_NAME) == str((folder / CONFIG_NAME).resolve())
    assert portable_spec("zoo:anything") == "zoo:anything"  # the workers resolve it


# --------------------------------------------------------------------------- zoo


def test_zoo_names_round_trip() -> None:
    assert is_zoo("zoo:em") and not is_zoo("em") and not is_zoo("models/zoo:em")
    assert not is_zoo(Path("zoo:em"))  # a Path is a file name, never a shipped model
    assert zoo_name("zoo:em") == "em" and zoo_spec("em") == "zoo:em"
    assert zoo_name(zoo_spec("nuclei")) == "nuclei"
    with pytest.raises(ValueError, match="zoo:NAME"):
        zoo_name("em")


def test_zoo_spec_is_the_shipped_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from napari_unetpp import zoo

    monkeypatch.setenv("NAPARI_UNETPP_ZOO", str(tmp_path))
    em = _fake_checkpoint(tmp_path / "em")
    assert locate("zoo:em") == ModelLocation("zoo", em, "em")
    assert [e.spec for e in zoo.available_models()] == ["zoo:em"]
    with pytest.raises(ValueError, match="unknown zoo model 'cells'"):
        locate("zoo:cells")
    with pytest.raises(ValueError, match="not shipped.*train_zoo.py ct"):
        locate("zoo:ct")


# --------------------------------------------------------------------------- reader probe


def test_find_checkpoint_accepts_models_only(tmp_path: Path) -> None:
    folder = _fake_checkpoint(tmp_path / "run" / "best")
    assert find_checkpoint(folder) == folder
    assert find_checkpoint(str(folder / CONFIG_NAME)) == folder
    assert find_checkpoint(tmp_path / "run") == folder
    for archive in (
        _zip_of(folder, tmp_path / "root.zip"),
        _zip_of(folder, tmp_path / "nested.zip", prefix="best/"),
    ):
        assert find_checkpoint(archive) == archive

    foreign = _fake_checkpoint(tmp_path / "foreign", marker="something else")
    no_weights = _fake_checkpoint(tmp_path / "no-weights", weights=False)
    (tmp_path / "fake.zip").write_bytes(b"not a zip")
    deep = tmp_path / "deep.zip"  # two folders down is not a zipped checkpoint folder
    _zip_of(folder, deep, prefix="a/b/")
    for path in (
        foreign,
        no_weights,
        no_weights / CONFIG_NAME,
        _zip_of(no_weights, tmp_path / "no-weights.zip"),
        tmp_path / "fake.zip",
        deep,
        folder / WEIGHTS_NAME,
        tmp_path / "missing",
        "zoo:em",  # a name napari hands over is a path, never a shipped model
    ):
        assert find_checkpoint(path) is None, path


def test_find_checkpoint_reads_no_oversized_or_nested_config(tmp_path: Path) -> None:
    big = _fake_checkpoint(tmp_path / "big")
    with open(big / CONFIG_NAME, "r+b") as handle:
        handle.truncate(loc.MAX_CONFIG_BYTES + 1)
    nested = _fake_checkpoint(tmp_path / "nested")
    (nested / CONFIG_NAME).write_text("[" * 100_000 + "]" * 100_000)
    assert find_checkpoint(big) is None and find_checkpoint(nested) is None


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_find_checkpoint_passes_a_fifo_by_unread(tmp_path: Path) -> None:
    folder = _fake_checkpoint(tmp_path / "model", weights=False)
    os.mkfifo(folder / WEIGHTS_NAME)
    os.mkfifo(tmp_path / "pipe.zip")
    found: list[Path | None] = []
    probe = threading.Thread(
        target=lambda: found.extend(find_checkpoint(p) for p in (folder, tmp_path / "pipe.zip")),
        daemon=True,
    )
    probe.start()
    probe.join(30)
    assert not probe.is_alive(), "blocked on a FIFO"
    assert found == [None, None]


# --------------------------------------------------------------------------- boundaries


def test_locate_loads_neither_torch_nor_numpy_nor_napari(tmp_path: Path) -> None:
    _fake_checkpoint(tmp_path / "run" / "best")
    code = (
        "import sys\n"
        "from napari_unetpp.locate import find_checkpoint, locate\n"
        f"assert locate({str(tmp_path / 'run')!r}).kind == 'run'\n"
        f"assert find_checkpoint({str(tmp_path / 'run')!r}) is not None\n"
        "locate('zoo:em')\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = set(out.stdout.split())
    assert "napari_unetpp" in loaded  # the statement really ran
    assert not loaded & {"torch", "numpy", "napari", "qtpy", "safetensors", "zarr"}


def test_load_model_follows_a_run_folder_to_best(tmp_path: Path) -> None:
    import torch

    from napari_unetpp.checkpoint import CheckpointInfo, save_checkpoint
    from napari_unetpp.config import DataConfig
    from napari_unetpp.files import load_model
    from napari_unetpp.model import UNetPlusPlus

    torch.manual_seed(0)
    best = UNetPlusPlus(widths=(4, 8), depth=1)
    torch.manual_seed(1)
    last = UNetPlusPlus(widths=(4, 8), depth=1)
    for name, net in (("best", best), ("last", last)):
        save_checkpoint(tmp_path / "run" / name, net, CheckpointInfo(net.config, DataConfig()))
    loaded, _ = load_model(str(tmp_path / "run"))
    for key, value in best.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(FileNotFoundError, match="training run folder"):
        load_model(str(tmp_path / "nope"))
