"""`core.run.Run`: the run directory's one owner; bad runs are one readable line; old servables load."""

from __future__ import annotations

import json
import shutil
import stat

import pytest

from core.errors import UsageError
from core.files import directory_sha256
from core.run import Run
from core.servable import load_servable


def write_tiny_run(path, info=None, nan=False):
    def fill(directory: str) -> None:
        (tmp := __import__("pathlib").Path(directory)).joinpath("weights.bin").write_bytes(b"\x00" * 8)
        tmp.joinpath("config.json").write_text("{}")

    extra = {"extra.bin": lambda f: f.write(b"x")}
    return Run.write(path, fill, {"metric": float("nan") if nan else 1.0, **(info or {})}, extra)


def test_write_records_the_servable_hash_and_writes_json_without_nan(tmp_path):
    run = write_tiny_run(tmp_path / "run", nan=True)
    text = (tmp_path / "run" / "run.json").read_text()
    assert "NaN" not in text and json.loads(text)["metric"] is None
    assert run.model_version == directory_sha256(tmp_path / "run" / "servable")
    assert Run.open(tmp_path / "run", verify=True).model_version == run.model_version
    assert (tmp_path / "run" / "extra.bin").read_bytes() == b"x"


def test_written_files_follow_the_umask_like_a_plain_write(tmp_path):
    write_tiny_run(tmp_path / "run")
    plain = tmp_path / "plain"
    plain.write_text("x")
    expected = stat.S_IMODE(plain.stat().st_mode)
    assert stat.S_IMODE((tmp_path / "run" / "run.json").stat().st_mode) == expected
    assert stat.S_IMODE((tmp_path / "run" / "servable" / "config.json").stat().st_mode) == expected
    made = tmp_path / "made"
    made.mkdir()
    assert stat.S_IMODE((tmp_path / "run" / "servable").stat().st_mode) == stat.S_IMODE(made.stat().st_mode)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda run: shutil.rmtree(run), "no trained run at"),
        (lambda run: (run / "run.json").write_text("{truncated"), "is not valid JSON"),
        (lambda run: (run / "run.json").write_text("[1, 2]"), "has no model_version"),
        (lambda run: shutil.rmtree(run / "servable"), "servable/ is missing"),
    ],
)
def test_a_broken_run_is_one_readable_error(tmp_path, damage, message):
    write_tiny_run(tmp_path / "run")
    damage(tmp_path / "run")
    with pytest.raises(UsageError, match=message):
        Run.open(tmp_path / "run")


def test_verify_refuses_a_servable_changed_after_training(tmp_path):
    write_tiny_run(tmp_path / "run")
    (tmp_path / "run" / "servable" / "config.json").write_text('{"changed": 1}')
    Run.open(tmp_path / "run")  # opening alone does not hash
    with pytest.raises(UsageError, match="does not match its run.json"):
        Run.open(tmp_path / "run", verify=True)


def test_a_benchmark_run_is_refused_where_a_trained_run_is_needed(tmp_path):
    run = write_tiny_run(tmp_path / "run", {"note": "random weights (bench/random_servable.py)"})
    assert not run.trained
    with pytest.raises(UsageError, match=r"not a trained run \(random weights.*evaluation needs one"):
        run.require_trained("evaluation")


def test_a_servable_saved_by_the_previous_layout_still_loads(tiny_run, tmp_path):
    """Servables written before core/ existed name train.encoders / train.heads as their modules."""
    old = tmp_path / "servable"
    shutil.copytree(tiny_run / "servable", old)
    config_file = old / "config.json"
    text = config_file.read_text()
    assert '"core.encoders"' in text
    config_file.write_text(text.replace('"core.encoders"', '"train.encoders"').replace('"core.heads"', '"train.heads"'))
    model = load_servable(old)
    fresh = load_servable(tiny_run / "servable")
    assert type(model.encoders["default"]) is type(fresh.encoders["default"])
    assert model.encoders["default"].preprocessing == fresh.encoders["default"].preprocessing
