"""Client CLIs refuse bad paths in one line before any work (no server is needed to see it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.clients.test_end_to_end import CLIENT_PY
from tests.conftest import ROOT

UNREACHABLE = "http://127.0.0.1:9/predictions/cars"  # nothing listens: the check must come first


def client(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CLIENT_PY), f"clients/{script}.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def one_line(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr, result.stderr


def labelled(tmp_path: Path) -> Path:
    (tmp_path / "images" / "audi").mkdir(parents=True)
    (tmp_path / "images" / "audi" / "a.jpg").write_bytes(b"\xff\xd8\xff")
    return tmp_path / "images"


def test_gallery_that_is_a_directory_is_refused_before_embedding(tmp_path):
    images = labelled(tmp_path)
    one_line(client("build_gallery", str(images), "--gallery", str(tmp_path), "--url", UNREACHABLE), "is a directory")
    one_line(client("build_gallery", str(images), "--gallery", "g.txt", "--url", UNREACHABLE), "ends in .npz")


def test_qdrant_location_without_a_directory_is_refused(tmp_path):
    images = labelled(tmp_path)
    result = client("build_gallery", str(images), "--gallery", "qdrant://", "--url", UNREACHABLE)
    one_line(result, "names no directory")
    assert not (ROOT / "collection").exists() and not (ROOT / "meta.json").exists()


def test_qdrant_server_options_are_checked_before_embedding(tmp_path):
    images = labelled(tmp_path)
    for gallery, message in (
        ("qdrant+http://127.0.0.1:9/cars?shards=x", "shards must be a whole number"),
        ("qdrant+http://127.0.0.1:9/cars?replica=2", "unknown option 'replica'"),
        ("qdrant://g?quantization=int4", "quantization must be"),
    ):
        one_line(client("build_gallery", str(images), "--gallery", gallery, "--url", UNREACHABLE, "--rebuild"), message)


def test_images_without_a_class_folder_are_refused_unless_unlabelled(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "car.jpg").write_bytes(b"\xff\xd8\xff")
    one_line(client("build_gallery", str(tmp_path / "flat"), "--url", UNREACHABLE), "with no class folder")
    accepted = client("build_gallery", str(tmp_path / "flat"), "--unlabelled", "--gallery", str(tmp_path / "g.npz"),
                      "--url", UNREACHABLE)  # fmt: skip
    assert "no class folder" not in accepted.stderr and "127.0.0.1:9" in accepted.stderr  # it got as far as the server


def test_query_with_a_directory_says_so(tmp_path):
    one_line(client("query", str(tmp_path), "--url", UNREACHABLE), "is a directory: give one image file")


def test_version_needs_no_other_flag():
    result = client("build_gallery", "--version")
    assert result.returncode == 0 and result.stdout.startswith("car-similarity ")
