"""Row metadata from labels and sidecars, filter parsing, and the file store's mask = the reference."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from clients.api import ClientError
from clients.gallery import Gallery
from clients.metadata import load_sidecar, matches, parse_label, parse_where, row_id, row_metadata


@pytest.mark.parametrize(
    "label, expected",
    [
        ("001_AM_General_Hummer_SUV_2000", {"make": "AM General", "model": "Hummer SUV", "year": 2000}),
        ("Aston Martin V8 Vantage Coupe 2012", {"make": "Aston Martin", "model": "V8 Vantage Coupe", "year": 2012}),
        ("087_Dodge_Ram_Pickup_3500_2010", {"make": "Dodge", "model": "Ram Pickup 3500", "year": 2010}),
        ("synthetic_blue_circle", {}),
        ("", {}),
    ],
)  # fmt: skip
def test_make_model_and_year_come_from_stanford_cars_labels(label, expected):
    assert parse_label(label) == expected


def test_row_metadata_keeps_its_own_keys_over_a_sidecar():
    row = row_metadata("/cars/a.jpg", "002_Acura_RL_Sedan_2012", {"price": 9000})
    assert row == {"make": "Acura", "model": "RL Sedan", "year": 2012, "price": 9000, "id": row_id("/cars/a.jpg"),
                   "path": "/cars/a.jpg", "label": "002_Acura_RL_Sedan_2012"}  # fmt: skip


@pytest.mark.parametrize(
    "text, field, op, value",
    [("make=Audi", "make", "=", "Audi"), ("year>=2010", "year", ">=", 2010.0), ("price < 2e4", "price", "<", 20000.0),
     ("make!=BMW", "make", "!=", "BMW"), ("model=RL Sedan", "model", "=", "RL Sedan")],
)  # fmt: skip
def test_filters_parse(text, field, op, value):
    condition = parse_where(text)
    assert (condition.field, condition.op, condition.value) == (field, op, value)


@pytest.mark.parametrize("text", ["make", "=Audi", "year>=", "year>=new", "1make=x", "a b=c"])
def test_bad_filters_are_one_readable_error(text):
    with pytest.raises(ClientError, match="bad filter"):
        parse_where(text)


def test_sidecar_files_csv_and_json(tmp_path):
    (tmp_path / "a.csv").write_text("file,price,listing\ncar1.jpg,12000,L-1\ncar2.jpg,,L-2\n")
    expected = {"car1.jpg": {"price": 12000, "listing": "L-1"}, "car2.jpg": {"listing": "L-2"}}
    assert load_sidecar(tmp_path / "a.csv") == expected
    (tmp_path / "a.json").write_text(json.dumps({"car1.jpg": {"price": 1.5}}))
    assert load_sidecar(tmp_path / "a.json") == {"car1.jpg": {"price": 1.5}}
    for name, text, message in [
        ("b.csv", "name,price\nx,1\n", "needs a 'path' or 'file' column"),
        ("c.json", "[1, 2]", "expected a JSON object"),
        ("d.csv", "file,label\nx.jpg,stolen\n", "reserved"),
    ]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ClientError, match=message):
            load_sidecar(tmp_path / name)
    with pytest.raises(ClientError, match="not found"):
        load_sidecar(tmp_path / "missing.csv")


def test_the_file_store_mask_agrees_with_the_reference_semantics():
    rng = random.Random(0)
    makes = ["Audi", "BMW", "Dodge", "Aston Martin"]
    gallery = Gallery("v", 4)
    paths = [f"/g/{i}.jpg" for i in range(300)]
    labels = [f"{rng.choice(makes).replace(' ', '_')}_Model_{rng.randint(1995, 2013)}" for _ in paths]
    extra = [{"price": rng.randint(5, 50) * 1000} if rng.random() < 0.7 else {} for _ in paths]
    gallery.add(np.random.default_rng(0).normal(size=(300, 4)), paths, labels, extra)
    for filters in (["make=Audi"], ["year>=2010"], ["make!=BMW", "year<2005"], ["price<20000"], ["price!=10000"],
                    ["make=Aston Martin", "price>=30000"], ["year=2012"], ["color=red"], ["color!=red"]):  # fmt: skip
        conditions = tuple(parse_where(f) for f in filters)
        expected = [i for i, row in enumerate(gallery.rows) if matches(row, conditions)]
        assert list(np.flatnonzero(gallery.mask(conditions))) == expected, filters
        hits = gallery.search(np.ones(4, dtype=np.float32) / 2, top_k=300, where=conditions)
        assert sorted(hit.path for hit in hits) == sorted(paths[i] for i in expected), filters


def test_payload_clauses_for_the_qdrant_stores():
    from clients.metadata import Clause, payload_clauses

    must, must_not = payload_clauses(tuple(parse_where(w) for w in ["make=Audi", "year>=2010", "price=5", "make!=BMW"]))
    assert must == [Clause("make", match="Audi"), Clause("year", range={"gte": 2010.0}),
                    Clause("price", range={"gte": 5.0, "lte": 5.0})]  # fmt: skip
    assert must_not == [Clause("make", match="BMW")]
