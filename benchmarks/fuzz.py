"""Schemathesis, every check, against the real server on SQLite and PostgreSQL.

Issue 21 asks that a property-based run against the OpenAPI document find no 5xx on either
store, and the document is the contract a helpdesk integrates against, so every check runs
(server errors, status codes, content types, headers and bodies against the schema, refusal
of invalid data and acceptance of valid data, auth, stateful links). Per store this starts
``caretriage serve`` on a fresh store (an SQLite file, or a database made on the PostgreSQL
server and dropped after), with rate limits left on but budgets unlimited (one key carries
the whole run; a 429 would only test the limiter), an admin key, and a signed-in admin whose
session cookie and CSRF header ``benchmarks/fuzz_hooks.py`` hands to the workspace's routes,
so the cases reach the handlers instead of stopping at 401. It writes a summary per store
to ``results/fuzz.json`` (operations, test cases, failures by check and operation, server
ERROR lines) and schemathesis's own reports, with a pytest file reproducing each failure, to
``results/fuzz-<store>/``. Not part of ``make test``: ``make fuzz``.

    .venv/bin/python -m benchmarks.fuzz [--store sqlite|postgresql|both] [--max-examples 25]

The model is the tiny test bundle (``tests/_tiny_onnx.py``: the real tokenizer and output
shapes, scoring in microseconds), so the run's time goes to the API, not the encoder;
``--bundle models/caretriage-minilm`` fuzzes the shipped one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: import from the repo root, not benchmarks/
    sys.path[0] = str(REPO_ROOT)

from benchmarks import http_load, report  # noqa: E402
from benchmarks.soak import PG_URL, database  # noqa: E402

PHASES = "examples,coverage,fuzzing,stateful"
ADMIN_NAME = "fuzz-admin"
SERVER_ERROR = "ST101"  # schemathesis's code for a 5xx (the not_a_server_error check)
_ACROSS = "a rule across fields, which JSON Schema cannot state"
# Failures that are the API's rules, not defects: "schema-valid request rejected" (ST202) where
# a request passes the OpenAPI schema but breaks a rule between its fields, against stored
# state, or on a value's range in time, and one "schema-violating request accepted" (ST201)
# that is schemathesis's own artefact. Reported, never counted as failures; a failure of any
# other check or operation fails the run.
KNOWN: dict[tuple[str, str], str] = {
    ("ST202", "GET /v1/contacts"): f"customer_id or handle: {_ACROSS}",
    ("ST202", "DELETE /v1/contacts"): f"customer_id or handle: {_ACROSS}",
    ("ST202", "GET /v1/reports"): f"from before to, at most 366 days apart: {_ACROSS}",
    ("ST202", "POST /v1/assign"): f"result.id must be the post's id: {_ACROSS}",
    ("ST202", "POST /v1/contacts"): "timestamps between 1970-01-01 and a day after the clock",
    ("ST202", "POST /v1/score"): "post ids unique within a request; timestamps in range",
    ("ST202", "POST /v1/feedback"): "the agent must be on the roster (stored state)",
    ("ST202", "POST /v1/labeling/items/{item_id}/answer"): "a label for every served task",
    ("ST202", "POST /v1/labeling/items/{item_id}/resolve"): "a label for every served task",
    ("ST202", "PUT /v1/admin/dictionary"): "a whole dictionary, checked as the policy file is",
    ("ST202", "PUT /v1/admin/experiment"): f"stop after start, arms that differ: {_ACROSS}",
    ("ST202", "PUT /v1/agents"): "agent ids unique within the roster",
    ("ST202", "PUT /v1/agents/{agent_id}"): f"the body's id must be the path's: {_ACROSS}",
    ("ST202", "PATCH /v1/users/{name}"): "an admin cannot disable or demote themselves",
    # The stateful phase follows GET /v1/users to PATCH each user listed, the signed-in admin
    # too (the report names the phase, not the operation).
    ("ST202", "Stateful tests"): "an admin cannot disable or demote themselves",
    ("ST201", "POST /v1/labeling/items"): "a JSON value sent as a text/csv body is a CSV file "
    "to the server (its rows are read and reported)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--store", choices=["sqlite", "postgresql", "both"], default="both")
    p.add_argument("--bundle", type=Path, default=None, help="default: the tiny test bundle")
    p.add_argument("--pg-url", default=PG_URL, help="a PostgreSQL server to make a database on")
    p.add_argument("--max-examples", type=int, default=25, help="cases per operation and phase")
    p.add_argument("--seed", type=int, default=21)
    p.add_argument("--phases", default=PHASES)
    p.add_argument("--workers", type=int, default=1, help="schemathesis workers")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "fuzz.json")
    return p.parse_args(argv)


def tiny_bundle(workdir: Path) -> Path:
    """The test suite's tiny bundle (needs the ``onnx`` package, in the train extra)."""
    from tests._tiny_onnx import build_onnx_bundle

    return build_onnx_bundle(workdir / "tiny-bundle")


