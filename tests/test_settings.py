"""Settings: unsafe configurations are refused; the environment is parsed as documented."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.priority import default_policy_path
from serving.settings import MIN_KEY_LENGTH, Settings, SettingsError

KEY = "k" * MIN_KEY_LENGTH


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("CARETRIAGE_"):
            monkeypatch.delenv(name)


def test_no_keys_refused():
    with pytest.raises(SettingsError, match="no API keys configured"):
        Settings()


def test_blank_keys_refused(monkeypatch):
    monkeypatch.setenv("CARETRIAGE_API_KEYS", " , ,")
    with pytest.raises(SettingsError, match="no API keys"):
        Settings()


def test_short_key_refused_without_echoing_it(monkeypatch):
    monkeypatch.setenv("CARETRIAGE_API_KEYS", f"{KEY},tooshort")
    with pytest.raises(SettingsError) as info:
        Settings()
    assert "position [1]" in str(info.value)
    assert "tooshort" not in str(info.value)


def test_env_parsing(monkeypatch, tmp_path):
    monkeypatch.setenv("CARETRIAGE_API_KEYS", f" {KEY} , {'z' * 20}")
    monkeypatch.setenv("CARETRIAGE_ABSTAIN_BELOW", '{"topic": 0.7, "sentiment": 0.4}')
    monkeypatch.setenv("CARETRIAGE_MAX_BATCH_TOKENS", "4096")
    monkeypatch.setenv("CARETRIAGE_CORS_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("CARETRIAGE_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("CARETRIAGE_PORT", "9001")
    s = Settings()
    assert s.api_key_bytes() == [KEY.encode(), b"z" * 20]
    assert s.abstain_below == {"topic": 0.7, "sentiment": 0.4}
    assert s.max_batch_tokens == 4096
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.model_dir == tmp_path
    assert s.url == "http://127.0.0.1:9001"
    assert KEY not in repr(s)


def test_defaults_do_not_depend_on_cwd(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    s = Settings(api_keys=[KEY])
    repo = Path(__file__).resolve().parent.parent
    assert s.model_dir == repo / "models" / "caretriage-minilm"
    assert s.policy_file is None and s.policy_path() == default_policy_path()
    assert s.policy_path().is_file()
    assert (s.host, s.port, s.cors_origins) == ("127.0.0.1", 8000, [])
    assert s.database_url == "sqlite:///./caretriage.db"
    assert s.intra_op_threads == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("abstain_below", {"topic": 1.5}),
        ("max_queue", 10),  # smaller than one maximal request: it could never be served
        ("actionable_threshold", -0.1),
        ("max_batch_size", 0),
    ],
)
def test_bad_values_refused(field, value):
    with pytest.raises(ValidationError, match=field):
        Settings(api_keys=[KEY], **{field: value})
