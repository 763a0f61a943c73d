"""The live, versioned prioritization dictionary: the priority and routing policy a running
service scores with, replaced through the admin API without a restart.

Every version is a row of ``dictionary_versions`` (never updated, so the table is the audit
trail); the highest is in force. At start-up the policy file (``CARETRIAGE_POLICY_FILE``,
else the served bundle's own ``policy.yaml``, else the shipped one) becomes the next version
if the store is empty or the file changed since it last seeded; otherwise the store's newest
version (perhaps an edit through the admin API) stays in force. A replacement is
validated (every bad key named), checked against the served model's topic labels, written and
committed, and only then installed: one attribute assignment, so a request, which takes the
dictionary once at its start, scores with one version from start to end (as with model swaps,
``serving/served.py``). A refused replacement leaves the old version in force.

Several processes on one database each hold the dictionary in memory; ``DictionarySlot.refresh``
(polled every ``CARETRIAGE_DICTIONARY_POLL_SECONDS``) installs a version another one wrote.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select
from starlette.concurrency import run_in_threadpool

from serving.priority import Policy, PolicyError, validate_policy
from serving.store import Store, dictionary_table

log = logging.getLogger("caretriage.serving")

T = dictionary_table


@dataclass(frozen=True)
class Dictionary:
    """One version of the dictionary: what a request scores with, and its provenance."""

    version: int
    policy: Policy
    created_at: datetime
    created_by: str
    note: str | None = None


class VersionConflict(RuntimeError):
    """The caller expected another version to be in force (a concurrent edit won)."""

    def __init__(self, expected: int, current: int | None) -> None:
        super().__init__(f"expected version {expected} in force, found {current}")
        self.expected, self.current = expected, current


def _row(row: Any) -> Dictionary:
    m = row._mapping
    created = m["created_at"]
    if created.tzinfo is None:  # SQLite hands back naive datetimes
        created = created.replace(tzinfo=UTC)
    policy = validate_policy(m["body"], f"dictionary version {m['version']}")
    return Dictionary(m["version"], policy, created, m["created_by"], m["note"])


def latest_version(store: Store) -> int | None:
    """The version in force in the store (cheap: one indexed aggregate)."""
    with store.engine.connect() as conn:
        return conn.execute(select(func.max(T.c.version))).scalar()


def load(store: Store, version: int | None = None) -> Dictionary | None:
    """Version ``version`` (default: the newest that still validates; a version this code
    can no longer read is logged and skipped), or None."""
    q = select(T).order_by(T.c.version.desc())
    if version is not None:
        q = q.where(T.c.version == version)
    with store.engine.connect() as conn:
        rows = conn.execute(q).all()
    for row in rows:
        try:
            return _row(row)
        except PolicyError as e:
            if version is not None:
                raise
            log.error("skipping a stored dictionary this code cannot read: %s", e)
    return None


def history(store: Store, limit: int = 50) -> list[tuple[int, datetime, str, str | None]]:
    """(version, created_at, created_by, note), newest first."""
    q = (
        select(T.c.version, T.c.created_at, T.c.created_by, T.c.note)
        .order_by(T.c.version.desc())
        .limit(limit)
    )
    with store.engine.connect() as conn:
        rows = conn.execute(q).all()
    return [(v, at if at.tzinfo else at.replace(tzinfo=UTC), by, note) for v, at, by, note in rows]


def save(
    store: Store,
    policy: Policy,
    created_by: str,
    *,
    note: str | None = None,
    expected: int | None = None,
    only_if_empty: bool = False,
    file_fingerprint: str | None = None,
) -> Dictionary:
    """Write ``policy`` as the next version, committed before returning. ``expected``: refuse
    (VersionConflict) unless that version is the one in force; ``only_if_empty``: the seed,
    written only when the store holds no version (else the newest is returned). Writers of one
    database take turns (SQLite's write lock, a PostgreSQL table lock), so versions are dense
    and never handed out twice."""
    now = datetime.now(UTC)
    body = policy.model_dump(mode="json")
    with store._write(T) as conn:
        current = conn.execute(select(func.max(T.c.version))).scalar()
        if only_if_empty and current is not None:
            row = conn.execute(select(T).where(T.c.version == current)).one()
            return _row(row)
        if file_fingerprint is not None and current is not None:
            # The policy file seeds again only when it changed since it last did: an edit
            # through the admin API since then stays in force across restarts.
            seeded = conn.execute(
                select(T.c.note).where(T.c.created_by == created_by).order_by(T.c.version.desc())
            ).first()
            if seeded is not None and seeded.note == note:
                return _row(conn.execute(select(T).where(T.c.version == current)).one())
        if expected is not None and current != expected:
            raise VersionConflict(expected, current)
        version = (current or 0) + 1
        conn.execute(
            insert(T).values(
                version=version, body=body, created_at=now, created_by=created_by, note=note
            )
        )
    return Dictionary(version, policy, now, created_by, note)


def _non_finite(data: object, path: str) -> list[str]:
    """Paths of NaN or infinite numbers (JSON parsers accept them; no rule means them)."""
    if isinstance(data, float) and not math.isfinite(data):
        return [path]
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in _non_finite(v, f"{path}.{k}")]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in _non_finite(v, f"{path}.{i}")]
    return []


def parse(data: object, prefix: str = "") -> Policy:
    """Validate a dictionary sent as JSON; PolicyError names each bad key, led by ``prefix``."""
    bad = _non_finite(data, prefix.rstrip("."))
    if bad:
        keys = [b.lstrip(".") for b in bad]
        raise PolicyError(f"{', '.join(keys)}: must be a finite number", fields=keys)
    return validate_policy(data, "refused, the version in force stays", prefix=prefix)


def unknown_topic_labels(policy: Policy, topic_labels: Sequence[str]) -> list[str]:
    """Field paths of severities naming topics the served model lacks (likely typos)."""
    return [
        f"priority.topic_severity.labels.{lab}"
        for lab in policy.priority.unknown_topic_labels(topic_labels)
    ]


class DictionarySlot:
    """The app's dictionary in force and the one way to change it (changes take turns).

    ``state.dictionary`` is what requests read; ``state.policy`` and the model slot's policy
    follow it, so a later model swap is checked against the dictionary in force.
    """

    def __init__(self, state: object, store: Store) -> None:
        self._state = state
        self.store = store
        self._lock = asyncio.Lock()

    @property
    def current(self) -> Dictionary:
        return self._state.dictionary  # type: ignore[attr-defined]

    def install(self, new: Dictionary) -> None:
        state = self._state
        state.dictionary = new  # type: ignore[attr-defined]  # the one switch requests read
        state.policy = new.policy  # type: ignore[attr-defined]
        slot = getattr(state, "slot", None)
        if slot is not None:
            slot.policy = new.policy

    async def start(self, seed: Callable[[], Policy]) -> Dictionary:
        """Install the dictionary in force: ``seed()`` (the policy file) as a new version when
        the store is empty or the file changed since it last seeded, else the newest stored."""
        policy = seed()
        body = json.dumps(policy.model_dump(mode="json"), sort_keys=True).encode("utf-8")
        fp = hashlib.sha256(body).hexdigest()[:16]
        before = await run_in_threadpool(latest_version, self.store)
        found = await run_in_threadpool(
            lambda: save(self.store, policy, "seed", note=f"policy file {fp}", file_fingerprint=fp)
        )
        if found.version != before:
            log.info("dictionary: version %d from the policy file (new or changed)", found.version)
        else:
            log.info(
                "dictionary: version %d from the store in force (the policy file is unchanged "
                "since it last seeded)",
                found.version,
            )
        self.install(found)
        return found

    async def replace(
        self,
        policy: Policy,
        who: str,
        *,
        note: str | None = None,
        expected: int | None = None,
    ) -> Dictionary:
        """Store ``policy`` as the next version and put it in force. Raises VersionConflict;
        nothing changes then."""
        async with self._lock:
            new = await run_in_threadpool(
                lambda: save(self.store, policy, who, note=note, expected=expected)
            )
            self.install(new)
            log.info("dictionary: version %d in force (by %s)", new.version, who)
            return new

    async def refresh(self) -> bool:
        """Install a newer version another process stored; True if one was installed."""
        async with self._lock:
            newest = await run_in_threadpool(latest_version, self.store)
            if newest is None or newest <= self.current.version:
                return False
            found = await run_in_threadpool(load, self.store)
            if found is None or found.version <= self.current.version:
                return False
            self.install(found)
            log.info("dictionary: version %d in force (stored by another process)", found.version)
            return True


async def follow(slot: DictionarySlot, period: float) -> None:
    """Poll the store for versions other processes wrote. Errors are logged, never fatal."""
    while True:
        await asyncio.sleep(period)
        try:
            await slot.refresh()
        except Exception:
            log.exception("dictionary refresh failed; retrying")
