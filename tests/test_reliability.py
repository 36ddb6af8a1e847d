"""Hostile inputs and interrupted runs: each promise of docs/reliability.md, tested.

Every test builds the hostile case itself (a pickle-codec zarr written by hand, a
user's own labels file, a FIFO named weights.safetensors, a config asking for a
billion channels, 100k nested brackets, a zip member that inflates to 40 MB, a
SIGKILLed training) and checks what a user sees: a one-line error (exit 2), no
code run, nothing of the user's changed, a run that resumes.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from napari_unetpp.checkpoint import (
    CheckpointError,
    CheckpointInfo,
    load_checkpoint,
    read_info,
    save_checkpoint,
)
from napari_unetpp.cli import main
from napari_unetpp.config import DataConfig, ModelConfig, TrainConfig
from napari_unetpp.files import UserError, read_array
from napari_unetpp.model import UNetPlusPlus
from napari_unetpp.outputs import LOCK_NAME, OutputFolder
from napari_unetpp.stores import UnsafeStoreError, check_zarr_store

SRC = str(Path(__file__).resolve().parents[1] / "src")
CROP = (slice(192, 256), slice(192, 256))  # 64 x 64 of the EM stack


def _run(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(err: str) -> str:
    """The CLI's error: one line, no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("napari-unetpp: error")]
    assert len(lines) == 1, err
    return lines[0]


# --------------------------------------------------------------------------- 1. zarr safety


class _Payload:
    """Unpickling this creates ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _v2_meta(**meta: Any) -> dict[str, Any]:
    """``.zarray`` metadata of an 8 x 8 float32 zarr 2 array, with ``meta`` changed."""
    base = {
        "zarr_format": 2,
        "shape": [8, 8],
        "chunks": [8, 8],
        "dtype": "<f4",
        "compressor": None,
        "filters": None,
        "fill_value": 0,
        "order": "C",
    }
    return {**base, **meta}


def _v3_meta(codecs: list[dict[str, Any]]) -> dict[str, Any]:
    """``zarr.json`` of an 8 x 8 float32 zarr 3 array with these ``codecs``."""
    return {
        "zarr_format": 3,
        "node_type": "array",
        "shape": [8, 8],
        "data_type": "float32",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [8, 8]}},
        "chunk_key_encoding": {"name": "default"},
        "fill_value": 0,
        "codecs": codecs,
    }


def _v2_array(folder: Path, marker: Path, **meta: Any) -> None:
    """A zarr 2 array written by hand: its one chunk is a pickle that creates ``marker``."""
    _write_json(folder / ".zarray", _v2_meta(**meta))
    (folder / "0.0").write_bytes(pickle.dumps(_Payload(marker)))


HOSTILE_ZARRS = {
    "compressor": lambda f, m: _v2_array(f, m, compressor={"id": "pickle", "protocol": 5}),
    "filters": lambda f, m: _v2_array(f, m, filters=[{"id": "pickle", "protocol": 5}]),
    "object-dtype": lambda f, m: _v2_array(f, m, dtype="|O", filters=[{"id": "json2"}]),
    "group-child": lambda f, m: (
        _write_json(f / ".zgroup", {"zarr_format": 2}),
        _v2_array(f / "0", m, compressor={"id": "pickle"}),
    ),
    "consolidated": lambda f, m: (
        _write_json(f / ".zgroup", {"zarr_format": 2}),
        _write_json(
            f / ".zmetadata",
            {
                "zarr_consolidated_format": 1,
                "metadata": {"0/.zarray": _v2_meta(compressor={"id": "pickle"})},
            },
        ),
    ),
    "v3-codec": lambda f, m: _write_json(
        f / "zarr.json", _v3_meta([{"name": "bytes"}, {"name": "numcodecs.pickle"}])
    ),
    "v3-sharded": lambda f, m: _write_json(
        f / "zarr.json",
        _v3_meta(
            [
                {
                    "name": "sharding_indexed",
                    "configuration": {"chunk_shape": [4, 4], "codecs": [{"name": "pickle"}]},
                }
            ]
        ),
    ),
}


@pytest.mark.parametrize("variant", sorted(HOSTILE_ZARRS))
def test_hostile_zarr_is_refused_before_any_code_runs(
    tmp_path: Path, variant: str, capsys: pytest.CaptureFixture[str], tiny_model: Path
):
    store, marker = tmp_path / "image.zarr", tmp_path / "code_ran"
    HOSTILE_ZARRS[variant](store, marker)
    with pytest.raises(UserError, match="pickle|Python objects"):
        read_array(store, lazy=True)
    with pytest.raises(UserError, match="pickle|Python objects"):
        read_array(store)
    # through the CLI as a training image: one line, exit 2, nothing ran
    code, _, err = _run(
        capsys,
        "train",
        "--images",
        store,
        "--labels",
        store,
        "--out",
        tmp_path / "run",
        "--device",
        "cpu",
        "-q",
    )
    assert code == 2 and ("pickle" in err or "Python objects" in err)
    _one_line_error(err)
    # and as an image to segment
    code, _, err = _run(
        capsys, "predict", tiny_model, store, "--out", tmp_path / "pred", "--device", "cpu", "-q"
    )
    assert code == 2 and ("pickle" in err or "Python objects" in err)
    _one_line_error(err)
    assert not marker.exists()


def test_the_pickle_payload_would_run(tmp_path: Path):
    """The hostile chunk is real: unpickling it (what zarr 2 would do) creates the marker."""
    marker = tmp_path / "code_ran"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ordinary_zarr_still_reads(tmp_path: Path, zarr_format: int):
    import zarr

    data = np.arange(64, dtype=np.uint16).reshape(8, 8)
    zarr.save_array(str(tmp_path / "ok.zarr"), data, zarr_format=zarr_format)
    np.testing.assert_array_equal(read_array(tmp_path / "ok.zarr"), data)


def test_nested_zarr_metadata_is_refused(tmp_path: Path):
    store = tmp_path / "deep.zarr"
    store.mkdir()
    (store / ".zarray").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UnsafeStoreError, match="nested too deeply"):
        check_zarr_store(store)


# --------------------------------------------------------------------------- 2. user data


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved untrained tiny checkpoint: enough to exercise every output path."""
    import torch

    torch.manual_seed(0)
    net = UNetPlusPlus(widths=(4, 8, 16), depth=2)
    folder = tmp_path_factory.mktemp("model") / "tiny"
    save_checkpoint(folder, net, CheckpointInfo(model=net.config, data=DataConfig()))
    return folder


