"""train.synthetic never destroys what it did not write (a marker tells its own output apart)."""

from __future__ import annotations

from tests.conftest import run_module

SMALL = ["--colours", "1", "--shapes", "2", "--per-class", "2", "--size", "16"]


def test_an_existing_directory_of_someone_else_is_refused_and_kept(tmp_path):
    victim = tmp_path / "victim"
    (victim / "important").mkdir(parents=True)
    (victim / "important" / "thesis.txt").write_text("years of work")
    result = run_module("train.synthetic", "--out", str(victim), *SMALL)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ") and "pass --overwrite" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (victim / "important" / "thesis.txt").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]  # nothing left beside it


def test_a_file_is_refused_and_kept(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    result = run_module("train.synthetic", "--out", str(target), *SMALL)
    assert result.returncode == 2 and "is a file, not a directory" in result.stderr
    assert target.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_its_own_output_is_replaced_and_overwrite_replaces_anything(tmp_path):
    out = tmp_path / "data"
    assert run_module("train.synthetic", "--out", str(out), *SMALL).returncode == 0
    assert run_module("train.synthetic", "--out", str(out), *SMALL).returncode == 0  # a rerun, as make demo does
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "x.txt").write_text("x")
    forced = run_module("train.synthetic", "--out", str(tmp_path / "mine"), "--overwrite", *SMALL)
    assert forced.returncode == 0 and not (tmp_path / "mine" / "x.txt").exists()
