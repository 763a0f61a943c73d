"""The labeling workspace under a crash: 16 evaluators label over HTTP while the real server is
SIGKILLed and restarted on the same database (SQLite file, PostgreSQL database). Clients retry
an answer with its idempotency key until the server confirms it, as the page does.

Afterwards, from the store: every confirmed answer is there exactly once under its key (a retry
of an answer whose response was lost comes back as a replay of the same row), no row exists
that no evaluator sent, nobody has two live answers to one item, and no single-label item was
held by two evaluators at once (unless the first one's lease had run out).

Every wait is bounded (request timeouts, thread joins, a run deadline): a hang fails the test.
"""

from __future__ import annotations

import itertools
import random
import re
import threading
import time
import traceback
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import PG_URL
from tests.live import LiveServer, sqlite_url

EVALUATORS = 16
ITEMS = 300
# Short enough that the leases held at the kill run out before the server is back.
LEASE_SECONDS = 3.0
PASSWORD = "durable-labeling-pw"
SESSION_SECRET = "durability-test-session-secret-0123456789"
# The run: kill once this many answers are confirmed (or after KILL_AT_LATEST s), then carry
# on until the pool is exhausted or RUN_AFTER_RESTART s have passed.
KILL_AFTER_ANSWERS = 90
KILL_AT_LATEST = 12.0
DOWN_SECONDS = 2.0
RUN_AFTER_RESTART = 12.0
# Hard bounds: no request, retry loop or join outlives these.
REQUEST_TIMEOUT = 10.0
HARD_DEADLINE = 55.0
SKIP_SHARE, UNDO_SHARE = 0.1, 0.05
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