@pytest.fixture
def image_file(tmp_path: Path, em_stack) -> Path:
    path = tmp_path / "in" / "a.tif"
    path.parent.mkdir()
    tifffile.imwrite(path, em_stack[0][0][CROP])
    return path


PREDICT = ["--tile", "64", "64", "--device", "cpu", "-q"]


def _predict(
    capsys: pytest.CaptureFixture[str], model: Path, image: Path, out: Path, *flags: Any
) -> tuple[int, str, str]:
    """``napari-unetpp predict MODEL IMAGE --out OUT FLAGS`` with the small-tile CPU flags."""
    return _run(capsys, "predict", model, image, "--out", out, *flags, *PREDICT)


@pytest.mark.parametrize("fmt", ["tif", "zarr"])
def test_predict_never_overwrites_user_labels(
    tmp_path: Path, tiny_model: Path, image_file: Path, capsys: pytest.CaptureFixture[str], fmt: str
):
    out = tmp_path / "out"
    out.mkdir()
    mine = np.full((64, 64), 7, np.uint16)  # the user's hand-made ground truth
    user = out / f"a_labels.{fmt}"
    if fmt == "tif":
        tifffile.imwrite(user, mine)
    else:
        import zarr

        zarr.save_array(str(user), mine)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    code, _, err = _predict(capsys, tiny_model, image_file, out, "--format", fmt)
    assert code == 2 and "--overwrite" in _one_line_error(err)
    np.testing.assert_array_equal(read_array(user), mine)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing added

    code, _, _ = _predict(capsys, tiny_model, image_file, out, "--format", fmt, "--overwrite")
    assert code == 0 and read_array(user).max() <= 1  # replaced, as asked
    # a result this package wrote is replaced by the next run without --overwrite
    code, _, _ = _predict(capsys, tiny_model, image_file, out, "--format", fmt)
    assert code == 0
    # the labels and their run record; no lock, no staging folder left behind
    assert sorted(p.name for p in out.iterdir()) == [f"a_labels.{fmt}", "a_run.json"]


