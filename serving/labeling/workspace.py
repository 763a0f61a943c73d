"""The labeling workspace as the app holds it: the store, the cookie signer, the sign-in
throttle and the queue's settings, built once in the lifespan and injected into routes."""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from features.schema import LabelSchema
from serving.labeling.accounts import ClientThrottle, Signer
from serving.labeling.queue import refresh_priorities
from serving.labeling.store import LabelingStore, QueueConfig, User
from serving.settings import Settings
from serving.store import Store

log = logging.getLogger("caretriage.labeling")
USER_TTL = 1.0
SCHEMA_TTL = 1.0


@dataclass
class Workspace:
    labels: LabelingStore
    signer: Signer
    settings: Settings
    throttle: ClientThrottle = field(default_factory=ClientThrottle)
    # Signed-in users by id, with when they were read: every labeling request checks its
    # session's user, and a second-old answer spares the store that read (an account disabled
    # or re-passworded elsewhere is refused within USER_TTL seconds; here, at once).
    users: dict[int, tuple[float, User | None]] = field(default_factory=dict)
    # Labels given since the queue's head was last re-ranked, and when that was.
    changes: int = 0
    refreshed_at: float = field(default_factory=time.monotonic)
    # The deployment's schema (CARETRIAGE_LABEL_SCHEMA), united with the served one's.
    deployment_schema: LabelSchema | None = None
    _schema_checked: float = 0.0
    _schema_mtime: int | None = None
    _united: tuple[LabelSchema, LabelSchema, LabelSchema] | None = None

    @classmethod
    def build(cls, store: Store, settings: Settings) -> Workspace:
        if settings.session_secret is None:
            log.warning(
                "CARETRIAGE_SESSION_SECRET is not set: using a random one for this process "
                "(sign-ins end at restart and are not shared between processes)"
            )
            secret = secrets.token_urlsafe(32)
        else:
            secret = settings.session_secret.get_secret_value()
        config = QueueConfig(
            lease_seconds=settings.lease_seconds,
            audit_share=settings.audit_share,
            agreement_share=settings.agreement_share,
        )
        workspace = cls(
            LabelingStore(store, config), Signer(secret, settings.session_max_age), settings
        )
        if settings.label_schema is not None:
            # Read now, so a missing or invalid file stops start-up with its name.
            workspace.deployment_schema = workspace._read_deployment(settings.label_schema)
            workspace._schema_mtime = settings.label_schema.stat().st_mtime_ns
            workspace._schema_checked = time.monotonic()
        return workspace

    @staticmethod
    def _read_deployment(path: Path) -> LabelSchema:
        try:
            return LabelSchema.load(path)
        except Exception as e:  # missing, not YAML/JSON, or not a schema: all say the same
            raise ValueError(
                f"CARETRIAGE_LABEL_SCHEMA={path} is not a readable label schema: {e}"
            ) from e

    def _deployment(self) -> LabelSchema | None:
        """The deployment's schema, re-read when its file changes (checked at most every
        ``SCHEMA_TTL`` s): a label the lead adds is offered without a restart. A broken edit
        is logged and the schema read before stays in force."""
        path = self.settings.label_schema
        now = time.monotonic()
        if path is None or now - self._schema_checked < SCHEMA_TTL:
            return self.deployment_schema
        self._schema_checked = now
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            log.error("CARETRIAGE_LABEL_SCHEMA=%s is gone; keeping the schema read before", path)
            return self.deployment_schema
        if mtime != self._schema_mtime:
            self._schema_mtime = mtime
            try:
                self.deployment_schema = self._read_deployment(path)
                log.info("label schema %s re-read", path)
            except ValueError as e:
                log.error("%s; keeping the schema read before", e)
        return self.deployment_schema

    def schema(self, served: LabelSchema) -> LabelSchema:
        """What evaluators label: the served model's schema, grown by the deployment's
        (its new labels and tasks come without a suggestion). Recomputed only when either
        changes (a model swap, an edited schema file)."""
        deployment = self._deployment()
        if deployment is None:
            return served
        hit = self._united
        if hit is None or hit[0] is not served or hit[1] is not deployment:
            hit = self._united = (served, deployment, served.union(deployment))
        return hit[2]

    def user(self, user_id: int) -> User | None:
        """The account behind a session, read at most every ``USER_TTL`` seconds."""
        now = time.monotonic()
        hit = self.users.get(user_id)
        if hit is not None and now - hit[0] < USER_TTL:
            return hit[1]
        user = self.labels.get_user(user_id)
        if len(self.users) > 10_000:
            self.users.clear()
        self.users[user_id] = (now, user)
        return user

    def forget(self, user_id: int) -> None:
        """Drop a cached account after changing it."""
        self.users.pop(user_id, None)

    def refresh_due(self) -> bool:
        """Re-rank the queue's head when labels arrived and the period has passed."""
        return (
            self.changes > 0
            and time.monotonic() - self.refreshed_at >= self.settings.label_refresh_seconds
        )

    def refresh(self) -> int:
        self.changes = 0
        self.refreshed_at = time.monotonic()
        return refresh_priorities(
            self.labels,
            diversity_weight=self.settings.label_diversity_weight,
            diversify=self.settings.label_diversify,
        )