def add_admin(db_url: str) -> str:
    """An admin account in the server's store; returns its password."""
    from serving.labeling.accounts import hash_password
    from serving.labeling.store import LabelingStore
    from serving.store import Store

    password = secrets.token_urlsafe(16)
    store = Store(db_url)
    try:
        LabelingStore(store).add_user(ADMIN_NAME, "admin", hash_password(password))
    finally:
        store.dispose()
    return password


def sign_in(url: str, password: str) -> tuple[str, str]:
    """(session cookie, CSRF token) of the admin, through the sign-in form as a browser would."""
    import httpx

    with httpx.Client(base_url=url, trust_env=False, timeout=30.0) as http:
        page = http.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        if csrf is None:
            raise RuntimeError(f"no CSRF field on /login ({page.status_code})")
        r = http.post(
            "/login", data={"name": ADMIN_NAME, "password": password, "csrf": csrf.group(1)}
        )
        session = http.cookies.get("caretriage_session")
        if r.status_code != 303 or not session:
            raise RuntimeError(f"sign-in failed: {r.status_code} {r.text[:200]}")
        me = http.get("/v1/labeling/me")
        me.raise_for_status()
        return session, me.json()["csrf_token"]


def schemathesis_bin() -> str:
    exe = Path(sys.executable).parent / "schemathesis"
    if not exe.exists():
        raise SystemExit(
            "schemathesis is not installed in this environment: .venv/bin/pip install -e '.[dev]'"
        )
    return str(exe)


def run_schemathesis(
    server: http_load.Server,
    creds: dict[str, str],
    args: argparse.Namespace,
    report_dir: Path,
    cwd: Path,
) -> tuple[int, dict[str, Any]]:
    """Run schemathesis against ``server``; (exit code, its JSON report). It runs in ``cwd``
    (a fresh directory), where it keeps its ``.schemathesis`` cache: a cache from an earlier
    run would replay that run's failures first and make runs depend on each other."""
    report_dir.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    json_path = report_dir / "report.json"
    cmd = [
        schemathesis_bin(),
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        "all",
        "--phases",
        args.phases,
        "--max-examples",
        str(args.max_examples),
        "--seed",
        str(args.seed),
        "--workers",
        str(args.workers),
        "--request-timeout",
        "60",
        "--continue-on-failure",
        "--report",
        "json,pytest",
        "--report-dir",
        str(report_dir),
        "--report-json-path",
        str(json_path),
        "--output-truncate",
        "true",
    ]
    env = {
        **os.environ,
        **creds,
        "SCHEMATHESIS_HOOKS": "benchmarks.fuzz_hooks",
        "PYTHONPATH": str(REPO_ROOT),
    }
    log_path = report_dir / "schemathesis.log"
    with log_path.open("wb") as log:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if not json_path.exists():
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"schemathesis wrote no report (exit {proc.returncode}):\n{tail}")
    return proc.returncode, json.loads(json_path.read_text())


def summarize(doc: dict[str, Any], server_log: str) -> dict[str, Any]:
    """The figures worth keeping from schemathesis's report, and the server's ERROR lines.
    Each failure group's operations are split into the ``KNOWN`` rules and the rest."""
    failures = [
        {
            "code": f["code"],
            "title": f["title"],
            "count": f["count"],
            "operations": f["operations"],
            "unexplained": [op for op in f["operations"] if (f["code"], op) not in KNOWN],
        }
        for f in doc.get("failures", [])
    ]
    return {
        "exit_code": doc.get("exit_code"),
        "complete": doc.get("complete"),
        "running_time_s": doc.get("running_time"),
        "operations": doc.get("operations"),
        "test_cases": doc.get("test_cases"),
        "failures": failures,
        "failure_total": sum(f["count"] for f in failures),
        "server_error_failures": sum(f["count"] for f in failures if f["code"] == SERVER_ERROR),
        "unexplained": sorted({f"{f['code']} {op}" for f in failures for op in f["unexplained"]}),
        "errors": doc.get("errors"),
        "warnings": doc.get("warnings"),
        "server_log_errors": sum(1 for line in server_log.splitlines() if " ERROR " in line),
    }