def test_zarr_outputs_carry_a_complete_mark(
    tmp_path: Path, tiny_model: Path, image_file: Path, capsys: pytest.CaptureFixture[str]
):
    import zarr

    out = tmp_path / "out"
    code, _, _ = _predict(
        capsys, tiny_model, image_file, out, "--format", "zarr", "--probabilities"
    )
    assert code == 0
    assert zarr.open(str(out / "a_labels.zarr"), mode="r").attrs["napari_unetpp"] == {
        "complete": True
    }
    assert zarr.open(str(out / "a_probabilities.zarr"), mode="r").attrs["napari_unetpp"] == {
        "complete": True
    }
    # a store marked incomplete (an interrupted writer) is refused by every reader
    zarr.open(str(out / "a_labels.zarr"), mode="r+").attrs["napari_unetpp"] = {"complete": False}
    with pytest.raises(UserError, match="interrupted"):
        read_array(out / "a_labels.zarr")


def test_interrupted_predict_leaves_nothing(
    tmp_path: Path,
    tiny_model: Path,
    image_file: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):
    import napari_unetpp.postprocess as postprocess

    def ctrl_c(*args: Any, **kwargs: Any) -> None:  # after the probabilities store is written
        raise KeyboardInterrupt

    monkeypatch.setattr(postprocess, "probabilities_to_labels", ctrl_c)
    out = tmp_path / "out"
    code, _, err = _predict(
        capsys, tiny_model, image_file, out, "--format", "zarr", "--probabilities"
    )
    assert code == 130 and "interrupted" in err
    assert list(out.iterdir()) == []  # no labels, no internal probabilities store, no lock


def test_concurrent_predict_into_one_folder_is_refused(
    tmp_path: Path, tiny_model: Path, image_file: Path, capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "out"
    with OutputFolder(out):  # a run in progress (this process)
        code, _, err = _predict(capsys, tiny_model, image_file, out)
        assert code == 2 and "another napari-unetpp run" in _one_line_error(err)
    assert not (out / "a_labels.tif").exists()
    # a lock left by a killed run (its process is gone) is taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(str(dead.pid))
    code, _, _ = _predict(capsys, tiny_model, image_file, out)
    assert code == 0 and (out / "a_labels.tif").is_file() and not (out / LOCK_NAME).exists()


def test_two_predicts_at_once_never_both_write(tmp_path: Path, tiny_model: Path, image_file: Path):
    """Two real processes: each either wins the lock and writes, or is refused; none corrupts."""
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "napari_unetpp.cli",
        "predict",
        str(tiny_model),
        str(image_file),
        "--out",
        str(out),
        *PREDICT,
    ]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(r.wait(timeout=300), r.stderr.read() if r.stderr else "") for r in runs]
    print("exit codes:", [c for c, _ in results])
    assert all(
        code == 0 or (code == 2 and "another napari-unetpp run" in err) for code, err in results
    )
    assert any(code == 0 for code, _ in results)
    labels = tifffile.imread(out / "a_labels.tif")
    assert labels.shape == (64, 64)
    assert sorted(p.name for p in out.iterdir()) == ["a_labels.tif", "a_run.json"]


def test_two_inputs_with_one_output_name_are_refused(
    tmp_path: Path, tiny_model: Path, image_file: Path, capsys: pytest.CaptureFixture[str]
):
    np.save(image_file.with_suffix(".npy"), tifffile.imread(image_file))
    code, _, err = _run(
        capsys,
        "predict",
        tiny_model,
        image_file,
        image_file.with_suffix(".npy"),
        "--out",
        tmp_path / "out",
        *PREDICT,
    )
    assert code == 2 and "would both write a_labels.tif" in _one_line_error(err)


# --------------------------------------------------------------------------- 4. bounds


def _config_json(model: dict[str, Any]) -> dict[str, Any]:
    return {"format": "napari-unetpp-checkpoint", "format_version": 1, "model": model, "data": {}}


@pytest.mark.parametrize(
    "model",
    [
        {"widths": [1e9, 2, 4], "depth": 2},
        {"widths": [4, 8, 16], "depth": 2, "num_classes": 1e9},
        {"widths": [4] * 21, "depth": 20},
        {"widths": [4096] * 6, "depth": 5, "spatial_dims": 3},  # parameter cap
        {"widths": [[4], 8, 16], "depth": 2},
        {"widths": [4, 8, 16], "depth": True},
    ],
)
def test_huge_or_mistyped_configs_fail_before_allocating(tmp_path: Path, model: dict[str, Any]):
    folder = tmp_path / "ckpt"
    _write_json(folder / "config.json", _config_json(model))
    (folder / "weights.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(CheckpointError, match="invalid configuration") as error:
        load_checkpoint(folder)
    print(error.value)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--depth", "20"], "depth must lie in 1..8"),
        (["--widths", "100000", "8"], "widths must lie in 1..4096"),
        (["--batch-size", "4096", "--patch-size", "4096"], "voxels per step"),
    ],
)
def test_train_flags_are_bounded(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
    image_file: Path,
):
    code, _, err = _run(
        capsys,
        "train",
        "--images",
        image_file,
        "--labels",
        image_file,
        "--out",
        tmp_path / "run",
        *flags,
        "--dry-run",
    )
    assert code == 2 and message in _one_line_error(err)


