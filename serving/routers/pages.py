"""Server-rendered pages of the labeling workspace: sign-in, the labeling page, the stats,
review and accounts pages; and the managers' reports page (``/reports``). Templates and assets
ship in the package (no CDN, no build step); the pages' scripts talk to the JSON API
(``serving.routers.labeling``, ``serving.routers.reports``).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from serving.deps import WorkspaceDep, session_of
from serving.labeling.accounts import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    needs_rehash,
    now,
    retry_after,
    verify_password,
)
from serving.labeling.store import User
from serving.labeling.workspace import Workspace

HERE = Path(__file__).resolve().parent.parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(include_in_schema=False)

PAGES = {
    # path: (template, role needed, title)
    "/label": ("label.html", "evaluator", "Label"),
    "/label/stats": ("stats.html", "lead", "Agreement and progress"),
    "/label/review": ("review.html", "lead", "Review"),
    "/label/users": ("users.html", "admin", "Accounts"),
    "/reports": ("reports.html", "lead", "Reports"),
}


def mount_static(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")


def _safe_next(target: str | None) -> str:
    """Only local paths: a sign-in link must not bounce the user to another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/label"
    return target


def _login_page(
    request: Request, ws: Workspace, message: str = "", status: int = 200, nxt: str = "/label"
) -> Response:
    nonce = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(16)
    resp = templates.TemplateResponse(
        request,
        "login.html",
        {"csrf": ws.signer.csrf_token("login:" + nonce), "message": message, "next": nxt},
        status_code=status,
    )
    resp.set_cookie(
        LOGIN_COOKIE,
        nonce,
        httponly=True,
        samesite="strict",
        secure=ws.settings.cookie_secure,
        max_age=3600,
    )
    return resp


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, ws: WorkspaceDep, next: str = "/label") -> Response:
    return _login_page(request, ws, nxt=_safe_next(next))


@router.post("/login", response_class=HTMLResponse)
async def login(
    request: Request,
    ws: WorkspaceDep,
    name: Annotated[str, Form(max_length=100)] = "",
    password: Annotated[str, Form(max_length=200)] = "",
    csrf: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=500)] = "/label",
) -> Response:
    """Sign in. Failed attempts slow the name (and, for unknown names, the client) down."""
    target = _safe_next(next)
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    if not nonce or not ws.signer.check_csrf("login:" + nonce, csrf):
        return _login_page(request, ws, "The form expired; please try again.", 400, target)
    client = request.client.host if request.client else "?"
    user = await run_in_threadpool(ws.labels.get_user, None, name=name)
    wait = (
        retry_after(user.failed_logins, user.last_failed_at, now())
        if user is not None
        else ws.throttle.wait(client)
    )
    if wait > 0:
        resp = _login_page(
            request, ws, f"Too many failed sign-ins; wait {wait:.0f} s and try again.", 429
        )
        resp.headers["Retry-After"] = str(max(1, round(wait + 0.5)))
        return resp
    ok = await run_in_threadpool(verify_password, user.password_hash if user else None, password)
    if not ok or user is None or user.disabled:
        if user is not None:
            await run_in_threadpool(ws.labels.record_login, user.id, False)
        else:
            ws.throttle.failed(client)
        return _login_page(request, ws, "Wrong name or password.", 401, target)
    await run_in_threadpool(ws.labels.record_login, user.id, True)
    if needs_rehash(user.password_hash):
        from serving.labeling.accounts import hash_password

        new_hash = await run_in_threadpool(hash_password, password)
        user = await run_in_threadpool(
            lambda: ws.labels.update_user(user.id, password_hash=new_hash)
        )
    ws.forget(user.id)  # the session below must be checked against this very account
    token, _ = ws.signer.session_cookie(user.id, user.password_hash)
    resp = RedirectResponse(target, status_code=303)
    resp.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="lax",
        secure=ws.settings.cookie_secure,
        max_age=ws.settings.session_max_age,
    )
    resp.delete_cookie(LOGIN_COOKIE)
    return resp


@router.post("/logout")
async def logout(
    request: Request, ws: WorkspaceDep, csrf: Annotated[str, Form(max_length=200)] = ""
) -> Response:
    found = await session_of(request, ws)
    if found is not None and not ws.signer.check_csrf(found[1].nonce, csrf):
        return Response("invalid CSRF token", status_code=403)
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE)
    return resp


async def _page(request: Request, ws: Workspace, path: str) -> Response:
    template, role, title = PAGES[path]
    found = await session_of(request, ws)
    if found is None:
        return RedirectResponse(f"/login?next={quote(path)}", status_code=303)
    user, session = found
    if not user.can(role):
        return templates.TemplateResponse(
            request,
            "forbidden.html",
            _context(request, user, ws, session.nonce, title, role=role),
            status_code=403,
        )
    return templates.TemplateResponse(
        request, template, _context(request, user, ws, session.nonce, title)
    )


def _context(
    request: Request, user: User, ws: Workspace, nonce: str, title: str, **extra: Any
) -> dict:
    bundle = request.app.state.bundle
    return {
        "user": user,
        "csrf": ws.signer.csrf_token(nonce),
        "title": title,
        "tasks": {t.name: list(t.labels) for t in ws.schema(bundle.schema_).tasks}
        if bundle
        else {},
        "model_version": bundle.meta.version if bundle else "",
        **extra,
    }


def _page_route(path: str) -> Callable[[Request, Workspace], Awaitable[Response]]:
    async def page(request: Request, ws: WorkspaceDep) -> Response:
        return await _page(request, ws, path)

    return page


for _path in PAGES:
    router.add_api_route(_path, _page_route(_path), methods=["GET"], response_class=HTMLResponse)
