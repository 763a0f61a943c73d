"""``/v1/contacts``: a customer's contacts on every channel, which scoring merges into their
posts (``serving/contacts.py``). Sync handlers run in FastAPI's thread pool, where the
database calls belong."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State

from serving.casework_schemas import ContactHistory, ContactOut, ContactsIn, ContactsRecorded
from serving.contacts import ContactAt, ContactStore, history_window, wants_history
from serving.deps import Authorized
from serving.errors import ModelNotReady, ValidationFailed, responses
from serving.priority import Policy
from serving.schemas import Post, Stored

router = APIRouter(prefix="/v1", tags=["contacts"], dependencies=[Authorized])


async def get_contacts(request: Request) -> ContactStore:
    found = getattr(request.app.state, "contacts", None)
    if found is None:
        raise ModelNotReady("the service is starting or shutting down")
    return found


ContactsDep = Annotated[ContactStore, Depends(get_contacts)]
CustomerId = Annotated[Stored | None, Query(min_length=1, max_length=200)]
Handle = Annotated[Stored | None, Query(min_length=1, max_length=200)]


async def history_for(
    state: State, posts: Sequence[Post], policy: Policy
) -> list[list[ContactAt]] | None:
    """Per post, the recorded contacts that can count for its priority (one query for all),
    or None when no post names a customer or a handle."""
    contacts: ContactStore | None = getattr(state, "contacts", None)
    if contacts is None or not wants_history(posts):
        return None
    since, until = history_window(posts, policy.priority.repeat_contact_window_hours)
    return await run_in_threadpool(contacts.for_posts, posts, since, until)


@router.post("/contacts", response_model=ContactsRecorded, responses=responses(401, 413, 422, 429))
def record_contacts(body: ContactsIn, contacts: ContactsDep) -> ContactsRecorded:
    """Record contacts (1-1000) from any channel and link social handles to customers, in one
    transaction committed before the answer. A contact names a ``customer_id``, a ``handle``
    or both (which links the handle); ``links`` link handles without a contact. A retry with
    the same contact ``id`` counts once."""
    done = contacts.record(body.contacts, body.links)
    return ContactsRecorded(recorded=done.recorded, duplicates=done.duplicates, linked=done.linked)


def _need_one(customer_id: str | None, handle: str | None) -> None:
    if customer_id is None and handle is None:
        raise ValidationFailed(
            "customer_id: give a customer_id or a handle", ["customer_id", "handle"]
        )


@router.get("/contacts", response_model=ContactHistory, responses=responses(401, 422, 429))
def contact_history(
    contacts: ContactsDep, customer_id: CustomerId = None, handle: Handle = None
) -> ContactHistory:
    """A customer's (by id) or a handle's recorded contacts within the retention, oldest
    first; with both, the two histories together."""
    _need_one(customer_id, handle)
    rows = contacts.history(customer_id, handle)
    return ContactHistory(
        customer_id=customer_id,
        handle=handle,
        contacts=[ContactOut(channel=ch, at=at) for ch, at in rows],
    )


@router.delete("/contacts", responses=responses(401, 422, 429))
def erase_contacts(
    contacts: ContactsDep, customer_id: CustomerId = None, handle: Handle = None
) -> dict[str, int]:
    """Forget a customer's contacts and handle links (or a handle's): a deletion request."""
    _need_one(customer_id, handle)
    return {"erased": contacts.erase(customer_id, handle)}