def test_header_shapes_are_checked_before_tensors_are_made(tmp_path: Path, tiny_model: Path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_bytes((tiny_model / "config.json").read_bytes())
    blob = (tiny_model / "weights.safetensors").read_bytes()
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    key = next(k for k in header if k != "__metadata__")
    header[key]["shape"] = [100_000, 100_000]  # would be 40 GB
    text = json.dumps(header).encode()
    (folder / "weights.safetensors").write_bytes(
        len(text).to_bytes(8, "little") + text + blob[8 + size :]
    )
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_checkpoint(folder)


def _within_30s(call: Any) -> tuple[Any, BaseException | None]:
    """Run ``call`` in a thread that must end within 30 s (a FIFO read blocks forever)."""
    outcome: list[Any] = [None, None]

    def target() -> None:
        try:
            outcome[0] = call()
        except BaseException as exc:  # noqa: BLE001 - returned for the assertion
            outcome[1] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "hung on a FIFO or device"
    return outcome[0], outcome[1]


@pytest.mark.parametrize("name", ["weights.safetensors", "config.json"])
@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_fifo_or_device_as_checkpoint_file_fails_fast(
    tmp_path: Path, tiny_model: Path, name: str, kind: str
):
    from napari_unetpp.locate import find_checkpoint

    folder = tmp_path / "ckpt"
    folder.mkdir()
    for member in ("config.json", "weights.safetensors"):
        if member != name:
            (folder / member).write_bytes((tiny_model / member).read_bytes())
    if kind == "fifo":
        os.mkfifo(folder / name)
    else:
        os.symlink("/dev/zero", folder / name)
    for target in (folder, folder / name):
        _, error = _within_30s(lambda: load_checkpoint(target))  # noqa: B023 - joined here
        assert isinstance(error, CheckpointError) and "not a regular file" in str(error)
    found, error = _within_30s(lambda: find_checkpoint(folder))
    assert error is None and found is None  # the napari reader passes it by, unread


def test_nested_json_gives_a_clean_error(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str], image_file: Path
):
    from napari_unetpp.locate import find_checkpoint

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes((tiny_model / "weights.safetensors").read_bytes())
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        read_info(folder)
    assert find_checkpoint(folder) is None
    code, _, err = _run(capsys, "info", folder)
    assert code == 2 and "nested too deeply" in _one_line_error(err)
    run_json = tmp_path / "run.json"
    run_json.write_text('{"train": ' + "[" * 100_000 + "]" * 100_000 + "}")
    code, _, err = _run(
        capsys,
        "train",
        "--images",
        image_file,
        "--labels",
        image_file,
        "--out",
        tmp_path / "run",
        "--config",
        run_json,
        "--dry-run",
    )
    assert code == 2 and "nested too deeply" in _one_line_error(err)


def test_zip_member_bigger_than_its_model_is_not_inflated(tmp_path: Path, tiny_model: Path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", (tiny_model / "config.json").read_bytes())
        with archive.open("weights.safetensors", "w") as member:  # 40 MB of zeros, ~40 kB
            for _ in range(40):
                member.write(bytes(2**20))
    print(f"zip size {bomb.stat().st_size} bytes")
    with pytest.raises(CheckpointError, match="would inflate to 41943040 bytes"):
        load_checkpoint(bomb)


def test_cli_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], image_file: Path, tiny_model: Path
):
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a folder")
    code, _, err = _run(
        capsys,
        "train",
        "--images",
        image_file,
        "--labels",
        image_file,
        "--out",
        a_file,
        "--iterations",
        "1",
    )
    assert code == 2 and "is a file" in _one_line_error(err)
    code, _, err = _predict(capsys, tiny_model, image_file, a_file)
    assert code == 2 and "is a file" in _one_line_error(err)
    code, _, err = _predict(
        capsys, tiny_model, image_file, a_file / "sub"
    )  # an OSError (not a directory)
    assert code == 2
    _one_line_error(err)


