"""bench/store_sizes.py: the computed sizes follow the formulas it states (docs/deploy.md's table)."""

from __future__ import annotations

import json
import subprocess
import sys

from bench.store_sizes import cars_label, get_args_parser, per_row, sizes
from clients.metadata import row_metadata, stored_payload
from core.labels import parse_label
from tests.conftest import ROOT


def test_per_row_parts_follow_the_stated_formulas():
    part = per_row(1280, m=16, path_chars=96, label_chars=32, index_bytes=48)
    assert (part["vectors"], part["int8"], part["graph"], part["indexes"]) == (5120, 1280, 128, 48)
    # The payload is the stored JSON alone (the indexes are their own part): make, model and year included.
    row = row_metadata("/" + "p" * 95, cars_label(32))
    assert {"make", "model", "year"} <= set(row) and len(cars_label(32)) == 32
    assert part["payload"] == len(json.dumps(stored_payload({**row, "model_version": "0" * 64})))
    bench = per_row(1280, 16, 16, 22, 48, model_version_chars=1, label="001_Audi A4 Sedan 2012")
    assert bench["payload"] == len(json.dumps({**row_metadata("/bench/12345.jpg", "001_Audi A4 Sedan 2012"),
                                               "model_version": "b"}))  # fmt: skip
    assert parse_label(cars_label(11))["make"] == "Audi" and parse_label(cars_label(10)) == {}
    args = get_args_parser().parse_args([])
    one = sizes(1_000_000, 1280, args)
    assert one["vectors_GB"] == 5.12 and one["int8_GB"] == 1.28 and one["graph_GB"] == 0.128
    assert one["edge_disk_GB"] == round(5.12 + 0.128 + one["payload_GB"] + 0.048, 4)  # each part once
    assert one["ram_float32_GB"] == round(5.12 + 0.128 + 0.048, 4)
    assert one["edge_disk_int8_GB"] == round(one["edge_disk_GB"] + one["int8_GB"], 4)
    assert one["cluster_disk_int8_GB"] == round(2 * one["edge_disk_int8_GB"], 4)
    assert sizes(10_000_000, 1280, args)["npz_GB"] == round(10 * one["npz_GB"], 4)  # linear in rows


def test_cli_prints_json_or_a_table_and_refuses_bad_numbers():
    command = [sys.executable, "bench/store_sizes.py"]
    done = subprocess.run([*command, "--json", "--rows", "1e6", "--dims", "2048"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [(r["rows"], r["dim"]) for r in json.loads(done.stdout)["results"]] == [(1_000_000, 2048)]
    table = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    assert table.count("\n") == 8 and "| 100M | 2048 |" in table
    bad = subprocess.run([*command, "--rows", "many"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
