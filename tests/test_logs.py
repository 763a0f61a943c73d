"""Logs (serving/logs.py): request ids, JSON or text lines, and never a post's or a stored
row's content, a database error above all (issue 21, defect 5: SQLAlchemy's error text carried
the whole agent row, PostgreSQL's DETAIL repeats it, and each 500 was logged twice)."""

from __future__ import annotations

import io
import json
import logging
import uuid

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError
from sqlalchemy import text
from sqlalchemy.engine import make_url

from serving.app import create_app
from serving.logs import (
    LOGGERS,
    JsonFormatter,
    TextFormatter,
    configure,
    request_id,
    safe_traceback,
    sane_request_id,
)
from serving.settings import Settings
from tests.conftest import PG_URL

KEY = "logs-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Values that must never reach a log: each is in a field of the agents written below.
SECRETS = ["zq-agent-7f3a", "Zelda Quuxington", "zq-group-91", "zq-skill-topic", "zq-csat-topic"]
AGENT = {
    "id": SECRETS[0],
    "name": SECRETS[1],
    "work_group": SECRETS[2],
    "skills": {SECRETS[3]: 0.75},
    "csat": {SECRETS[4]: 0.5},
    "capacity": 7,
}


def database(kind: str, request, tmp_path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'logs.db'}"
    schema = request.getfixturevalue("pg_schemas")()  # skips (fails under CI) without a server
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


def refuse_agent_writes(app, kind: str) -> None:
    """Make every agents write fail inside the database, the way a real fault would."""
    with app.state.store.engine.begin() as conn:
        if kind == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER no_agent_writes BEFORE INSERT ON agents "
                    "BEGIN SELECT RAISE(ABORT, 'agent writes refused'); END"
                )
            )
        else:  # PostgreSQL answers with DETAIL: Failing row contains (<the whole row>).
            conn.execute(text("ALTER TABLE agents ADD CONSTRAINT no_writes CHECK (false)"))


def everything_logged(records: list[logging.LogRecord]) -> str:
    """What any handler could show: messages, arguments and tracebacks, rendered raw (as a
    plain ``logging.Formatter`` would) and through both of ours."""
    plain, ours = logging.Formatter(), [TextFormatter(), JsonFormatter()]
    out = []
    for r in records:
        out.append(plain.format(r))
        out.append(repr(r.args))
        out.extend(f.format(r) for f in ours)
    return "\n".join(out)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("put", f"/v1/agents/{AGENT['id']}", AGENT),
        ("put", "/v1/agents", {"agents": [AGENT, {"id": "other"}]}),
    ],
)
def test_a_database_error_is_one_record_without_content(
    kind, method, path, body, request, tmp_path, onnx_bundle, caplog
):
    settings = Settings(
        api_keys=[KEY], model_dir=onnx_bundle, database_url=database(kind, request, tmp_path)
    )
    app = create_app(settings)
    # raise_server_exceptions stays on: an error escaping the app would fail the test here,
    # as it would have reached the server, which logs it again with its raw text.
    with TestClient(app) as c:
        refuse_agent_writes(app, kind)
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            r = c.request(method, path, headers={**AUTH, "X-Request-ID": "req-db-1"}, json=body)
    assert r.status_code == 500, r.text
    assert r.json()["error"] == "internal" and "req-db-1" in r.json()["message"]
    # The test's own HTTP client logs the URL it calls; the server's records are the rest.
    records = [x for x in caplog.records if not x.name.startswith(("httpx", "httpcore"))]
    errors = [x for x in records if x.levelno >= logging.ERROR]
    assert len(errors) == 1, [x.getMessage() for x in errors]
    logged = everything_logged(records)
    leaked = [s for s in SECRETS if s in logged]
    assert not leaked, logged
    # The one record still says what failed and where, and quotes the request id.
    shown = TextFormatter().format(errors[0])
    assert "sqlalchemy.exc.IntegrityError: database error" in shown and "req-db-1" in shown
    assert "/v1/agents" in shown and "store.py" in shown  # the frames are kept
    if kind == "postgresql":
        assert "SQLSTATE 23514" in shown and "no_writes" in shown
    assert not any(s in r.text for s in SECRETS)


def test_hide_parameters_is_set_on_the_engine(tmp_path):
    from serving.store import Store

    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        assert store.engine.hide_parameters
    finally:
        store.dispose()


# ------------------------------------------------------------------------------- traceback


class _Post(BaseModel):
    text: str
    n: int