def test_info_into_a_closed_pipe_is_quiet(tiny_model: Path):
    # `true` exits at once, long before Python has started: every write hits a closed pipe
    command = (
        f"'{sys.executable}' -m napari_unetpp.cli info '{tiny_model}' | true; "
        "echo status=${PIPESTATUS[0]}"
    )
    result = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=120,
    )
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.stdout.strip() == "status=0", (result.stdout, result.stderr)


# --------------------------------------------------------------------------- 3. resume


def _train_command(
    images: Path, labels: Path, out: Path, iterations: int, validate_every: int
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "napari_unetpp.cli",
        "train",
        "--images",
        str(images),
        "--labels",
        str(labels),
        "--out",
        str(out),
        "--widths",
        "4",
        "8",
        "16",
        "--depth",
        "2",
        "--iterations",
        str(iterations),
        "--patch-size",
        "32",
        "--batch-size",
        "2",
        "--validate-every",
        str(validate_every),
        "--device",
        "cpu",
        "--seed",
        "3",
        "--label-mode",
        "dense",
        "-q",
    ]


@pytest.fixture
def em_pair(tmp_path: Path, em_stack) -> tuple[Path, Path]:
    image, membranes = em_stack
    tifffile.imwrite(tmp_path / "image.tif", image[0][CROP])
    tifffile.imwrite(tmp_path / "labels.tif", membranes[0][CROP])
    return tmp_path / "image.tif", tmp_path / "labels.tif"


