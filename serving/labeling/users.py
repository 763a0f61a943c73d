"""Accounts in the store: evaluators, leads and admins (the hashing and sessions are in
``serving.labeling.accounts``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from serving.labeling.errors import LabelingError
from serving.labeling.tables import aware as _aware
from serving.labeling.tables import users_table as U
from serving.labeling.tables import utcnow as _now
from serving.store import Store

ROLES = ("evaluator", "lead", "admin")
# Each role may do what the ones before it may.
ROLE_RANK = {r: i for i, r in enumerate(ROLES)}


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str
    password_hash: str
    disabled: bool
    failed_logins: int
    last_failed_at: datetime | None

    def can(self, role: str) -> bool:
        """Whether this user holds ``role`` or a higher one."""
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


def _user(row: Any) -> User:
    m = row._mapping
    return User(
        id=m["id"],
        name=m["name"],
        role=m["role"],
        password_hash=m["password_hash"],
        disabled=bool(m["disabled"]),
        failed_logins=m["failed_logins"],
        last_failed_at=_aware(m["last_failed_at"]),
    )


class UserStore:
    """The account half of ``LabelingStore``."""

    store: Store

    def add_user(self, name: str, role: str, password_hash: str) -> User:
        if role not in ROLES:
            raise LabelingError(f"role: must be one of {list(ROLES)}", 422, ["role"])
        row = {
            "name": name,
            "role": role,
            "password_hash": password_hash,
            "disabled": False,
            "failed_logins": 0,
            "created_at": _now(),
        }
        try:
            with self.store._write() as conn:
                conn.execute(insert(U).values(**row))
        except IntegrityError:
            raise LabelingError(f"name: a user {name!r} exists already", 409, ["name"]) from None
        user = self.get_user(name=name)
        assert user is not None
        return user

    def get_user(self, user_id: int | None = None, *, name: str | None = None) -> User | None:
        q = select(U).where(U.c.id == user_id) if user_id is not None else None
        if q is None:
            q = select(U).where(U.c.name == name)
        with self.store.engine.connect() as conn:
            row = conn.execute(q).first()
        return _user(row) if row is not None else None

    def list_users(self) -> list[User]:
        with self.store.engine.connect() as conn:
            return [_user(r) for r in conn.execute(select(U).order_by(U.c.name)).all()]

    def update_user(self, user_id: int, **values: Any) -> User:
        allowed = {"role", "password_hash", "disabled", "failed_logins", "last_failed_at"}
        bad = sorted(set(values) - allowed)
        if bad:
            raise ValueError(f"cannot update {bad}")
        if "role" in values and values["role"] not in ROLES:
            raise LabelingError(f"role: must be one of {list(ROLES)}", 422, ["role"])
        with self.store._write() as conn:
            n = conn.execute(update(U).where(U.c.id == user_id).values(**values)).rowcount
        if not n:
            raise LabelingError(f"no user {user_id}", 404)
        user = self.get_user(user_id)
        assert user is not None
        return user

    def record_login(self, user_id: int, ok: bool) -> None:
        """Count a failed sign-in (the next attempt is slowed down), or clear the count."""
        values: dict[str, Any]
        if ok:
            values = {"failed_logins": 0, "last_failed_at": None}
        else:
            values = {"failed_logins": U.c.failed_logins + 1, "last_failed_at": _now()}
        with self.store._write() as conn:
            conn.execute(update(U).where(U.c.id == user_id).values(**values))
