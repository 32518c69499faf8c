"""make archive / make serve refuse clearly: no trained run, no archive, no Java, a taken port."""

import socket

from serve import archive, server
from tests.conftest import ROOT, run_module
from core.errors import run_cli


def one_line_error(capsys, main, argv, message):
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err


def test_archive_without_a_trained_run(capsys, tmp_path):
    one_line_error(capsys, archive.main, ["--run", str(tmp_path / "nothing")], "no trained run at")


def test_archive_refuses_a_servable_changed_after_training(capsys, tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "servable" / "head" / "config.json").write_text("{}")
    one_line_error(capsys, archive.main, ["--run", str(run), "--model-store", str(tmp_path)], "does not match")


def test_serve_without_an_archive(capsys, tmp_path):
    config = tmp_path / "config.properties"
    config.write_text(
        (ROOT / "serve" / "config.properties").read_text().replace("model_store=model_store", f"model_store={tmp_path}")
    )
    one_line_error(capsys, server.main, ["start", "--config", str(config)], "no model archive at")


def test_a_second_server_looks_for_its_archive_in_its_own_model_store(capsys, tmp_path):
    store = tmp_path / "model_store_v2"
    argv = ["start", "--model-store", str(store), "--state-dir", str(tmp_path / "state")]
    one_line_error(capsys, server.main, argv, f"no model archive at {store / 'cars.mar'}")


def test_serve_without_java(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    one_line_error(capsys, server.main, ["start"], "TorchServe needs Java 17+")


def test_serve_with_a_taken_port(capsys, tmp_path):
    (tmp_path / "cars.mar").write_bytes(b"placeholder")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = (ROOT / "serve" / "config.properties").read_text()
        text = text.replace("model_store=model_store", f"model_store={tmp_path}").replace(
            "127.0.0.1:8081", f"127.0.0.1:{port}"
        )
        (tmp_path / "config.properties").write_text(text)
        one_line_error(capsys, server.main, ["start", "--config", str(tmp_path / "config.properties")], f"port {port}")


def test_shipped_config_is_loopback_only_and_locked_down():
    properties = server.read_properties(ROOT / "serve" / "config.properties")
    assert all(url.startswith("http://127.0.0.1:") for url in server.addresses(properties).values())
    assert properties["enable_model_api"] == "false"
    assert properties["allowed_urls"].startswith("^file://")
    assert '"1.0"' in properties["models"] and archive.ARCHIVE_VERSION == "1.0"


def test_archive_help():
    assert run_module("serve.archive", "--help").returncode == 0


def test_serve_with_an_old_java(capsys, monkeypatch, tmp_path):
    fake = tmp_path / "java"
    fake.write_text("#!/bin/sh\necho 'openjdk version \"11.0.22\" 2024-01-16' >&2\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    one_line_error(capsys, server.main, ["start"], 'TorchServe needs Java 17+, found openjdk version "11.0.22"')


def test_serve_with_a_missing_or_broken_config(capsys, tmp_path):
    one_line_error(capsys, server.main, ["start", "--config", str(tmp_path / "nope.properties")], "config not found")
    (tmp_path / "bad.properties").write_text("inference_address=0.0.0.0\n")
    one_line_error(capsys, server.main, ["start", "--config", str(tmp_path / "bad.properties")], "must look like")


def test_archive_with_a_corrupt_run_json(capsys, tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "run.json").write_text("{truncated")
    one_line_error(capsys, archive.main, ["--run", str(run), "--model-store", str(tmp_path)], "is not valid JSON")


def test_stop_stops_only_the_server_it_started(tmp_path):
    """`make stop` reads its own state directory: another process's pid there is not killed, and
    with no pid file it says so instead of stopping whichever TorchServe runs on the machine."""
    import subprocess

    from serve.torchserve import PID_FILE, stop_started_in

    assert stop_started_in(tmp_path) is False
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        (tmp_path / PID_FILE).write_text(f"{bystander.pid}\n")  # a stale pid file, the pid reused
        assert stop_started_in(tmp_path) is False
        assert bystander.poll() is None and not (tmp_path / PID_FILE).exists()
    finally:
        bystander.kill()
        bystander.wait()
    result = run_module("serve.server", "stop", "--state-dir", str(tmp_path))
    assert result.returncode == 0 and "no TorchServe started from" in result.stdout


def test_serve_with_a_bad_port(capsys, tmp_path):
    (tmp_path / "cars.mar").write_bytes(b"placeholder")
    config = tmp_path / "config.properties"
    config.write_text(
        (ROOT / "serve" / "config.properties").read_text().replace("model_store=model_store", f"model_store={tmp_path}")
    )
    argv = ["start", "--config", str(config), "--port", "70000", "--state-dir", str(tmp_path / "state")]
    one_line_error(capsys, server.main, argv, "--port must be in 1..65533")


def test_archive_into_a_file_is_one_line(capsys, tiny_run, tmp_path):
    (tmp_path / "store").write_text("a file, not a folder")
    argv = ["--run", str(tiny_run), "--model-store", str(tmp_path / "store")]
    one_line_error(capsys, archive.main, argv, "is a file, not a directory")
    assert (tmp_path / "store").read_text() == "a file, not a folder"