# -- the database under test -----------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path):
    """An empty database: an SQLite file, or a fresh PostgreSQL database (dropped after; the
    server takes only a URL, so a schema would not do)."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "kill.db")
        return
    pytest.importorskip("psycopg")
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from tests.conftest import _pg_engine

    admin = _pg_engine()  # skips (fails under CI) when PostgreSQL is unreachable
    name = f"caretriage_kill_{uuid.uuid4().hex[:12]}"
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# -- one simulated evaluator -----------------------------------------------------------------


@dataclass
class Lease:
    item_id: int
    until: float  # the server's lease_expires_at (epoch seconds; same machine, same clock)
    received: float  # when the response arrived (epoch seconds)


@dataclass
class Confirmed:
    key: str
    item_id: int
    kind: str
    label_id: int
    replay: bool
    attempts: int


@dataclass
class Evaluator:
    """Signs in through the form, then loops: next 2 items, answer the first (sometimes a
    skip, now and then an undo). A connection error or a 5xx is retried, the same request
    with the same idempotency key, until the server answers; a 401 signs in again."""

    name: str
    url: str
    stop: threading.Event
    hard_deadline: float  # time.monotonic()
    seed: int
    leases: list[Lease] = field(default_factory=list)
    sent: dict[str, tuple[int, float]] = field(default_factory=dict)  # key -> (item, 1st send)
    confirmed: list[Confirmed] = field(default_factory=list)
    undone: list[int] = field(default_factory=list)  # label ids an undo confirmed retracting
    uncertain_undos: int = 0
    refused_undos: int = 0
    transport_errors: int = 0
    server_errors: int = 0
    logins: int = 0
    errors: list[str] = field(default_factory=list)
    confirmed_at: list[float] = field(default_factory=list)
    events: list[tuple] = field(default_factory=list)  # (time, what, ...): for failure reports
    payloads: dict[str, tuple[int, dict]] = field(default_factory=dict)
    resent: list[tuple[Confirmed, dict]] = field(default_factory=list)

    def run(self) -> None:
        self.rng = random.Random(self.seed)
        self.http = httpx.Client(
            base_url=self.url, timeout=REQUEST_TIMEOUT, trust_env=False, follow_redirects=False
        )
        try:
            self.sign_in()
            self.loop()
            self.resend_first()
        except BaseException:  # reported by the test, never swallowed
            self.errors.append(traceback.format_exc())
        finally:
            self.http.close()

    # Requests -------------------------------------------------------------------------

    def _check_deadline(self, what: str) -> None:
        if time.monotonic() > self.hard_deadline:
            raise TimeoutError(f"{self.name}: {what} still failing at the run's deadline")

    def _backoff(self, attempt: int) -> None:
        time.sleep(min(0.5, 0.05 * 2 ** min(attempt, 4)) * (0.5 + self.rng.random()))

    def request(self, method: str, path: str, *, retry: bool = True, **kw) -> httpx.Response | None:
        """The response (never a 5xx); on a connection error or 5xx the same request again
        after a back-off (None at once when ``retry`` is off); a 401 signs in again first."""
        attempt = 0
        while True:
            self._check_deadline(f"{method} {path}")
            attempt += 1
            try:
                r = self.http.request(method, path, headers=self.headers, **kw)
            except httpx.TransportError:
                self.transport_errors += 1
                if not retry:
                    return None
                self._backoff(attempt)
                continue
            if r.status_code >= 500:
                self.server_errors += 1
                if not retry:
                    return None
                self._backoff(attempt)
                continue
            if r.status_code == 401 and path.startswith("/v1/"):
                self.sign_in()
                if not retry:
                    return None
                continue
            self.last_attempts = attempt
            return r

    def sign_in(self) -> None:
        """GET /login (double-submit cookie + form token), POST the form, then the API's CSRF
        token from /v1/labeling/me."""
        self.headers: dict[str, str] = {}
        for attempt in itertools.count(1):
            self._check_deadline("sign-in")
            try:
                page = self.http.get("/login")
                if page.status_code != 200:
                    raise httpx.TransportError(f"GET /login: {page.status_code}")
                token = CSRF_FIELD.search(page.text)
                assert token is not None, page.text[:500]
                r = self.http.post(
                    "/login",
                    data={
                        "name": self.name,
                        "password": PASSWORD,
                        "csrf": token.group(1),
                        "next": "/label",
                    },
                )
                if r.status_code >= 500:
                    raise httpx.TransportError(f"POST /login: {r.status_code}")
                assert r.status_code == 303, f"{self.name}: sign-in {r.status_code} {r.text[:300]}"
                me = self.http.get("/v1/labeling/me")
                if me.status_code >= 500:
                    raise httpx.TransportError(f"GET /me: {me.status_code}")
                assert me.status_code == 200, f"{self.name}: /me {me.status_code} {me.text[:300]}"
            except httpx.TransportError:
                self.transport_errors += 1
                self._backoff(attempt)
                continue
            body = me.json()
            self.tasks: dict[str, list[str]] = body["tasks"]
            self.headers = {"X-CSRF-Token": body["csrf_token"]}
            self.logins += 1
            return

    # The work -------------------------------------------------------------------------

    def loop(self) -> None:
        while not self.stop.is_set():
            r = self.request("GET", "/v1/labeling/next", params={"n": 2})
            assert r is not None
            if r.status_code != 200:
                self.errors.append(f"GET /next: {r.status_code} {r.text[:300]}")
                return
            got = time.time()
            body = r.json()
            self.events.append((got, "next", [it["id"] for it in body["items"]]))
            for it in body["items"]:
                until = datetime.fromisoformat(it["lease_expires_at"].replace("Z", "+00:00"))
                self.leases.append(Lease(it["id"], until.timestamp(), got))
            if not body["items"]:
                if body["remaining"] == 0:
                    return  # the pool is done
                time.sleep(0.2)  # the rest is leased to others: wait for a lease to lapse
                continue
            self.answer(body["items"][0])
            if self.rng.random() < UNDO_SHARE:
                self.undo()

    def answer(self, item: dict) -> None:
        key = uuid.uuid4().hex
        if self.rng.random() < SKIP_SHARE:
            payload: dict = {"kind": "skip", "idempotency_key": key}
        else:
            suggested = {t: s["label"] for t, s in (item.get("suggestion") or {}).items()}
            labels = {
                t: suggested[t]
                if t in suggested and self.rng.random() < 0.7
                else self.rng.choice(choices)
                for t, choices in self.tasks.items()
            }
            payload = {"kind": "label", "labels": labels, "idempotency_key": key}
        self.sent[key] = (item["id"], time.time())
        self.payloads[key] = (item["id"], payload)
        self.events.append((time.time(), "send", item["id"], payload["kind"], key[:8]))
        r = self.request("POST", f"/v1/labeling/items/{item['id']}/answer", json=payload)
        assert r is not None
        if r.status_code != 200:
            self.errors.append(f"answer {item['id']} ({key}): {r.status_code} {r.text[:300]}")
            return
        res = r.json()
        self.confirmed.append(
            Confirmed(
                key, res["item_id"], res["kind"], res["id"], res["replay"], self.last_attempts
            )
        )
        self.confirmed_at.append(time.time())
        self.events.append((time.time(), "ok", res["item_id"], res["kind"], res["replay"]))

    def resend_first(self) -> None:
        """Once the run is over (the server restarted meanwhile): the first answer confirmed,
        sent again with its key, as a client that never saw the confirmation would."""
        if not self.confirmed:
            return
        first = self.confirmed[0]
        item_id, payload = self.payloads[first.key]
        r = self.request("POST", f"/v1/labeling/items/{item_id}/answer", json=payload)
        assert r is not None
        self.resent.append((first, {"status": r.status_code, **r.json()}))

    def undo(self) -> None:
        """Not idempotent (no key): a blind retry could take back a second answer, so one that
        got no answer is counted as uncertain and left alone."""
        r = self.request("POST", "/v1/labeling/undo", retry=False)
        if r is None:
            self.uncertain_undos += 1
        elif r.status_code == 200:
            self.undone.append(r.json()["id"])
            self.events.append((time.time(), "undo", r.json()["item_id"], r.json()["kind"]))
        elif r.status_code == 409:  # others took the item since: the answer stays
            self.refused_undos += 1
        elif r.status_code != 404:  # 404: nothing to undo
            self.errors.append(f"undo: {r.status_code} {r.text[:300]}")


# -- the test --------------------------------------------------------------------------------


def _prepare(url: str) -> dict[str, int]:
    """Migrate the empty database and make the evaluators (argon2 once, the hash reused)."""
    from serving.labeling.accounts import hash_password
    from serving.labeling.store import LabelingStore
    from serving.store import Store

    store = Store(url)
    try:
        store.upgrade()
        ls = LabelingStore(store)
        hashed = hash_password(PASSWORD)
        return {
            f"eval{i:02d}": ls.add_user(f"eval{i:02d}", "evaluator", hashed).id
            for i in range(EVALUATORS)
        }
    finally:
        store.dispose()


def _posts(n: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    what = ["my bag", "the refund", "flight", "seat", "the app", "my booking", "wifi", "meal"]
    how = ["never arrived", "is late again", "was cancelled", "is broken", "was great", "??"]
    where = ["Denver", "Oslo", "Lima", "Pune", "Cork", "Kyoto", "Accra", "Perth"]
    return [
        {
            "id": f"post-{i}",
            "text": f"@airline {rng.choice(what)} {rng.choice(how)} in {rng.choice(where)} #{i}",
            "channel": rng.choice(["twitter", "facebook", "instagram"]),
        }
        for i in range(n)
    ]


def _read_back(url: str) -> tuple[list[dict], dict[int, dict]]:
    from serving.labeling.tables import items_table, labels_table
    from serving.store import Store

    store = Store(url)
    try:
        with store.engine.connect() as conn:
            labels = [dict(r._mapping) for r in conn.execute(select(labels_table)).all()]
            items = {
                r.id: dict(r._mapping)
                for r in conn.execute(
                    select(items_table.c.id, items_table.c.needed, items_table.c.done)
                ).all()
            }
    finally:
        store.dispose()
    return labels, items


def _history(evaluators: list[Evaluator], item_ids, t0: float) -> str:
    """What each evaluator did with these items, in time order (for a failure message)."""
    ids = set(item_ids)
    lines = []
    for ev in evaluators:
        for when, what, *rest in ev.events:
            touched = rest[0] if what == "next" else [rest[0]]
            if ids & set(touched):
                lines.append((when, f"{when - t0:8.3f} {ev.name} {what} {rest}"))
    return "\n".join(line for _, line in sorted(lines))


def _ts(dt: datetime) -> float:
    from serving.labeling.tables import aware

    return aware(dt).timestamp()  # type: ignore[union-attr]


def test_labels_survive_a_kill_with_16_evaluators(onnx_bundle, tmp_path, database_url):
    t_start = time.monotonic()
    user_ids = _prepare(database_url)
    server = LiveServer(
        onnx_bundle,
        tmp_path / "server",
        database_url=database_url,
        env={
            "CARETRIAGE_SESSION_SECRET": SESSION_SECRET,
            "CARETRIAGE_LEASE_SECONDS": str(LEASE_SECONDS),
            "CARETRIAGE_AGREEMENT_SHARE": "0.3",
            "CARETRIAGE_AUDIT_SHARE": "0.1",
            # The queue's re-ranking runs meanwhile, as in production (writes to the items).
            "CARETRIAGE_LABEL_REFRESH_SECONDS": "2",
            "CARETRIAGE_LOG_LEVEL": "warning",
        },
    )
    stop = threading.Event()
    evaluators: list[Evaluator] = []
    threads: list[threading.Thread] = []
    try:
        server.start(timeout=60)
        with server.client(timeout=60) as http:
            r = http.post("/v1/labeling/items", json={"items": _posts(ITEMS)})
            assert r.status_code == 200, r.text
            assert r.json()["added"] == ITEMS, r.text

        hard = time.monotonic() + HARD_DEADLINE
        t0 = time.time()
        for i, name in enumerate(user_ids):
            ev = Evaluator(name, server.url, stop, hard, seed=i)
            evaluators.append(ev)
            threads.append(threading.Thread(target=ev.run, name=name, daemon=True))
        for t in threads:
            t.start()

        # Mid-run: SIGKILL, a moment down, a restart on the same database.
        run_start = time.monotonic()
        while (
            sum(len(e.confirmed) for e in evaluators) < KILL_AFTER_ANSWERS
            and time.monotonic() - run_start < KILL_AT_LATEST
            and any(t.is_alive() for t in threads)
        ):
            time.sleep(0.05)
        confirmed_before_kill = sum(len(e.confirmed) for e in evaluators)
        assert server.kill() == -9
        killed_at = time.time()
        time.sleep(DOWN_SECONDS)
        server.restart(timeout=20)
        restarted_at = time.time()

        # The evaluators carry on by themselves until the pool is done or time is up.
        resumed = time.monotonic()
        while time.monotonic() - resumed < RUN_AFTER_RESTART and any(t.is_alive() for t in threads):
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join(timeout=max(1.0, hard - time.monotonic() + 5))
        hung = [t.name for t in threads if t.is_alive()]
        assert not hung, f"evaluators still running after the deadline: {hung}"
    finally:
        stop.set()
        server.stop()

    errors = [f"{e.name}: {msg}" for e in evaluators for msg in e.errors]
    assert not errors, "\n".join(errors[:5])

    # The kill really hit a run in progress, and work went on after the restart.
    assert confirmed_before_kill >= 20, confirmed_before_kill
    assert sum(e.transport_errors for e in evaluators) > 0
    assert sum(1 for e in evaluators for t in e.confirmed_at if t > restarted_at) >= 20
    assert sum(e.logins for e in evaluators) == EVALUATORS  # sessions survived the restart

    labels, items = _read_back(database_url)
    by_key: dict[tuple[int, str], list[dict]] = defaultdict(list)
    for row in labels:
        by_key[(row["user_id"], row["idempotency_key"])].append(row)

    # 1. Every confirmed answer is stored exactly once under its key, as confirmed; a replay
    #    (the first response was lost in the kill) names the same row.
    for ev in evaluators:
        uid = user_ids[ev.name]
        keys = Counter(c.key for c in ev.confirmed)
        assert max(keys.values(), default=1) == 1
        for c in ev.confirmed:
            rows = by_key.get((uid, c.key), [])
            assert len(rows) == 1, (ev.name, c, rows)
            (row,) = rows
            assert (row["id"], row["item_id"], row["kind"]) == (c.label_id, c.item_id, c.kind)
            assert c.item_id == ev.sent[c.key][0]
    replays = [c for e in evaluators for c in e.confirmed if c.replay]
    assert all(c.attempts > 1 for c in replays), replays  # only a retry can be a replay
    # Each evaluator's first answer, sent again after the restart: the same row, a replay.
    resent = [pair for e in evaluators for pair in e.resent]
    assert len(resent) == EVALUATORS
    for first, again in resent:
        assert again["status"] == 200 and again["replay"] is True, (first, again)
        assert (again["id"], again["item_id"], again["kind"]) == (
            first.label_id,
            first.item_id,
            first.kind,
        )
    print(f"kill at {killed_at - t0:.3f}, back at {restarted_at - t0:.3f}")

    # 2. No row that no evaluator sent; one never confirmed can only be a request whose answer
    #    was lost (the evaluator stopped before its retry got through), still one per key.
    sent = {(user_ids[e.name], k) for e in evaluators for k in e.sent}
    confirmed = {(user_ids[e.name], c.key) for e in evaluators for c in e.confirmed}
    assert set(by_key) <= sent, sorted(set(by_key) - sent)[:5]
    lost = set(by_key) - confirmed
    assert all(len(by_key[k]) == 1 for k in lost)
    assert len(lost) <= EVALUATORS, lost  # at most the one answer in flight per evaluator

    # 3. Nobody holds two live answers to one item; an undo confirmed is a retracted row.
    live = [r for r in labels if r["retracted_at"] is None]
    pairs = Counter((r["item_id"], r["user_id"]) for r in live)
    assert [p for p, n in pairs.items() if n > 1] == []
    retracted = {r["id"] for r in labels if r["retracted_at"] is not None}
    undone = [i for e in evaluators for i in e.undone]
    assert set(undone) <= retracted
    assert len(retracted) <= len(undone) + sum(e.uncertain_undos for e in evaluators)

    # The items' counters agree with their live labels.
    live_labels = Counter(r["item_id"] for r in live if r["kind"] == "label")
    assert {i: it["done"] for i, it in items.items() if it["done"]} == dict(live_labels)

    # 4. No single-label item held by two evaluators at once. A lease is surely held from the
    #    moment its response arrived until it expired or its holder first sent an answer for it
    #    (the server drops the lease when that answer commits, never before it was sent).
    needed = {i: it["needed"] for i, it in items.items()}
    assert set(needed.values()) == {1, 2}
    windows: dict[int, list[tuple[str, float, float]]] = defaultdict(list)
    for ev in evaluators:
        sends: dict[int, list[float]] = defaultdict(list)
        for item_id, t in ev.sent.values():
            sends[item_id].append(t)
        for lease in ev.leases:
            later = [t for t in sends[lease.item_id] if t >= lease.received]
            end = min([lease.until, *later])
            windows[lease.item_id].append((ev.name, lease.received, end))
    overlaps = []
    for item_id, ws in windows.items():
        if needed[item_id] != 1:
            continue
        for (u1, s1, e1), (u2, s2, e2) in itertools.combinations(ws, 2):
            if u1 != u2 and max(s1, s2) < min(e1, e2):
                overlaps.append((item_id, (u1, s1, e1), (u2, s2, e2)))
    if overlaps:
        print(_history(evaluators, [o[0] for o in overlaps], t0))
    assert overlaps == [], overlaps[:5]

    # 5. At most `needed` different live answerers per item (label or flag), but for answers
    #    given after the answerer's lease ran out (late answers are kept as extra opinions).
    untils: dict[tuple[str, int], list[float]] = defaultdict(list)
    for ev in evaluators:
        for lease in ev.leases:
            untils[(ev.name, lease.item_id)].append(lease.until)

    def on_time(row: dict) -> bool:
        """Answered before the end of a lease granted to its author before the answer."""
        at = _ts(row["created_at"])
        grants = untils[(names[row["user_id"]], row["item_id"])]
        return any(until - LEASE_SECONDS <= at <= until for until in grants)

    names = {uid: name for name, uid in user_ids.items()}
    answerers: dict[int, list[dict]] = defaultdict(list)
    for r in live:
        if r["kind"] in ("label", "flag"):
            answerers[r["item_id"]].append(r)
    too_many = []
    for item_id, rows in answerers.items():
        if len({r["user_id"] for r in rows if on_time(r)}) > needed[item_id]:
            too_many.append((item_id, needed[item_id], [(r["user_id"], r["kind"]) for r in rows]))
    if too_many:
        print(_history(evaluators, [t[0] for t in too_many], t0))
    assert too_many == [], too_many[:5]

    report = {
        "confirmed": len(confirmed),
        "before_kill": confirmed_before_kill,
        "replays": len(replays),
        "late_answers": sum(1 for r in live if r["kind"] != "skip" and not on_time(r)),
        "lost": len(lost),
        "undone": len(undone),
        "undo_refused": sum(e.refused_undos for e in evaluators),
        "transport_errors": sum(e.transport_errors for e in evaluators),
        "down_s": round(restarted_at - killed_at, 2),
        "total_s": round(time.monotonic() - t_start, 1),
    }
    print(f"durability ({Path(str(database_url)).name.split('?')[0]}): {report}")
