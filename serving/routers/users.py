"""Workspace accounts (admins only): evaluators, leads and admins. Helpdesk API keys are not
accounts and cannot manage them; ``caretriage users add`` does the same from a shell."""

from __future__ import annotations

from fastapi import APIRouter, status
from starlette.concurrency import run_in_threadpool

from serving.deps import Admin, WorkspaceDep
from serving.errors import NotFound, ValidationFailed, responses
from serving.labeling.accounts import hash_password
from serving.labeling.store import LabelingError
from serving.routers.labeling import as_api_error
from serving.schemas import NewUser, UserOut, UserPatch

router = APIRouter(prefix="/v1/users", tags=["users"])


def _out(u) -> UserOut:
    return UserOut(name=u.name, role=u.role, disabled=u.disabled)


@router.get("", response_model=list[UserOut], responses=responses(401, 403))
def list_users(admin: Admin, ws: WorkspaceDep) -> list[UserOut]:
    return [_out(u) for u in ws.labels.list_users()]


@router.post(
    "",
    response_model=UserOut,
    status_code=status.HTTP_201_CREATED,
    responses=responses(401, 403, 409, 422),
)
async def add_user(body: NewUser, admin: Admin, ws: WorkspaceDep) -> UserOut:
    hashed = await run_in_threadpool(hash_password, body.password)
    try:
        user = await run_in_threadpool(ws.labels.add_user, body.name, body.role, hashed)
    except LabelingError as e:
        raise as_api_error(e) from e
    return _out(user)


@router.patch("/{name}", response_model=UserOut, responses=responses(401, 403, 404, 422))
async def update_user(name: str, body: UserPatch, admin: Admin, ws: WorkspaceDep) -> UserOut:
    """Change a role, disable or enable an account, or set a new password (which signs that
    user's sessions out)."""
    user = await run_in_threadpool(ws.labels.get_user, None, name=name)
    if user is None:
        raise NotFound(f"no user {name!r}", ["name"])
    if user.id == admin.id and (body.disabled or (body.role and body.role != "admin")):
        raise ValidationFailed("an admin cannot disable or demote themselves", ["name"])
    values: dict = {}
    if body.role is not None:
        values["role"] = body.role
    if body.disabled is not None:
        values["disabled"] = body.disabled
    if body.password is not None:
        values["password_hash"] = await run_in_threadpool(hash_password, body.password)
        values["failed_logins"] = 0
    if not values:
        return _out(user)
    updated = await run_in_threadpool(lambda: ws.labels.update_user(user.id, **values))
    ws.forget(user.id)
    return _out(updated)
