"""The one configuration object of the service, read from ``CARETRIAGE_*`` environment variables.

Unsafe defaults are refused rather than papered over: the service does not start without API
keys, nor with keys short enough to guess.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from serving.schemas import MAX_POSTS

MIN_KEY_LENGTH = 16
MIN_SECRET_LENGTH = 32
REPO_ROOT = Path(__file__).resolve().parent.parent


class SettingsError(RuntimeError):
    """The configuration is unsafe or unusable. Not a ValueError on purpose: pydantic would
    wrap it and echo the offending input, and the input here may be a secret."""


def default_model_dir() -> Path:
    """The bundle the repository ships/trains into, independent of the working directory."""
    return REPO_ROOT / "models" / "caretriage-minilm"


def _default_policy_file() -> Path:
    # Imported lazily so that importing settings stays cheap and free of policy code.
    from serving.priority import default_policy_path

    return Path(default_policy_path())


class Settings(BaseSettings):
    """Every knob of the service. Environment: ``CARETRIAGE_<FIELD>``; lists are comma-separated,
    dicts are JSON (``CARETRIAGE_ABSTAIN_BELOW='{"topic": 0.6}'``)."""

    model_config = SettingsConfigDict(
        env_prefix="CARETRIAGE_",
        extra="ignore",
        validate_default=True,
    )

    # Bearer keys accepted by the API; at least one, each >= 16 characters.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list, repr=False)
    model_dir: Path = Field(default_factory=default_model_dir)
    database_url: str = "sqlite:///./caretriage.db"
    # Priority/routing policy YAML; default: the served bundle's own ``policy.yaml`` (a
    # deployment's bundle carries the policy naming its topics), else the one shipped with the
    # package. It seeds the prioritization dictionary when the store is empty or the file
    # changed since it last did; otherwise the store's newest version is in force and
    # PUT /v1/admin/dictionary replaces it (serving/dictionary.py).
    policy_file: Path | None = None
    # How often each process looks for a dictionary version another process stored.
    dictionary_poll_seconds: float = Field(default=5.0, gt=0)
    # Per-task confidence under which a prediction is flagged uncertain (shown, not applied);
    # a task not listed never abstains.
    abstain_below: dict[str, float] = Field(
        default_factory=lambda: {"topic": 0.5, "sentiment": 0.5, "actionability": 0.5}
    )
    actionable_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    # One ONNX run holds at most this many tokens (batch size x padded length) ...
    max_batch_tokens: int = Field(default=8192, ge=1)
    # ... and at most this many posts.
    # Small on purpose: a request's posts are length-sorted and cut into batches of this many,
    # so each is padded only to its own longest post (measured: 8 gave +54% posts/s over 64
    # for 32-post requests on 2 cores, benchmarks/).
    max_batch_size: int = Field(default=8, ge=1)
    # Posts waiting for the model; beyond this the service answers 503 "overloaded".
    max_queue: int = Field(default=2048, ge=MAX_POSTS)
    # Request bodies above this many bytes get 413. 4 MiB fits 256 posts of 5000 3-byte chars.
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # A /v1/score request is refused (503, Retry-After) when its posts would wait longer than
    # this for the model (posts ahead x measured seconds per post), before its body is read;
    # 0: no deadline, only MAX_QUEUE bounds the queue (serving/admission.py). It detects
    # overload, so it sits above the queue-wait tail at the load a deployment is sized for
    # (80% of capacity): on 2 shared cores 1 s was that tail's 99.7th percentile, and a
    # 10-minute soak shed 22 of 7,123 requests (benchmarks/README.md, "Soak").
    queue_deadline_ms: float = Field(default=3000.0, ge=0)
    # Request headers (the request line included) above this many bytes get 431 and the
    # connection is closed; uvicorn's httptools parser has no limit of its own.
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    # A request's headers must arrive within this many seconds (of the connection opening, or
    # of the request's first byte on a kept-alive connection), and its body within this many
    # seconds of its headers; a slower client gets 408 and is disconnected (serving/protocol.py).
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    body_timeout_seconds: float = Field(default=30.0, gt=0)
    # Scoring reads the roster from a snapshot at most this many seconds old; edits through this
    # process's /v1/agents are seen at once, edits by other processes within this time. 0 reads
    # the database on every request.
    roster_max_age: float = Field(default=2.0, ge=0.0)
    # ONNX runs in flight at once within a scoring call (its posts are cut into batches);
    # 0: one per usable core. See serving.inference.Scorer.
    inference_workers: int = Field(default=0, ge=0)
    # ONNX Runtime intra-op threads per run; 0 shares the usable cores out among the workers.
    intra_op_threads: int = Field(default=0, ge=0)
    # Let ONNX Runtime's worker threads spin between runs (ORT's default; moot with one thread
    # per run, the default on this project's 2-core machines). With 8 single-post
    # clients on 2 cores, one run gave p99 97 ms spinning vs 118 ms not; on a slower 2-core host,
    # two sets of three interleaved rounds gave medians 222 vs 205 ms, then 196 vs 236 ms: within
    # the noise. Turn it off when the process shares its cores with other work.
    intra_op_spinning: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_level: str = "info"

    # -- model swaps --
    # A promotion pointer (JSON {"bundle": path, "version": ...}, written by `caretriage
    # promote`): polled every ``model_poll_seconds``; a new bundle named there is loaded,
    # checked and swapped in without dropping a request. Unset: the served model never changes.
    model_pointer: Path | None = None
    model_poll_seconds: float = Field(default=10.0, gt=0)
    # Bearer keys with admin rights (model reload), separate from the helpdesk keys; admins
    # signed in to the workspace have them too.
    admin_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list, repr=False)

    # -- rate limits (serving/ratelimit.py) --
    # Per API key and window: requests, and posts scored (a /v1/score batch of N counts N), in
    # the `limits` notation ("600/minute", "10 per second"); "unlimited" turns one off.
    rate_limit: str = "600/minute"
    post_rate_limit: str = "20000/minute"
    # Per-key overrides (JSON), keyed by a key's id, never the key: the first 12 hex digits of
    # its SHA-256 (`printf %s "$KEY" | sha256sum | cut -c1-12`).
    rate_limit_overrides: dict[str, str] = Field(default_factory=dict)
    post_rate_limit_overrides: dict[str, str] = Field(default_factory=dict)
    # Wrong API or admin keys one client address may send per window; then it gets 429.
    auth_failure_limit: str = "30/minute"
    # memory:// (counts per process) or redis://host:port/db (shared by every process using it).
    rate_limit_storage: str = Field(default="memory://", repr=False)
    # Off: no limits at all (tests; or a gateway in front that limits already).
    rate_limit_enabled: bool = True

    # -- observability (serving/metrics.py, serving/logs.py) --
    # Also serve GET /metrics, unauthenticated, on this port of HOST (for a scraper inside the
    # network); the app's own /metrics needs an admin key either way.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # Log lines as JSON objects (one per line) or as text; both carry the request id.
    log_format: Literal["text", "json"] = "text"

    # -- the labeling workspace (/label) --
    # Signs evaluators' session cookies; at least 32 characters. Unset: a random secret per
    # process (sign-ins do not survive a restart and are not shared between processes).
    session_secret: SecretStr | None = Field(default=None, repr=False)
    session_max_age: int = Field(default=12 * 3600, ge=60)
    # Send cookies only over HTTPS; turn on behind TLS.
    cookie_secure: bool = False
    # An item handed to an evaluator is theirs this long; then it returns to the queue.
    lease_seconds: float = Field(default=600.0, gt=0)
    # Share of pooled items drawn at random (unbiased accuracy) and labeled twice (agreement).
    audit_share: float = Field(default=0.1, ge=0.0, le=1.0)
    agreement_share: float = Field(default=0.1, ge=0.0, le=1.0)
    # Share of /v1/score posts copied into the pool with their predictions (0: off), and how
    # long an unlabeled copy is kept.
    label_traffic_share: float = Field(default=0.0, ge=0.0, le=1.0)
    label_traffic_retention_days: float = Field(default=30.0, gt=0)
    # How the queue ranks: per-task uncertainty (margin or entropy), weighed against
    # diversity, re-ranked every ``label_refresh_seconds`` while labels arrive.
    label_uncertainty: Literal["margin", "entropy"] = "margin"
    label_diversity_weight: float = Field(default=0.5, ge=0.0, le=1.0)
    label_refresh_seconds: float = Field(default=30.0, gt=0)
    # How the head is diversified: greedy k-center (default), or k-means representatives of a
    # 10x pool, which reached Banking77's target with 36% fewer labels in the benchmark.
    label_diversify: Literal["kcenter", "kmeans"] = "kcenter"
    # The deployment's label schema (e.g. deployments/<name>/label_schema.yaml): evaluators
    # are offered the served model's labels and tasks united with this file's, so a topic
    # the team adds is labeled before any model knows it. Unset: the served schema alone.
    label_schema: Path | None = None

    # -- customer context and casework (serving/contacts.py, serving/assignments.py) --
    # Contacts recorded through POST /v1/contacts are kept this many days, at most this many
    # (the newest) per customer; a handle link not renewed within the retention is dropped.
    contact_retention_days: float = Field(default=30.0, gt=0, le=3650)
    contact_max_per_customer: int = Field(default=200, ge=1, le=100_000)
    # POST /v1/assign ranks by expected CSAT, expected speed, or the dictionary's mix of both
    # (routing.weights), times spare capacity and skill (serving/dispatch.py).
    routing_objective: Literal["csat", "speed", "mix"] = "mix"
    # Agents below this skill on the post's topic are never assigned it (0: any skill > 0).
    routing_skill_floor: float = Field(default=0.0, ge=0, lt=1)
    # Fairness over the last ``routing_fairness_window`` assignments, once at least
    # ``routing_fairness_min_sample`` are recorded: an agent above ``max_share`` of them is
    # assigned only if nobody else can take the post, one below ``min_share`` goes first.
    routing_max_share: float = Field(default=0.3, gt=0, le=1)
    routing_min_share: float = Field(default=0.01, ge=0, le=1)
    routing_fairness_window: int = Field(default=200, ge=1, le=100_000)
    routing_fairness_min_sample: int = Field(default=20, ge=1, le=100_000)
    # Strongly negative posts from high-value (a VIP tier, or lifetime value from
    # ``routing_high_value``) or influential customers go to agents whose estimated CSAT on
    # the topic is in this top share.
    routing_top_band: float = Field(default=0.25, gt=0, le=1)
    routing_high_value: float = Field(default=5000.0, ge=0)
    # Learned performance (serving/performance.py): how many cases the prior (declared figure,
    # else the team) is worth, how far back feedback counts, how long estimates are cached
    # (feedback through this process refreshes them at once).
    performance_prior_strength: float = Field(default=5.0, ge=0, le=10_000)
    performance_window_days: float = Field(default=90.0, gt=0, le=3650)
    performance_refresh_seconds: float = Field(default=30.0, ge=0)

    @model_validator(mode="after")
    def _fair_shares(self) -> Self:
        if self.routing_min_share > self.routing_max_share:
            raise SettingsError(
                f"CARETRIAGE_ROUTING_MIN_SHARE ({self.routing_min_share:g}) exceeds "
                f"CARETRIAGE_ROUTING_MAX_SHARE ({self.routing_max_share:g})"
            )
        return self

    def policy_path(self) -> Path:
        """The policy file in force: the setting, else the bundle's, else the shipped one."""
        if self.policy_file is not None:
            return self.policy_file
        own = self.model_dir / "policy.yaml"
        return own if own.is_file() else _default_policy_file()

    @field_validator("api_keys", "cors_origins", "admin_keys", mode="before")
    @classmethod
    def _split_commas(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [part.strip() for part in v.split(",") if part.strip()]
        return v

    @field_validator("abstain_below")
    @classmethod
    def _unit_thresholds(cls, v: dict[str, float]) -> dict[str, float]:
        bad = sorted(k for k, x in v.items() if not 0.0 <= x <= 1.0)
        if bad:
            raise ValueError(f"thresholds must be within 0-1; out of range for {bad}")
        return v

    @model_validator(mode="after")
    def _refuse_unsafe_keys(self) -> Self:
        keys = [k.get_secret_value() for k in self.api_keys]
        if not keys:
            raise SettingsError(
                "no API keys configured: set CARETRIAGE_API_KEYS to one or more comma-separated "
                f"keys of at least {MIN_KEY_LENGTH} characters (e.g. the output of "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        admin = [k.get_secret_value() for k in self.admin_keys]
        if any(len(k) < MIN_KEY_LENGTH for k in admin):
            raise SettingsError(
                f"CARETRIAGE_ADMIN_KEYS: every key needs at least {MIN_KEY_LENGTH} characters"
            )
        if set(admin) & set(keys):
            raise SettingsError(
                "CARETRIAGE_ADMIN_KEYS: an admin key must not also be a helpdesk API key"
            )
        short = [i for i, k in enumerate(keys) if len(k) < MIN_KEY_LENGTH]
        if short:
            raise SettingsError(
                f"CARETRIAGE_API_KEYS: key(s) at position {short} are shorter than "
                f"{MIN_KEY_LENGTH} characters; refusing to start with guessable keys"
            )
        return self

    @model_validator(mode="after")
    def _readable_rate_limits(self) -> Self:
        # Imported here: the `limits` library is only needed once limits are configured.
        from serving.ratelimit import STORAGE_SCHEMES, key_id, parse_limit, storage_scheme

        ids = {key_id(k.get_secret_value()) for k in self.api_keys}
        for name in ("rate_limit", "post_rate_limit", "auth_failure_limit"):
            try:
                parse_limit(getattr(self, name))
            except ValueError as e:
                raise SettingsError(f"CARETRIAGE_{name.upper()}: {e}") from None
        for name in ("rate_limit_overrides", "post_rate_limit_overrides"):
            for kid, text in getattr(self, name).items():
                if kid not in ids:  # a typo would silently leave the key on the default
                    raise SettingsError(
                        f"CARETRIAGE_{name.upper()}: {kid!r} is not the id of a configured API "
                        "key (the first 12 hex digits of its SHA-256)"
                    )
                try:
                    parse_limit(text)
                except ValueError as e:
                    raise SettingsError(f"CARETRIAGE_{name.upper()}[{kid}]: {e}") from None
        scheme = storage_scheme(self.rate_limit_storage)
        if scheme not in STORAGE_SCHEMES:  # the URL itself is not echoed: it may hold a password
            raise SettingsError(
                f"CARETRIAGE_RATE_LIMIT_STORAGE: scheme {scheme!r} is not one of "
                f"{', '.join(s + '://' for s in STORAGE_SCHEMES)}"
            )
        if scheme.startswith("redis") and importlib.util.find_spec("redis") is None:
            raise SettingsError(
                "CARETRIAGE_RATE_LIMIT_STORAGE names Redis, but the redis client is not "
                "installed: pip install 'caretriage[redis]'"
            )
        return self

    @field_validator("session_secret")
    @classmethod
    def _long_secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < MIN_SECRET_LENGTH:
            raise SettingsError(
                f"CARETRIAGE_SESSION_SECRET must be at least {MIN_SECRET_LENGTH} characters"
            )
        return v

    def api_key_bytes(self) -> list[bytes]:
        """The keys as bytes, the form ``hmac.compare_digest`` compares in constant time."""
        return [k.get_secret_value().encode("utf-8") for k in self.api_keys]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"
