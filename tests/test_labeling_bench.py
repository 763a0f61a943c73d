"""The labeling benchmark's core (``benchmarks/labeling.py``) on a tiny pool (1,000 items, 4
evaluators, 1 s per mode): every mode runs (the real server, paced, the store from threads) and
reports its numbers, and the labels it counted are the labels the store holds. No timing is
asserted: on a shared machine only the shape of the report and the counts are stable."""

from __future__ import annotations

import pytest

from benchmarks import labeling
from tests.conftest import PG_URL

SUMMARY_KEYS = {
    "seconds",
    "labels",
    "labels_per_s",
    "next_calls",
    "next_p50_ms",
    "next_p99_ms",
    "next_max_ms",
    "submit_p50_ms",
    "submit_p99_ms",
    "labels_total",
    "empty_next",
    "errors",
    "first_errors",
}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request, tmp_path):
    if request.param == "postgres":
        pytest.importorskip("psycopg")
        from tests.conftest import _pg_engine

        _pg_engine().dispose()  # skips (fails under CI) when PostgreSQL is unreachable
    with labeling.database(request.param, tmp_path, PG_URL) as url:
        yield request.param, url


def test_benchmark_counts_add_up(onnx_bundle, tmp_path, backend):
    kind, url = backend
    res = labeling.run_backend(
        url,
        bundle=onnx_bundle,
        items=1000,
        evaluators=4,
        seconds=1.0,
        warmup=0.3,
        rate=40.0,
        workdir=tmp_path,
    )
    assert res["backend"] == ("postgresql" if kind == "postgres" else "sqlite")
    assert (res["items"], res["evaluators"]) == (1000, 4)
    for mode in labeling.MODES:
        out = res[mode]
        assert set(out) >= SUMMARY_KEYS, mode
        assert out["errors"] == 0, out["first_errors"]
        assert out["labels"] > 0 and out["next_calls"] == out["labels"]
        assert out["labels_total"] >= out["labels"]
        assert out["next_p50_ms"] <= out["next_p99_ms"] <= out["next_max_ms"]
        assert out["labels_per_s"] == pytest.approx(out["labels"] / out["seconds"], rel=0.01)
    assert res["paced"]["offered_labels_per_s"] == 40.0
    # Every label a mode counted (warm-up included) is in the store, and nothing else is.
    assert res["labels_counted"] == res["labels_in_store"] > 0
    assert res["pool_open_after"] <= 1000 - res["labels_in_store"] // 2

    rows = labeling.target_rows({kind: res})
    assert {r["mode"] for r in rows} == set(labeling.MODES)
    assert all(isinstance(r["met"], bool) for r in rows)


def test_pool_items_look_like_intake(schema):
    batches = list(labeling.pool_items(7, schema, chunk=3))
    assert [len(b) for b in batches] == [3, 3, 1]
    items = [i for b in batches for i in b]
    assert len({i.text_key for i in items}) == 7
    for item in items:
        assert set(item.suggestion) == set(schema.names)
        assert 0.0 <= item.uncertainty <= 1.0
        assert item.embedding is not None and item.embedding.shape == (256,)