def fuzz_store(store: str, bundle: Path, args: argparse.Namespace) -> dict[str, Any]:
    admin_key = secrets.token_urlsafe(32)
    report_dir = args.out.parent / f"fuzz-{store}"
    with tempfile.TemporaryDirectory(prefix=f"ct-fuzz-{store}-") as tmp:
        workdir = Path(tmp)
        with database(store, args.pg_url, workdir) as db_url:
            env = {
                "CARETRIAGE_DATABASE_URL": db_url,
                "CARETRIAGE_ADMIN_KEYS": admin_key,
                "CARETRIAGE_RATE_LIMIT_ENABLED": "true",
                "CARETRIAGE_RATE_LIMIT": "unlimited",
                "CARETRIAGE_POST_RATE_LIMIT": "unlimited",
                "CARETRIAGE_AUTH_FAILURE_LIMIT": "unlimited",
                "CARETRIAGE_LOG_LEVEL": "info",
                "CARETRIAGE_INFERENCE_WORKERS": "1",
                "CARETRIAGE_INTRA_OP_THREADS": "1",
                "CARETRIAGE_INTRA_OP_SPINNING": "false",
            }
            with http_load.running_server(bundle, workdir, env_extra=env) as server:
                session, csrf = sign_in(server.url, add_admin(db_url))
                creds = {
                    "CARETRIAGE_FUZZ_API_KEY": server.api_key,
                    "CARETRIAGE_FUZZ_ADMIN_KEY": admin_key,
                    "CARETRIAGE_FUZZ_SESSION": session,
                    "CARETRIAGE_FUZZ_CSRF": csrf,
                }
                print(f"{store}: schemathesis against {server.url} ...", flush=True)
                code, doc = run_schemathesis(
                    server, creds, args, report_dir, workdir / "schemathesis"
                )
                server_log = server.log_path.read_text(errors="replace")
            (report_dir / "server.log").write_text(server_log, encoding="utf-8")
    summary = summarize(doc, server_log)
    summary["schemathesis_exit_code"] = code
    summary["reports"] = str(report_dir)
    return summary


def render(store: str, s: dict[str, Any]) -> str:
    ops, cases = s["operations"] or {}, s["test_cases"] or {}
    lines = [
        f"{store}: {ops.get('tested')} of {ops.get('total')} operations tested "
        f"({ops.get('errored')} errored, {ops.get('skipped')} skipped), "
        f"{cases.get('generated')} test cases, {cases.get('with_failures')} with failures "
        f"({cases.get('unique_failures')} unique); server errors {s['server_error_failures']}; "
        f"server ERROR log lines {s['server_log_errors']}; {s['running_time_s']:.0f} s; "
        f"unexplained failures: {', '.join(s['unexplained']) or 'none'}"
    ]
    for f in s["failures"]:
        known = [op for op in f["operations"] if op not in f["unexplained"]]
        if known:
            lines.append(f"  {f['code']} {f['title']} (the API's rules): {', '.join(known)}")
    for e in s["errors"] or []:
        lines.append(f"  error x{e['count']}: {e['title']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()  # schemathesis runs in another directory
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from importlib.metadata import version

    stores = ["sqlite", "postgresql"] if args.store == "both" else [args.store]
    result: dict[str, Any] = {
        "format": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": report.machine_info(),
        "schemathesis": version("schemathesis"),
        "checks": "all",
        "phases": args.phases,
        "max_examples": args.max_examples,
        "seed": args.seed,
        "stores": {},
    }
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ct-fuzz-bundle-") as tmp:
        bundle = args.bundle or tiny_bundle(Path(tmp))
        result["bundle"] = "tiny test bundle" if args.bundle is None else str(args.bundle)
        for store in stores:
            summary = fuzz_store(store, bundle, args)
            result["stores"][store] = summary
            print(render(store, summary), flush=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({result['seconds']:.0f} s)")
    clean = all(
        not s["unexplained"] and s["server_log_errors"] == 0 and not s["errors"]
        for s in result["stores"].values()
    )
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