def test_safe_traceback_withholds_what_quotes_data_and_keeps_the_rest():
    payload = {"text": "my secret post", "n": "not-a-number-zq"}  # (tracebacks show code)
    try:
        _Post.model_validate(payload)
    except ValidationError as e:
        shown = safe_traceback(e)
    assert "zq" not in shown and "secret" not in shown
    assert "1 validation error(s): n (int_parsing)" in shown
    # An ordinary bug keeps its words and its chain: they are what a fix needs.
    try:
        try:
            {}["missing-key"]
        except KeyError as e:
            raise RuntimeError("while reading the bundle") from e
    except RuntimeError as e:
        shown = safe_traceback(e)
    assert "KeyError: 'missing-key'" in shown
    assert "direct cause" in shown and "RuntimeError: while reading the bundle" in shown
    assert shown.count("Traceback (most recent call last):") == 2


# ------------------------------------------------------------------------------ request id


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("abc-123", True),
        ("0f8e2c1a-7d39-4b8e-9b1e-6a2f0c3d4e5f", True),
        ("trace:svc/42@edge", True),
        ("has space", False),
        ('quote"s', False),
        ("x" * 129, False),
        ("-leading-dash", False),
        ("", False),
    ],
)
def test_sane_request_ids(given, kept):
    assert (sane_request_id(given) == given) is kept


@pytest.fixture
def client(onnx_bundle, tmp_path):
    settings = Settings(
        api_keys=[KEY], model_dir=onnx_bundle, database_url=f"sqlite:///{tmp_path / 'l.db'}"
    )
    with TestClient(create_app(settings)) as c:
        yield c


def test_request_id_is_taken_if_sane_else_made_and_always_echoed(client):
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == (
        "abc-123"
    )
    made = client.get("/healthz", headers={"X-Request-ID": "two words"}).headers["X-Request-ID"]
    assert made != "two words" and len(made) == 32 and int(made, 16) >= 0


def test_one_access_record_per_request_with_route_and_request_id(client, caplog):
    with caplog.at_level(logging.INFO, logger="caretriage.access"):
        client.get("/v1/agents/zq-private-id?q=zq-query", headers={**AUTH, "X-Request-ID": "r-9"})
    records = [r for r in caplog.records if r.name == "caretriage.access"]
    assert len(records) == 1
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["route"] == "/v1/agents/{agent_id}" and line["status"] == 404
    assert line["method"] == "GET" and line["ms"] >= 0
    assert "zq" not in json.dumps(line)  # neither the raw path nor the query


# ------------------------------------------------------------------------------ formatting


@pytest.fixture
def restore_loggers():
    saved = {
        n: (lg.handlers[:], lg.level, lg.propagate) for n in LOGGERS if (lg := logging.getLogger(n))
    }
    yield
    for n, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(n)
        lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate


def test_json_lines_carry_the_request_id_and_extras(restore_loggers):
    out = io.StringIO()
    configure("info", "json", stream=out)
    token = request_id.set("rid-77")
    try:
        logging.getLogger("caretriage.serving").info("scored %d posts", 3, extra={"posts": 3})
        logging.getLogger("uvicorn.error").info("uvicorn speaks json too")
    finally:
        request_id.reset(token)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert lines[0]["message"] == "scored 3 posts" and lines[0]["posts"] == 3
    assert lines[0]["request_id"] == "rid-77" and lines[0]["level"] == "INFO"
    assert lines[0]["logger"] == "caretriage.serving" and lines[0]["time"].endswith("+00:00")
    assert lines[1]["logger"] == "uvicorn.error" and lines[1]["request_id"] == "rid-77"


def test_text_lines_render_tracebacks_safely(restore_loggers):
    out = io.StringIO()
    configure("info", "text", stream=out)
    payload = {"text": "zq secret post", "n": 1.5}
    try:
        _Post.model_validate(payload)
    except ValidationError:
        logging.getLogger("caretriage.serving").exception("bad row %s", uuid.uuid4().hex[:4])
    said = out.getvalue()
    assert " ERROR caretriage.serving [-] bad row " in said
    assert "validation error" in said and "zq" not in said


def test_log_format_setting(monkeypatch):
    monkeypatch.setenv("CARETRIAGE_API_KEYS", KEY)
    assert Settings().log_format == "text"
    monkeypatch.setenv("CARETRIAGE_LOG_FORMAT", "json")
    assert Settings().log_format == "json"
    monkeypatch.setenv("CARETRIAGE_LOG_FORMAT", "xml")
    with pytest.raises(ValidationError):
        Settings()