def _kill_when(process: subprocess.Popen, ready: Any, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_sigkill_then_resume_alone_continues_the_recorded_run(
    tmp_path: Path, em_pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(_train_command(*em_pair, out, 4000, 5), env=env)
    _kill_when(
        process,
        lambda: (
            (out / "last" / "trainer_state.json").is_file()
            or (out / "last" / "config.json").is_file()
        ),
    )
    assert process.returncode == -signal.SIGKILL
    state = json.loads((out / "last" / "trainer_state.json").read_text())
    killed_at = state["step"]
    assert read_info(out / "last").provenance["iterations"] == killed_at  # weights match
    print(f"killed after step {killed_at}")
    # the recorded run continues with its own flags, not the defaults (2000 / 8 / 256)
    run = json.loads((out / "run.json").read_text())
    run["train"]["iterations"] = killed_at + 10  # keep the test short: 10 more steps
    (out / "run.json").write_text(json.dumps(run))
    code, _, err = _run(capsys, "train", "--out", out, "--resume")
    assert code == 0, err
    info = read_info(out / "best")
    assert info.train is not None
    assert (info.train.batch_size, info.train.patch_size) == (2, (32, 32))
    assert info.provenance["iterations"] == killed_at + 10
    assert info.model.widths == (4, 8, 16)


def test_kill_before_the_first_save_restarts_the_recorded_run(
    tmp_path: Path, em_pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(_train_command(*em_pair, out, 6, 1000), env=env)
    _kill_when(process, lambda: (out / "run.json").is_file())
    assert not (out / "last").exists()
    code, _, err = _run(capsys, "train", "--out", out, "--resume")
    assert code == 0, err
    assert "from step 0" in err
    info = read_info(out / "best")
    assert info.provenance["iterations"] == 6 and info.train is not None
    assert info.train.batch_size == 2


def test_resume_with_repeated_architecture_flags(
    tmp_path: Path, em_pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "run"
    argv = _train_command(*em_pair, out, 2, 1)[3:]
    assert _run(capsys, *argv)[0] == 0
    code, _, err = _run(
        capsys,
        "train",
        "--out",
        out,
        "--resume",
        "--widths",
        "4",
        "8",
        "16",
        "--depth",
        "2",
        "--iterations",
        "3",
    )
    assert code == 0, err
    code, _, err = _run(capsys, "train", "--out", out, "--resume", "--widths", "8", "16", "32")
    line = _one_line_error(err)
    assert code == 2 and "--resume continues the run" in line and "[4, 8, 16]" in line
    assert "fine-tuned" not in line


def test_kill_between_weights_and_optimizer_state_cannot_happen(tmp_path: Path):
    """The optimizer state is inside last/ before the rename: both change in one step."""
    import torch

    from napari_unetpp.training import Trainer

    images = [np.random.default_rng(0).random((32, 32)).astype(np.float32)]
    labels = [(images[0] > 0.5).astype(np.uint8)]
    model = ModelConfig(widths=(4, 8, 16), depth=2)
    train = TrainConfig(
        iterations=4,
        batch_size=1,
        patch_size=(32, 32),
        validate_every=2,
        device="cpu",
        validation_fraction=0.0,
    )
    seen: list[set[str]] = []
    import napari_unetpp.checkpoint as checkpoint

    rename = os.rename

    def spy(source: Any, target: Any) -> None:
        if Path(target).name == "last":
            seen.append({p.name for p in Path(source).iterdir()})
        rename(source, target)

    torch.manual_seed(0)
    trainer = Trainer(model, train, DataConfig(), output_dir=tmp_path)
    checkpoint.os.rename = spy  # type: ignore[assignment]
    try:
        from napari_unetpp.events import drive

        drive(trainer.run(images, labels))
    finally:
        checkpoint.os.rename = rename  # type: ignore[assignment]
    assert seen and all(
        {"optimizer.safetensors", "trainer_state.json", "weights.safetensors"} <= s for s in seen
    )


def test_fine_tune_zoo_model_to_a_new_class_count(
    tmp_path: Path, em_stack, capsys: pytest.CaptureFixture[str]
):
    from napari_unetpp import zoo

    if "em" not in {e.name for e in zoo.available_models()}:
        pytest.fail("the shipped em model is missing from this installation")
    image, membranes = em_stack
    three = membranes[0][CROP].astype(np.uint8) + (image[0][CROP] > 200)  # classes 0, 1, 2
    tifffile.imwrite(tmp_path / "image.tif", image[0][CROP])
    tifffile.imwrite(tmp_path / "labels.tif", three.astype(np.uint8))
    code, _, err = _run(
        capsys,
        "train",
        "--from",
        "zoo:em",
        "--images",
        tmp_path / "image.tif",
        "--labels",
        tmp_path / "labels.tif",
        "--out",
        tmp_path / "ft",
        "--iterations",
        "2",
        "--patch-size",
        "64",
        "--batch-size",
        "1",
        "--device",
        "cpu",
        "--label-mode",
        "dense",
        "-q",
    )
    assert code == 0, err
    tuned, original = (
        read_info(tmp_path / "ft" / "best"),
        read_info(next(e.path for e in zoo.available_models() if e.name == "em")),
    )
    assert (tuned.model.num_classes, original.model.num_classes) == (3, 1)  # new heads
    assert tuned.model.widths == original.model.widths  # the body kept


def test_api_predict_out_never_replaces_a_foreign_zarr(tmp_path: Path):
    import zarr

    from napari_unetpp.config import PredictConfig
    from napari_unetpp.inference import predict_array

    net = UNetPlusPlus(widths=(4, 8, 16), depth=2)
    image = np.zeros((32, 32), np.float32)
    config = PredictConfig(tile_size=(32, 32), device="cpu")
    theirs = tmp_path / "theirs.zarr"
    zarr.save_array(str(theirs), np.arange(4))
    with pytest.raises(ValueError, match="did not write"):
        predict_array(net, image, config, DataConfig(), out=theirs)
    np.testing.assert_array_equal(zarr.open(str(theirs), mode="r")[...], np.arange(4))
    ours = tmp_path / "ours.zarr"
    predict_array(net, image, config, DataConfig(), out=ours)
    predict_array(net, image, config, DataConfig(), out=ours)  # our own result: replaced
    assert zarr.open(str(ours), mode="r").attrs["napari_unetpp"] == {"complete": True}


def test_export_zip_never_replaces_a_foreign_zip(tmp_path: Path, tiny_model: Path):
    from napari_unetpp.checkpoint import export_zip

    theirs = tmp_path / "theirs.zip"
    with zipfile.ZipFile(theirs, "w") as archive:
        archive.writestr("notes.txt", "my thesis")
    before = theirs.read_bytes()
    with pytest.raises(ValueError, match="not a napari-unetpp checkpoint zip"):
        export_zip(tiny_model, theirs)
    assert theirs.read_bytes() == before
    ours = export_zip(tiny_model, tmp_path / "ours.zip")
    assert export_zip(tiny_model, ours) == ours  # an earlier export is replaced


def test_concurrent_train_into_one_run_folder_is_refused(
    tmp_path: Path, em_pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "run"
    argv = _train_command(*em_pair, out, 2, 1)[3:]
    with OutputFolder(out):  # another training (this process) is writing there
        code, _, err = _run(capsys, *argv)
        assert code == 2 and "another napari-unetpp run" in _one_line_error(err)
    assert not (out / "best").exists()
    assert _run(capsys, *argv)[0] == 0 and not (out / LOCK_NAME).exists()
