"""The benchmark: its arithmetic, and a smoke run of ``benchmarks/bench.py --quick`` against the
tiny bundle (real export path, real server subprocess). No timing thresholds: on shared CI
machines only the shape of the report and the sign of the numbers are stable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmarks.measure import chunks, length_order, padding_ratios, summarize
from benchmarks.report import ratios, table, targets

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_padding_ratios_order_policies() -> None:
    lengths = [10, 2, 10, 2]
    r = padding_ratios(lengths, batch_size=2, fixed=16)
    assert r["useful_tokens"] == 24
    assert r["fixed"] == pytest.approx(64 / 24, abs=1e-3)
    assert r["arrival_order"] == pytest.approx(40 / 24, abs=1e-3)  # [10,2] [10,2]
    assert r["length_sorted"] == pytest.approx(1.0)  # [2,2] [10,10]
    # Posts longer than the max length are truncated before they count.
    assert padding_ratios([40], 1, fixed=16)["fixed"] == 1.0


def test_chunks_and_length_order() -> None:
    assert chunks("abcde", 2) == [["a", "b"], ["c", "d"], ["e"]]
    order = length_order([3, 1, 2, 1])
    assert order == [1, 3, 2, 0]  # stable for ties
    assert chunks("wxyz", 2, order) == [["x", "z"], ["y", "w"]]


def test_summarize_uses_wall_time_only_when_given() -> None:
    s = summarize([0.01, 0.03], posts=4)
    assert s["posts_per_s"] == pytest.approx(100.0)
    assert s["p50_ms"] == pytest.approx(20.0)
    assert summarize([0.01, 0.03], posts=4, wall_s=0.02)["posts_per_s"] == pytest.approx(200.0)
    with pytest.raises(ValueError):
        summarize([], posts=0)


def test_ratios_and_targets_tolerate_missing_parts() -> None:
    result = {
        "variants": {
            "pytorch_pipeline": {"batch_32": {"posts_per_s": 100.0}},
            "scorer": {"batch_32": {"posts_per_s": 300.0}},
        },
        "http": {"batch_32": {"1_client": {"posts_per_s": 500.0}}, "single": {"p99_ms": 40.0}},
    }
    result["ratios"] = ratios(result)
    assert result["ratios"]["http_b32_vs_pipeline_b32"] == 5.0
    assert result["ratios"]["ort_int8_batch_32_vs_pipeline"] is None
    met = {t["name"]: t["met"] for t in targets(result)}
    assert met == {
        "http_b32_vs_pipeline_b32": True,
        "http_single_p99_ms": False,
        "serving_peak_rss_mb": None,
        "start_to_ready_s": None,
    }
    text = table(["a", "n"], [["x", 1.5], ["yy", None]])
    assert "1.50" in text and "-" in text.splitlines()[-1]


def test_turn_taking_ratio_is_reported_beside_the_headline() -> None:
    """HTTP 380 against a pipeline at 100 timed apart, 360 against 80 taking turns: both
    ratios are reported, the target reads the one timed apart."""
    result = {
        "variants": {"pytorch_pipeline": {"batch_32": {"posts_per_s": 100.0}}},
        "http": {
            "batch_32": {"1_client": {"posts_per_s": 380.0}},
            "batch_32_paired": {
                "pipeline": {"posts_per_s": 80.0},
                "http_1_client": {"posts_per_s": 360.0},
            },
        },
    }
    result["ratios"] = ratios(result)
    assert result["ratios"]["http_b32_vs_pipeline_b32"] == 3.8
    assert result["ratios"]["http_b32_vs_pipeline_b32_paired"] == 4.5
    headline = targets(result)[0]
    assert (headline["value"], headline["met"]) == (3.8, False)
    del result["http"]["batch_32_paired"]
    assert ratios(result)["http_b32_vs_pipeline_b32_paired"] is None


class _Scoring(BaseHTTPRequestHandler):
    """Answers POST /v1/score with 200, or with 503 for a body that asks for it."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(503 if b"refuse" in body else 200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def test_paired_batch_32_times_both_sides_on_the_same_posts(tmp_path: Path) -> None:
    from benchmarks.bench import BATCH, paired_batch_32, parse_args
    from benchmarks.http_load import Server
    from benchmarks.variants import Variant

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Scoring)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        server = Server(None, f"http://127.0.0.1:{httpd.server_port}", "k", tmp_path / "log")  # type: ignore[arg-type]
        seen: list[list[str]] = []
        baseline = Variant("pytorch_pipeline", "fake", "arrival", predict=seen.append)
        args = parse_args(["--quick"])
        texts = [f"post {i}" for i in range(2 * BATCH + 5)]
        out = paired_batch_32(args, server, baseline, texts)
        assert out["rounds"] == 3 and out["baseline"] == "pytorch_pipeline"  # turn about
        # Every post through each side once, in batches of 32 (after one untimed warm-up call).
        assert [len(b) for b in seen[args.warmup :]] == [BATCH, BATCH, 5]
        for side in ("pipeline", "http_1_client"):
            assert out[side]["posts"] == len(texts) and out[side]["calls"] == 3
            assert out[side]["posts_per_s"] > 0
        with pytest.raises(RuntimeError, match="HTTP 503"):
            paired_batch_32(args, server, baseline, ["refuse"])
    finally:
        httpd.shutdown()


