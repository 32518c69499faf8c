"""The Qdrant server store (clients/qdrant_store.py) and copies between stores (clients/copy_store.py).

qdrant-client and qdrant-edge-py live in the thin client venv (.venv-client), not in the training
venv, so the checks of tests/clients/qdrant_checks.py (contract tests against a stand-in server,
copies between real Edge, .npz and stand-in stores) run twice over, as edge_checks.py's do: in
process where both are importable (skipped otherwise), and as a script under .venv-client. What
needs neither (location parsing, .npz to .npz copies, the CLI's errors) runs here directly.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess

import numpy as np
import pytest

from clients.api import ClientError
from clients.copy_store import copy
from clients.gallery import Gallery
from clients.qdrant_store import DEFAULTS, collection_key, parse_location
from clients.store import same_gallery
from tests.clients.edge_checks import rows_metadata, unit_rows
from tests.clients.test_end_to_end import CLIENT_PY
from tests.conftest import ROOT

HAVE_QDRANT = all(importlib.util.find_spec(name) is not None for name in ("qdrant_client", "qdrant_edge"))
NEEDS_CLIENT_VENV = pytest.mark.skipif(
    not CLIENT_PY.exists(), reason="the thin client venv is missing: make client-install"
)

if HAVE_QDRANT:
    from tests.clients import qdrant_checks

    CHECK_NAMES = list(qdrant_checks.CHECKS)
else:
    CHECK_NAMES = []


@pytest.mark.skipif(
    not HAVE_QDRANT, reason="qdrant-client/qdrant-edge-py are not installed here (the client venv test runs them)"
)
@pytest.mark.parametrize("name", CHECK_NAMES)
def test_qdrant_checks_in_process(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    qdrant_checks.CHECKS[name](tmp_path)


@NEEDS_CLIENT_VENV
def test_qdrant_checks_under_the_client_venv():
    probe = subprocess.run([str(CLIENT_PY), "-c", "import qdrant_client, qdrant_edge"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the client venv has no qdrant-client/qdrant-edge-py: make client-install")
    result = subprocess.run(
        [str(CLIENT_PY), "tests/clients/qdrant_checks.py"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert " passed, 0 failed" in result.stdout and "FAIL" not in result.stdout, result.stdout


def test_location_options_and_defaults():
    location = parse_location("qdrant+https://db.example.com/cars?shards=6&replicas=2&quantization=int8&on_disk=1")
    assert (location.url, location.collection) == ("https://db.example.com", "cars")
    assert location.given == {"shards", "replicas", "quantization", "on_disk"}
    assert location.options == {**DEFAULTS, "shards": 6, "replicas": 2, "quantization": "int8", "on_disk": True}
    plain = parse_location("qdrant+http://127.0.0.1:6333/")
    assert (plain.url, plain.collection, plain.given) == ("http://127.0.0.1:6333", "cars", frozenset())
    assert (plain.options["batch_size"], plain.options["retries"], plain.options["replicas"]) == (256, 5, 1)
    for bad, message in (
        ("qdrant+http://h/c?shards=", "shards must be a whole number"), ("qdrant+http://h/c?x=1", "unknown option 'x'"),
        ("qdrant+http://h/c?m=2", "m must be a whole number from 4"), ("qdrant://h/c", "qdrant://DIR is Qdrant Edge"),
        ("qdrant+http://h:x/c", "the port must be a number"),
    ):  # fmt: skip
        with pytest.raises(ClientError, match=message):
            parse_location(bad)


def test_one_collection_spelled_differently_has_one_key():
    key = ("loopback", 6333, "cars")
    for same in ("qdrant+http://127.0.0.1:6333/cars", "qdrant+http://localhost/cars?batch_size=10",
                 "qdrant+https://LOCALHOST.:6333/", "qdrant+http://[::1]:6333//cars/?shards=2",
                 "qdrant+http://[::ffff:127.0.0.1]/cars"):  # fmt: skip
        assert collection_key(same) == key, same
    assert collection_key("qdrant+https://DB.example.com/x?replicas=2") == ("db.example.com", 6333, "x")
    assert collection_key("qdrant+http://[2001:db8:0::1]:443/x")[:2] == ("2001:db8::1", 443)
    for other in ("qdrant+http://127.0.0.1:6334/cars", "qdrant+http://127.0.0.1/other", "qdrant+http://db/cars"):
        assert collection_key(other) != key, other


def test_same_gallery_compares_what_locations_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    assert same_gallery("a.npz", "./a.npz") and same_gallery("a.npz", str(tmp_path / "d" / ".." / "a.npz"))
    assert same_gallery("qdrant://g", f"qdrant://{tmp_path}/g/?collection=cars&quantization=int8")
    assert same_gallery("qdrant+http://localhost/cars", "qdrant+http://127.0.0.1:6333/?retries=2")
    assert not same_gallery("a.npz", "b.npz") and not same_gallery("qdrant://g", "qdrant://g?collection=other")
    assert not same_gallery("qdrant://g", "g") and not same_gallery("qdrant://g", "qdrant+http://g/cars")
    with pytest.raises(ClientError, match="unknown option 'x'"):
        same_gallery("a.npz", "qdrant+http://h/c?x=1")


def npz(path, version: str, n: int, dim: int = 16) -> Gallery:
    gallery = Gallery(version, dim, path=path)
    gallery.add(unit_rows(n, dim), *rows_metadata(n))
    return gallery


def test_npz_copy_keeps_rows_resumes_and_refuses_another_model(tmp_path):
    source = npz(tmp_path / "a.npz", "v1", 50)
    summary = copy(str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), batch_size=16)
    assert (summary["copied"], summary["already_present"], summary["total"]) == (50, 0, 50)
    copied = Gallery.load(tmp_path / "b.npz")
    assert copied.rows == source.rows and np.array_equal(copied.embeddings, source.embeddings)
    partial = Gallery("v1", 16, path=tmp_path / "c.npz")
    partial.add(source.embeddings[:20], source.paths[:20], source.labels[:20])
    assert copy(str(tmp_path / "a.npz"), str(tmp_path / "c.npz"))["copied"] == 30
    npz(tmp_path / "v2.npz", "v2", 5)
    with pytest.raises(ClientError, match="holds embeddings of model v2"):
        copy(str(tmp_path / "a.npz"), str(tmp_path / "v2.npz"))


def test_npz_copy_onto_itself_spelled_another_way_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    npz(tmp_path / "a.npz", "v1", 7)
    for source, destination in (("a.npz", "./a.npz"), ("./a.npz", str(tmp_path / "a.npz"))):
        with pytest.raises(ClientError, match="are the same gallery"):
            copy(source, destination, rebuild=True)
    assert len(Gallery.load(tmp_path / "a.npz")) == 7


@NEEDS_CLIENT_VENV
def test_copy_cli_prints_a_summary_or_one_line(tmp_path):
    npz(tmp_path / "a.npz", "v1", 10)
    command = [str(CLIENT_PY), "-m", "clients.copy_store", "--from", str(tmp_path / "a.npz")]
    done = subprocess.run([*command, "--to", str(tmp_path / "b.npz"), "--json"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["copied"] == 10
    for destination, message in (
        (str(tmp_path / "a.npz"), "the same gallery"),
        ("qdrant+http://127.0.0.1:9/cars?shards=zero", "shards must be a whole number"),
        (str(tmp_path / "b.txt"), "ends in .npz"),
    ):
        failed = subprocess.run([*command, "--to", destination], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert failed.returncode == 2, failed.stderr
        assert failed.stderr.startswith("error: ") and failed.stderr.count("\n") == 1, failed.stderr
        assert message in failed.stderr, failed.stderr
