"""Run records (runs.py): what the widgets write, the CLI reads, and the other way round."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest

from napari_unetpp import __version__
from napari_unetpp.config import DataConfig, ModelConfig, PredictConfig, TrainConfig
from napari_unetpp.files import UserError
from napari_unetpp.runs import (
    COMMAND_FILE,
    REPLAY_DIR,
    RUN_FILE,
    format_command,
    new_run_dir,
    predict_record,
    read_run_file,
    recorded_inputs,
    replay_dir,
    save_run_record,
    train_record,
    write_image_record,
)


def test_widget_train_record_reads_back_as_cli_config(tmp_path: Path) -> None:
    run_dir = new_run_dir(tmp_path, "em crop/1")
    assert run_dir.name.startswith("em_crop_1-") and run_dir.is_dir()
    model = ModelConfig(widths=(4, 8, 16), depth=2)
    record = train_record(
        model, TrainConfig(iterations=3), DataConfig(), {"images": ["/a b.tif"]}, "zoo:em"
    )
    command = format_command("train", images=["/a b.tif"], out=replay_dir(run_dir), from_="zoo:em")
    run_json, script = save_run_record(run_dir, "train", record, command)
    assert (run_json.name, script.name) == (RUN_FILE, COMMAND_FILE)
    read = read_run_file(run_json)
    assert read["version"] == __version__ and read["from"] == "zoo:em"
    assert ModelConfig.from_dict(read["model"]) == model
    assert recorded_inputs(read, run_json) == {"images": ["/a b.tif"]}
    assert "labels" not in read  # inputs not given are not recorded
    assert os.access(script, os.X_OK)
    line = script.read_text().splitlines()[-1]
    assert shlex.split(line)[:4] == ["napari-unetpp", "train", "--images", "/a b.tif"]
    assert shlex.split(line)[-4:-2] == ["--out", str(run_dir / REPLAY_DIR)]
    assert f"# It writes into {REPLAY_DIR}/ in this folder" in script.read_text()
    assert not list(run_dir.glob(".*tmp*"))  # the atomic write left no temporary file


def test_image_record_replays_its_predict_config(tmp_path: Path) -> None:
    config = PredictConfig(tile_size=(64, 64), pruned_depth=2)
    path = write_image_record(tmp_path / "a_run.json", "zoo:em", config, DataConfig(), None)
    read = read_run_file(path)  # `predict --config a_run.json` replays it
    assert read["written_by"] == "napari-unetpp" and read["scale"] is None
    assert read["checkpoint"] == predict_record("zoo:em", config, DataConfig())["checkpoint"]
    assert PredictConfig.from_dict(read["predict"]) == config
    assert DataConfig.from_dict(read["data"]) == DataConfig()


def test_unknown_sections_are_refused(tmp_path: Path) -> None:
    path = tmp_path / RUN_FILE
    path.write_text('{"model": {}, "trian": {}}')
    with pytest.raises(UserError, match="trian"):
        read_run_file(path)
    assert read_run_file(None) == {}


def test_run_json_of_another_tool_is_never_replaced(tmp_path: Path) -> None:
    """`train --out` a folder of another project replaced its run.json before the first step;
    only a run record of ours is replaced."""
    from napari_unetpp.runs import RUN_FILE, write_run_file

    theirs = tmp_path / RUN_FILE
    theirs.write_text('{"my": "data"}')
    with pytest.raises(UserError, match="not a napari-unetpp run record"):
        write_run_file(tmp_path, {"train": {"iterations": 5}})
    assert theirs.read_text() == '{"my": "data"}'
    theirs.unlink()
    write_run_file(tmp_path, {"train": {"iterations": 5}})
    write_run_file(tmp_path, {"train": {"iterations": 7}})  # ours: replaced
    assert json.loads(theirs.read_text()) == {"train": {"iterations": 7}}