def _positive_numbers(d: dict, *keys: str) -> None:
    for k in keys:
        assert isinstance(d[k], int | float) and d[k] > 0, (k, d[k])


def test_bench_quick_smoke(tiny_bundle: Path, onnx_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable, "benchmarks/bench.py", "--quick", "--skip-pytorch",
        "--bundle", str(tiny_bundle), "--out", str(out),
        # A ready fp32 graph with the same inputs and outputs, so the fp32 path runs without
        # exporting MiniLM (that needs minutes of CPU on a busy machine).
        "--fp32-onnx", str(onnx_bundle / "model.onnx"),
    ]  # fmt: skip
    env = os.environ | {"TQDM_DISABLE": "1"}
    proc = subprocess.run(
        cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "targets (shown, not asserted)" in proc.stdout

    r = json.loads(out.read_text())
    sections = {"machine", "bundle", "workload", "padding", "variants", "http", "ratios", "targets"}
    assert sections <= set(r)
    m = r["machine"]
    assert m["cpu_model"] and m["logical_cores"] >= 1 and m["versions"]["onnxruntime"]
    assert r["bundle"]["precision"] == "int8"
    assert r["workload"]["n_texts"] > 0
    for k in ("fixed", "arrival_order", "length_sorted"):
        assert r["padding"][k] >= 1.0
    assert r["padding"]["fixed"] >= r["padding"]["arrival_order"] >= r["padding"]["length_sorted"]

    v = r["variants"]
    assert v["pytorch_pipeline"]["skipped"] == "--skip-pytorch"
    for key in ("ort_fp32", "ort_int8", "scorer"):
        for batch in ("batch_1", "batch_32"):
            _positive_numbers(v[key][batch], "posts_per_s", "p50_ms", "p99_ms", "posts")

    h = r["http"]
    _positive_numbers(h, "start_to_ready_s")
    _positive_numbers(h["single"], "posts_per_s", "p50_ms", "p99_ms", "requests")
    for name in ("1_client", "2_clients"):
        _positive_numbers(h["batch_32"][name], "posts_per_s", "p50_ms", "p99_ms", "requests")
    _positive_numbers(h["memory_mb"]["after_load"], "VmHWM", "VmRSS")
    from benchmarks.bench import SERVER_VARIANTS

    assert set(h["single_variants"]) == set(SERVER_VARIANTS)
    for name, row in h["single_variants"].items():
        assert row["env"] == SERVER_VARIANTS[name]
        _positive_numbers(row, "posts_per_s", "p50_ms", "p99_ms", "requests")
        assert r["ratios"][f"http_single_p99_{name}_vs_default"] > 0
    assert h["errors"] == {}
    assert not Path(f"/proc/{h['server_pid']}").exists(), "the server outlived the benchmark"

    assert r["ratios"]["scorer_vs_int8_batch_32"] > 0
    assert [t["name"] for t in r["targets"]] == [
        "http_b32_vs_pipeline_b32", "http_single_p99_ms", "serving_peak_rss_mb", "start_to_ready_s",
    ]  # fmt: skip


def test_quant_recipes_smoke(onnx_bundle: Path, tmp_path: Path) -> None:
    """Every asked-for recipe is built from the fp32 graph and measured against it; fp32 agrees
    with itself and is the 1.00x reference."""
    pytest.importorskip("transformers")
    from benchmarks import quant_recipes

    out = tmp_path / "q.json"
    rc = quant_recipes.main(
        ["--fp32-bundle", str(onnx_bundle), "--recipes", "int8_per_token", "int8_weights",
         "--posts", "24", "--posts-b1", "4", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    res = json.loads(out.read_text())["results"]
    assert set(res) == {"fp32", "int8_per_token", "int8_weights"}
    assert set(res["fp32"]["agreement"].values()) == {100.0}
    for r in res.values():
        assert r["b32_posts_per_s"] > 0 and r["batch_flip_rate"] == 0.0


def test_routing_bench_smoke(tmp_path: Path) -> None:
    """One row per roster size, with positive timings and the per-post / compiled-once ratio."""
    from benchmarks import routing

    out = tmp_path / "r.json"
    assert routing.main(["--sizes", "3", "30", "--posts", "20", "--out", str(out)]) == 0
    res = json.loads(out.read_text())["results"]
    assert set(res) == {"3", "30"}
    for r in res.values():
        assert r["compiled_once_us_per_post"] > 0 and r["compile_us"] > 0
        assert r["speedup"] > 0


class _KeepAlive(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive: echoes the body's length, in chunks on /chunked; counts the
    connections it was given."""

    protocol_version = "HTTP/1.1"
    connections = 0

    def setup(self) -> None:
        type(self).connections += 1
        super().setup()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        reply = f'{{"got": {len(body)}, "auth": "{self.headers["Authorization"]}"}}'.encode()
        self.send_response(201)
        if self.path == "/chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (reply[:5], reply[5:]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


def test_raw_client_keeps_the_connection_and_reads_both_framings() -> None:
    from benchmarks.http_load import RawClient

    _KeepAlive.connections = 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _KeepAlive)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_port}"
        with RawClient(url, {"Authorization": "Bearer k"}) as client:
            for path, body in (("/v1/score", b"x" * 70_000), ("/chunked", b"abc"), ("/", b"")):
                status, reply = client.request("POST", path, body)
                assert status == 201
                assert json.loads(reply) == {"got": len(body), "auth": "Bearer k"}
        assert _KeepAlive.connections == 1
    finally:
        httpd.shutdown()


def test_raw_client_reconnects_to_a_server_that_closes_and_reports_no_server(
    tmp_path: Path,
) -> None:
    from benchmarks.http_load import HTTPTransportError, RawClient, Server, closed_loop, free_port

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Scoring)  # HTTP/1.0: closes after each reply
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with RawClient(f"http://127.0.0.1:{httpd.server_port}", {}) as client:
            assert [client.request("POST", "/", b"a")[0] for _ in range(3)] == [200] * 3
            assert client.request("POST", "/", b"refuse")[0] == 503
    finally:
        httpd.shutdown()
    with pytest.raises(HTTPTransportError), RawClient(f"http://127.0.0.1:{free_port()}", {}) as c:
        c.request("POST", "/", b"")
    # Under load, a request that got no response counts as a failure, not a latency.
    gone = Server(None, f"http://127.0.0.1:{free_port()}", "k", tmp_path / "log")  # type: ignore[arg-type]
    gone.cpu_s = lambda: 0.0  # type: ignore[method-assign]
    res = closed_loop(
        gone, [b"{}"], posts_per_request=1, clients=2, max_requests=4, max_seconds=5, desc="x"
    )
    assert res.failures == 4 and not res.latencies_s


def test_choose_quick_two_bundles(tmp_path: Path) -> None:
    """Both bundles timed on the same posts; the first is the 1.00x reference, and a bundle
    with other topic labels is still benched, its labels flagged."""
    from benchmarks import choose
    from features.schema import LabelSchema, default_schema_path
    from tests._tiny_onnx import build_onnx_bundle

    schema = LabelSchema.load(default_schema_path())
    other = schema.model_dump()
    for task in other["tasks"]:
        if task["name"] == "topic":
            task["labels"] = ["card_lost", "refund", "transfer"]
    first = build_onnx_bundle(tmp_path / "a")
    second = build_onnx_bundle(
        tmp_path / "b", seed=1, dim=32, schema=LabelSchema.model_validate(other)
    )
    out = tmp_path / "choose.json"
    argv = ["--quick", "--bundle", str(first), "--bundle", str(second), "--out", str(out)]
    assert choose.main(argv) == 0
    r = json.loads(out.read_text())
    rows = r["bundles"]
    assert [row["path"] for row in rows] == [str(first), str(second)]
    for row in rows:
        _positive_numbers(row["batch_32"], "posts_per_s", "posts")
        _positive_numbers(row["batch_1"], "p50_ms", "p95_ms")
        assert row["size_mb"] > 0 and row["b32_vs_first"] > 0
        assert row["metrics"]["sentiment_macro_f1"] == 0.0  # what the tiny bundle records
    assert rows[0]["b32_vs_first"] == 1.0
    assert (rows[0]["labels_differ"], rows[1]["labels_differ"]) == ([], ["topic"])
    assert r["machine"]["cpu_model"] and "cpu_flags" in r["machine"]
