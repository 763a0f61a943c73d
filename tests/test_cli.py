"""The command line's own behaviour: the container health probe, the export options."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from caretriage_cli import main
from serving.cli import probe, ready_url


@contextmanager
def readyz(status: int) -> Iterator[str]:
    """A throw-away server whose /readyz answers ``status``; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"status": "%d"}' % status
            self.send_response(status if self.path == "/readyz" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/readyz"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("status", "ready"), [(200, True), (503, False), (500, False)])
def test_probe_is_ready_only_on_200(status, ready):
    with readyz(status) as url:
        ok, detail = probe(url)
    assert ok is ready and detail.startswith(str(status))


def test_probe_without_a_server_is_not_ready():
    with readyz(200) as url:
        pass  # the port is closed again
    ok, detail = probe(url, timeout=1.0)
    assert not ok and "no answer" in detail


def test_ready_url_follows_the_configured_port():
    assert ready_url({"CARETRIAGE_PORT": "18000"}) == "http://127.0.0.1:18000/readyz"
    assert ready_url({}) == "http://127.0.0.1:8000/readyz", "the Settings default"


def test_health_command_exit_code_and_port_from_the_environment(monkeypatch, capsys):
    with readyz(200) as url:
        port = url.split(":")[2].split("/")[0]
        monkeypatch.setenv("CARETRIAGE_PORT", port)
        assert main(["health"]) == 0
    with readyz(503) as url:
        assert main(["health", "--url", url]) == 1
    assert "503" in capsys.readouterr().out
    monkeypatch.setenv("CARETRIAGE_PORT", "not-a-port")
    with pytest.raises(SystemExit, match="CARETRIAGE_PORT"):
        main(["health"])


def test_export_refuses_an_unknown_recipe_by_name(tmp_path, monkeypatch):
    """Checked before the checkpoint is read: a typo must not cost a calibration run."""
    pytest.importorskip("torch")
    import training.pipeline

    def never(*args, **kwargs):
        raise AssertionError("export ran")

    monkeypatch.setattr(training.pipeline, "export_checkpoint", never)
    with pytest.raises(SystemExit, match=r"unknown --recipe \['int8_fast'\].*int8_per_token"):
        main(["export", "--checkpoint", str(tmp_path), "--recipe", "int8_fast"])


def test_export_passes_the_recipes_in_order(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    import json

    import training.pipeline

    seen = {}

    def fake(checkpoint, out, **kw):
        seen.update(kw)
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / "export_report.json").write_text(json.dumps({"passed": True}))
        return None, False, tmp_path / "b"

    monkeypatch.setattr(training.pipeline, "export_checkpoint", fake)
    argv = ["export", "--checkpoint", str(tmp_path), "--recipe", "int8_per_token_smooth_qkv"]
    assert main([*argv, "--recipe", "int8_weights"]) == 0
    assert seen["recipes"] == ("int8_per_token_smooth_qkv", "int8_weights")


# -- the store and the labeling workspace -------------------------------------------------------


def test_db_upgrade_reports_the_revision(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert main(["db", "upgrade", "--database-url", url]) == 0
    from tests.conftest import migration_head

    assert capsys.readouterr().out.strip().endswith(f"schema at revision {migration_head()}")


def test_db_upgrade_on_an_unreachable_server_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["db", "upgrade", "--database-url", "postgresql://u:hunter2@127.0.0.1:1/x"])
    msg = str(e.value)
    assert "cannot open the store" in msg and "hunter2" not in msg and "\n" not in msg


def test_users_add_prints_a_password_that_signs_in(tmp_path, capsys):
    from serving.labeling.accounts import verify_password
    from serving.labeling.store import LabelingStore
    from serving.store import Store

    url = f"sqlite:///{tmp_path / 'u.db'}"
    assert main(["users", "add", "eva", "--role", "lead", "--database-url", url]) == 0
    out = capsys.readouterr().out
    assert "lead 'eva' is ready: sign in at http://127.0.0.1:8000/label" in out
    password = out.split("password: ")[1].strip()
    user = LabelingStore(Store(url)).get_user(name="eva")
    assert user is not None and user.role == "lead"
    assert verify_password(user.password_hash, password)
    assert not verify_password(user.password_hash, password + "x")
    with pytest.raises(SystemExit, match="exists already"):
        main(["users", "add", "eva", "--database-url", url])


def test_users_passwd_reads_stdin(tmp_path, monkeypatch, capsys):
    import io

    from serving.labeling.accounts import verify_password
    from serving.labeling.store import LabelingStore
    from serving.store import Store

    url = f"sqlite:///{tmp_path / 'p.db'}"
    main(["users", "add", "bo", "--database-url", url])
    monkeypatch.setattr("sys.stdin", io.StringIO("a-new-long-password\n"))
    assert main(["users", "passwd", "bo", "--password-stdin", "--database-url", url]) == 0
    assert "password:" not in capsys.readouterr().out.split("ready")[-1]
    user = LabelingStore(Store(url)).get_user(name="bo")
    assert verify_password(user.password_hash, "a-new-long-password")
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    with pytest.raises(SystemExit, match="at least 10"):
        main(["users", "add", "cy", "--password-stdin", "--database-url", url])
