"""Customer context across channels: contacts recorded from any channel (``POST /v1/contacts``)
and merged into the posts ``/v1/score`` and ``/v1/assign`` see, so that "called, emailed, then
tweeted" raises the tweet's priority (the policy's ``repeat_contact`` factor) even when the
request carries no history.

A contact is keyed by its customer: ``c:<customer id>``, or ``h:<handle>`` for a contact from a
social handle not linked to any customer. Linking a handle (``links``, or a contact naming both
a customer id and a handle) moves the handle's contacts to the customer, and from then on a
post by that handle sees the customer's whole history.

Reads cost one indexed query per request, for all its posts: the contacts under each post's
customer id and handle, and those of the customer its handle is linked to, in one
``UNION ALL``. Retention is bounded: at most ``max_per_customer`` contacts per key (the newest;
enforced as contacts are written) and none older than ``retention_days`` (purged by the app's
upkeep loop, with handle links not renewed in that time).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Connection,
    delete,
    func,
    literal,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from serving.casework_schemas import ContactIn, HandleLink
from serving.schemas import Channel, Post, storable_problem
from serving.store import Store
from serving.tables import aware, contacts_table, handles_table, writing
from serving.tables import utcnow as _now

if TYPE_CHECKING:
    from serving.settings import Settings

C = contacts_table
H = handles_table

# A contact as the triage core takes it (serving.triage.ContactAt).
ContactAt = tuple[Channel, datetime]


def normalize_handle(handle: str | None) -> str | None:
    """``@Kim`` and ``kim`` are one handle: no leading @, case folded; None when blank."""
    if handle is None:
        return None
    h = handle.strip().lstrip("@").strip().casefold()
    return h or None


def customer_key(customer_id: str) -> str:
    return f"c:{customer_id}"


def handle_key(handle: str) -> str:
    """The key of an unlinked handle's contacts (``handle`` normalized)."""
    return f"h:{handle}"


@dataclass(frozen=True)
class Recorded:
    recorded: int
    duplicates: int
    linked: int


def _post_keys(post: Post) -> tuple[str | None, str | None]:
    """(customer key, normalized handle) a post is looked up by. An id or handle no store
    can hold (a NUL: PostgreSQL refuses it even as a query parameter) was never recorded,
    so it is not looked up."""
    cid = post.customer.id if post.customer and post.customer.id else None
    handle = normalize_handle(post.author.handle if post.author else None)
    cid = None if cid is None or storable_problem(cid) else cid
    handle = None if handle is None or storable_problem(handle) else handle
    return (customer_key(cid) if cid else None), handle


def wants_history(posts: Sequence[Post]) -> bool:
    """Whether any post names a customer id or a handle (else there is nothing to look up)."""
    return any(k or h for k, h in map(_post_keys, posts))


def history_window(posts: Sequence[Post], window_hours: float) -> tuple[datetime, datetime]:
    """(since, until): the contacts that can count for ``posts`` under the priority policy's
    repeat-contact window (those within ``window_hours`` before a post)."""
    return (
        min(p.created_at for p in posts) - timedelta(hours=window_hours),
        max(p.created_at for p in posts),
    )


