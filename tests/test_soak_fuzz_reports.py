"""The soak's and the fuzz run's reports (benchmarks/soak.py, benchmarks/fuzz.py), on made-up
inputs: the runs themselves take minutes and are not part of the suite.

A soak counts every 5xx against its target, sheds included, and shows the sheds apart with the
queue wait the server measured; a fuzz run fails on any failure but the API's known rules."""

from __future__ import annotations

from benchmarks.fuzz import KNOWN, summarize
from benchmarks.soak import Sample, deadline_ms, error_of, queue_wait
from benchmarks.soak import summarize as soak_summary
from serving.settings import Settings

METRICS = """# HELP caretriage_queue_wait_seconds How long ...
# TYPE caretriage_queue_wait_seconds histogram
caretriage_queue_wait_seconds_bucket{le="0.1"} 900.0
caretriage_queue_wait_seconds_bucket{le="0.5"} 985.0
caretriage_queue_wait_seconds_bucket{le="1.0"} 995.0
caretriage_queue_wait_seconds_bucket{le="2.0"} 999.0
caretriage_queue_wait_seconds_bucket{le="3.0"} 1000.0
caretriage_queue_wait_seconds_bucket{le="+Inf"} 1000.0
caretriage_queue_wait_seconds_count 1000.0
"""


def test_queue_wait_reads_the_histogram_against_the_deadline():
    w = queue_wait(METRICS, deadline_s=3.0)
    assert w["waits"] == 1000
    assert (w["p50_le_s"], w["p99_le_s"]) == (0.1, 1.0)
    assert (w["over_1s"], w["over_deadline"]) == (5, 0)
    assert queue_wait(METRICS, deadline_s=1.0)["over_deadline"] == 5
    assert queue_wait("no metrics here", 3.0) == {}
    # A quantile past the last finite bucket has no bound (JSON has no infinity).
    stalled = METRICS.replace('le="+Inf"} 1000.0', 'le="+Inf"} 1100.0')
    assert queue_wait(stalled, 3.0)["p99_le_s"] is None
    assert queue_wait(stalled, 3.0)["over_deadline"] == 100
    # Less the calibration's waits (an earlier reading): what the soak itself saw.
    calibration = METRICS.replace("900.0", "100.0").replace("985.0", "100.0")
    calibration = calibration.replace("995.0", "100.0").replace("999.0", "100.0")
    calibration = calibration.replace("1000.0", "100.0")
    w = queue_wait(METRICS, deadline_s=3.0, since=calibration)
    assert w["waits"] == 900 and w["buckets"]["0.1"] == 800 and w["over_1s"] == 5


def test_a_shed_is_a_5xx_shown_apart_from_other_server_errors():
    samples = [
        Sample(0.5, "single", 200, 0.02, 1),
        Sample(1.0, "batch32", 503, 0.003, 32, error_of(503, b'{"error":"overloaded"}')),
        Sample(1.5, "single", 503, 0.01, 1, error_of(503, b'{"error":"model_not_ready"}')),
        Sample(2.0, "agent_put", 500, 0.01, 0, error_of(500, b"<html>")),
        Sample(2.5, "single", 422, 0.01, 1, error_of(422, b'{"error":"validation_failed"}')),
    ]
    s = soak_summary(samples, readings=[], interval=60, warmup=0)
    assert s["5xx"] == 3 and s["shed"] == 1
    assert s["other_5xx"] == {"503 model_not_ready": 1, "500 unparsable": 1}
    assert s["rows"][0]["shed"] == 1 and s["rows"][0]["4xx"] == 1


def test_the_soak_runs_under_the_servers_default_deadline_unless_told():
    assert deadline_ms({}) == Settings.model_fields["queue_deadline_ms"].default == 3000.0
    assert deadline_ms({"CARETRIAGE_QUEUE_DEADLINE_MS": "1500"}) == 1500.0


def _report(failures: list[dict]) -> dict:
    return {
        "exit_code": 1,
        "complete": True,
        "running_time": 10.0,
        "operations": {"total": 2, "tested": 2},
        "test_cases": {"generated": 100},
        "failures": failures,
        "errors": [],
    }


def test_a_fuzz_failure_outside_the_known_rules_is_unexplained():
    known = next(op for code, op in KNOWN if code == "ST202")
    doc = _report(
        [
            {"code": "ST202", "title": "t", "count": 2, "operations": [known, "GET /v1/new"]},
            {"code": "ST101", "title": "Server error", "count": 1, "operations": ["GET /x"]},
        ]
    )
    s = summarize(doc, server_log="... ERROR caretriage.serving [-] unhandled\n")
    assert s["unexplained"] == ["ST101 GET /x", "ST202 GET /v1/new"]
    assert (s["server_error_failures"], s["server_log_errors"], s["failure_total"]) == (1, 1, 3)
    only_known = [{"code": "ST202", "title": "t", "count": 1, "operations": [known]}]
    clean = summarize(_report(only_known), server_log="")
    assert clean["unexplained"] == [] and clean["failure_total"] == 1
