"""The benchmarks' non-timing logic: load generator bookkeeping, metric parsing, ablation steps.
(No timed assertions: figures belong in docs/benchmarks.md.)"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.common import parse_list, percentiles
from bench.inprocess import BASELINE, ablation
from bench.loadgen import Sample, closed_loop, open_loop, summarise, windows
from bench.serving import batch_sizes_since, describe_batches


class Echo(BaseHTTPRequestHandler):
    """200 for a body, 400 for an empty one; keep-alive like TorchServe."""

    protocol_version = "HTTP/1.1"
    accepts: set[str] = set()  # the Accept headers seen

    def do_POST(self) -> None:
        Echo.accepts.add(self.headers.get("Accept", ""))
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        self.send_response(200 if body else 400)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def echo_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/predictions/cars"
    server.shutdown()
    server.server_close()


def test_closed_loop_counts_every_answer_and_its_status(echo_url):
    Echo.accepts.clear()
    samples = closed_loop(echo_url, [b"x", b""], concurrency=2, seconds=0.5)
    assert samples and {s.status for s in samples} == {200, 400}  # client 0 sends b"x", client 1 sends b""
    assert all(s.latency >= 0 for s in samples)
    assert [s.done for s in samples] == sorted(s.done for s in samples)
    assert Echo.accepts == {"application/octet-stream"}  # the binary answer, as clients/ asks for


def test_load_can_ask_for_json_answers(echo_url):
    Echo.accepts.clear()
    assert open_loop(echo_url, [b"x"], rate=20, seconds=0.2, connections=2, answer="json")
    assert Echo.accepts == {"application/json"}


def test_open_loop_sends_at_the_given_rate(echo_url):
    samples = open_loop(echo_url, [b"x"], rate=40, seconds=0.5, connections=4)
    assert len(samples) == 20 and all(s.status == 200 for s in samples)


def test_summaries_split_a_run_into_windows():
    samples = [Sample(done=t / 10, latency=0.010 * (1 + t % 2), status=200) for t in range(100)]
    samples.append(Sample(done=5.05, latency=0.5, status=0))  # an error is counted, not timed
    whole = summarise(samples, 0.0, 10.0)
    assert whole["img_s"] == 10.0 and whole["errors"] == 1 and whole["p50_ms"] == pytest.approx(15.0)
    parts = windows(samples, 0.0, 10.0, 4)
    assert [p["img_s"] for p in parts] == [10.0, 10.0, 10.0, 10.0] and sum(p["errors"] for p in parts) == 1


def test_batch_sizes_are_read_from_the_servers_output_after_an_offset(tmp_path):
    log = tmp_path / "torchserve.out"
    line = "INFO W-9000 result=[METRICS]BatchSize.Count:{}|#ModelName:cars,Level:Model|#type:GAUGE\n"
    log.write_text(line.format(3) + "noise\n")
    sizes, offset = batch_sizes_since(log, 0)
    assert sizes == [3]
    with open(log, "a") as f:
        f.write(line.format(8) + line.format(8) + line.format(5))
    sizes, _ = batch_sizes_since(log, offset)
    assert sizes == [8, 8, 5]
    assert describe_batches(sizes) == {"batches": 3, "mean_batch": 7.0, "batch_sizes": "5x1, 8x2"}


def test_ablation_steps_are_cumulative_and_checked():
    steps = ablation(["tensor", "bf16"])
    assert [name for name, _ in steps] == ["baseline", "+tensor", "+bf16"]
    assert steps[0][1] == BASELINE and steps[2][1] == {**BASELINE, "decode": "tensor", "amp": True}
    with pytest.raises(SystemExit, match="unknown --ablate"):
        ablation(["turbo"])


def test_list_arguments_and_empty_percentiles():
    assert parse_list("1, 8,16") == [1, 8, 16]
    assert all(value != value for value in percentiles([]).values())  # NaN: nothing was answered


def test_generated_photos_are_jpegs_when_no_folder_is_given(tmp_path, monkeypatch):
    import bench.common as common

    monkeypatch.setattr(common, "CARS_DEV", tmp_path / "absent")
    bodies, source = common.load_photos(3)
    assert len(bodies) == 3 and all(b[:3] == b"\xff\xd8\xff" for b in bodies) and "generated" in source


def test_response_encoding_rows_round_trip_and_render(tmp_path):
    from bench import report, response_encoding

    out = tmp_path / "encoding.json"
    payload = response_encoding.main(["--dims", "8,2048", "--seconds", "0.01", "--repeats", "1", "--json", str(out)])
    rows = {(row["dim"], row["encoding"]): row for row in payload["results"]}
    assert set(rows) == {(d, e) for d in (8, 2048) for e in ("torchserve_json", "handler_json", "handler_binary")}
    assert rows[2048, "handler_binary"]["bytes"] == 4 * 2048  # float32, nothing else
    assert rows[2048, "handler_json"]["bytes"] < rows[2048, "torchserve_json"]["bytes"]  # no indentation
    assert "| 2048 | handler_binary | 8192 |" in report.render(json.loads(out.read_text()))