class ContactStore:
    """The contact history over the service's ``Store`` (same engine, same transactions)."""

    def __init__(
        self, store: Store, *, retention_days: float = 30.0, max_per_customer: int = 200
    ) -> None:
        if retention_days <= 0 or max_per_customer < 1:
            raise ValueError("retention_days must be > 0 and max_per_customer >= 1")
        self.store = store
        self.retention = timedelta(days=retention_days)
        self.max_per_customer = max_per_customer

    @classmethod
    def from_settings(cls, store: Store, settings: Settings) -> ContactStore:
        return cls(
            store,
            retention_days=settings.contact_retention_days,
            max_per_customer=settings.contact_max_per_customer,
        )

    @staticmethod
    def _insert(conn: Connection) -> Callable[..., Any]:
        """The dialect's INSERT, which knows ON CONFLICT."""
        return pg_insert if conn.dialect.name == "postgresql" else sqlite_insert

    # -- writes -------------------------------------------------------------------------------

    def record(
        self,
        contacts: Sequence[ContactIn] = (),
        links: Sequence[HandleLink] = (),
        now: datetime | None = None,
    ) -> Recorded:
        """Store ``contacts`` and ``links`` in one transaction, committed on return. A contact
        whose ``id`` was recorded before (a retry) is a duplicate and changes nothing; one
        older than the retention is not kept (it would be purged at once)."""
        now = now or _now()
        oldest = now - self.retention
        wanted: dict[str, str] = {}  # handle -> customer key; the last word wins
        for link in links:
            h = normalize_handle(link.handle)
            if h:
                wanted[h] = customer_key(link.customer_id)
        for c in contacts:
            h = normalize_handle(c.handle)
            if h and c.customer_id:
                wanted[h] = customer_key(c.customer_id)
        with writing(self.store, C, H) as conn:
            linked = self._link(conn, wanted, now)
            unlinked = sorted(
                {h for c in contacts if not c.customer_id and (h := normalize_handle(c.handle))}
                - set(wanted)
            )
            known = dict(wanted)
            if unlinked:
                rows = conn.execute(
                    select(H.c.handle, H.c.customer_key).where(H.c.handle.in_(unlinked))
                ).all()
                known.update({r.handle: r.customer_key for r in rows})
            rows, seen = [], set()
            for c in contacts:
                if c.at < oldest:
                    continue
                if c.id is not None:
                    if c.id in seen:
                        continue
                    seen.add(c.id)
                if c.customer_id:
                    key = customer_key(c.customer_id)
                else:
                    h = normalize_handle(c.handle)
                    assert h is not None  # ContactIn requires one of the two
                    key = known.get(h, handle_key(h))
                rows.append(
                    {
                        "customer_key": key,
                        "channel": c.channel.value,
                        "at": c.at,
                        "source_id": c.id,
                        "recorded_at": now,
                    }
                )
            added = 0
            if rows:
                stmt = self._insert(conn)(C).on_conflict_do_nothing(index_elements=["source_id"])
                added = len(conn.execute(stmt.returning(C.c.id), rows).all())
                self._cap(conn, {r["customer_key"] for r in rows})
        return Recorded(recorded=added, duplicates=len(rows) - added, linked=linked)

    def _link(self, conn: Connection, wanted: dict[str, str], now: datetime) -> int:
        """Upsert handle links and move each newly linked handle's own contacts to its
        customer. Returns how many links were made or changed."""
        if not wanted:
            return 0
        handles = sorted(wanted)
        before = {
            r.handle: r.customer_key
            for r in conn.execute(
                select(H.c.handle, H.c.customer_key).where(H.c.handle.in_(handles))
            )
        }
        changed = 0
        for h in handles:
            key = wanted[h]
            if before.get(h) == key:
                conn.execute(update(H).where(H.c.handle == h).values(updated_at=now))
                continue
            changed += 1
            if h in before:
                conn.execute(
                    update(H).where(H.c.handle == h).values(customer_key=key, updated_at=now)
                )
            else:
                stmt = self._insert(conn)(H).values(handle=h, customer_key=key, updated_at=now)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["handle"],
                        set_={"customer_key": key, "updated_at": now},
                    )
                )
            conn.execute(
                update(C).where(C.c.customer_key == handle_key(h)).values(customer_key=key)
            )
        if changed:
            self._cap(conn, set(wanted.values()))
        return changed

    def _cap(self, conn: Connection, keys: Iterable[str]) -> None:
        """Keep at most ``max_per_customer`` contacts (the newest) under each of ``keys``."""
        n = self.max_per_customer
        over = conn.execute(
            select(C.c.customer_key)
            .where(C.c.customer_key.in_(sorted(keys)))
            .group_by(C.c.customer_key)
            .having(func.count() > n)
        ).scalars()
        for key in over:
            keep = (
                select(C.c.id)
                .where(C.c.customer_key == key)
                .order_by(C.c.at.desc(), C.c.id.desc())
                .limit(n)
            )
            conn.execute(delete(C).where(C.c.customer_key == key, C.c.id.not_in(keep)))

    def purge_expired(self, now: datetime | None = None) -> int:
        """Drop contacts older than the retention and handle links not renewed within it."""
        now = now or _now()
        oldest = now - self.retention
        with writing(self.store, C, H) as conn:
            gone = conn.execute(delete(C).where(C.c.at < oldest)).rowcount
            gone += conn.execute(delete(H).where(H.c.updated_at < oldest)).rowcount
        return gone

    def erase(self, customer_id: str | None = None, handle: str | None = None) -> int:
        """Forget a customer (their contacts and handle links) or a handle (its own contacts
        and its link): a deletion request."""
        keys, handles = [], []
        if customer_id:
            keys.append(customer_key(customer_id))
        h = normalize_handle(handle)
        if h:
            keys.append(handle_key(h))
            handles.append(h)
        if not keys:
            return 0
        with writing(self.store, C, H) as conn:
            gone = conn.execute(delete(C).where(C.c.customer_key.in_(keys))).rowcount
            gone += conn.execute(
                delete(H).where((H.c.customer_key.in_(keys)) | (H.c.handle.in_(handles)))
            ).rowcount
        return gone

    # -- reads --------------------------------------------------------------------------------

    def _fetch(
        self, keys: set[str], handles: set[str], since: datetime, until: datetime | None = None
    ) -> dict[str, list[tuple[int, str, datetime]]]:
        """One query: contacts under ``keys``, and under the customers ``handles`` are linked
        to (reported under ``h:<handle>``), at or after ``since``; by key, oldest first."""
        parts = []
        if keys:
            q = select(C.c.id, C.c.customer_key.label("via"), C.c.channel, C.c.at).where(
                C.c.customer_key.in_(sorted(keys)), C.c.at >= since
            )
            parts.append(q if until is None else q.where(C.c.at <= until))
        if handles:
            q = (
                select(C.c.id, (literal("h:") + H.c.handle).label("via"), C.c.channel, C.c.at)
                .select_from(H.join(C, C.c.customer_key == H.c.customer_key))
                .where(H.c.handle.in_(sorted(handles)), C.c.at >= since)
            )
            parts.append(q if until is None else q.where(C.c.at <= until))
        if not parts:
            return {}
        stmt = parts[0] if len(parts) == 1 else union_all(*parts)
        out: dict[str, list[tuple[int, str, datetime]]] = defaultdict(list)
        with self.store.engine.connect() as conn:
            for row in conn.execute(stmt):
                out[row.via].append((row.id, row.channel, aware(row.at)))  # type: ignore[arg-type]
        for rows in out.values():
            rows.sort(key=lambda r: (r[2], r[0]))
        return out

    def for_posts(
        self, posts: Sequence[Post], since: datetime, until: datetime | None = None
    ) -> list[list[ContactAt]] | None:
        """Per post, the recorded contacts of its customer (by ``customer.id``, by
        ``author.handle`` and by the customer that handle is linked to), from ``since`` to
        ``until``, without those the post carries itself; None, with no query, when no post
        names a customer or a handle."""
        wanted = [_post_keys(p) for p in posts]
        keys = {k for k, _ in wanted if k} | {handle_key(h) for _, h in wanted if h}
        handles = {h for _, h in wanted if h}
        if not keys:
            return None
        found = self._fetch(keys, handles, since, until)
        out: list[list[ContactAt]] = []
        for post, (key, handle) in zip(posts, wanted, strict=True):
            rows: dict[int, tuple[str, datetime]] = {}
            for via in (key, handle and handle_key(handle)):
                for cid, ch, at in found.get(via, ()) if via else ():
                    rows[cid] = (ch, at)
            own = {
                (c.channel.value, c.at)
                for c in (post.customer.recent_contacts if post.customer else ())
            }
            merged = sorted({v for v in rows.values() if v not in own}, key=lambda v: v[1])
            out.append([(Channel(ch), at) for ch, at in merged[-self.max_per_customer :]])
        return out

    def history(self, customer_id: str | None = None, handle: str | None = None) -> list[ContactAt]:
        """A customer's (or a handle's) contacts within the retention, oldest first."""
        keys = {customer_key(customer_id)} if customer_id else set()
        h = normalize_handle(handle)
        if h:
            keys.add(handle_key(h))
        found = self._fetch(keys, {h} if h else set(), _now() - self.retention)
        rows = {cid: (ch, at) for via in found.values() for cid, ch, at in via}
        return [(Channel(ch), at) for ch, at in sorted(rows.values(), key=lambda v: v[1])]
