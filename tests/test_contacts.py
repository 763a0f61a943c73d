"""Customer context across channels: the contact store on SQLite and PostgreSQL (keys, handle
links, retention, one query per lookup) and its effect on /v1/score end to end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, inspect
from sqlalchemy.engine import make_url

from serving.app import create_app
from serving.casework_schemas import ContactIn, HandleLink
from serving.contacts import ContactStore, history_window, normalize_handle, wants_history
from serving.schemas import Author, Channel, Contact, Customer, Post
from serving.settings import Settings
from serving.store import Store
from tests.conftest import PG_URL

KEY = "test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'contacts.db'}")
    else:
        s = Store(PG_URL, schema=request.getfixturevalue("pg_schemas")())
    s.upgrade()
    yield s
    s.dispose()


def contacts(store: Store, **kw) -> ContactStore:
    return ContactStore(store, **kw)


def ago(**kw) -> datetime:
    return NOW - timedelta(**kw)


def post(pid: str = "p", *, handle: str | None = None, customer: str | None = None, **kw) -> Post:
    return Post(
        id=pid,
        text="where is my bag",
        created_at=kw.pop("created_at", NOW),
        author=Author(handle=handle) if handle else None,
        customer=Customer(id=customer, **kw) if customer else None,
    )


def lookup(cs: ContactStore, *posts: Post, hours: float = 48) -> list[list[tuple[str, datetime]]]:
    since, until = history_window(posts, hours)
    got = cs.for_posts(posts, since, until)
    assert got is not None
    return [[(str(ch), at) for ch, at in rows] for rows in got]


def one(cs: ContactStore, p: Post) -> list[tuple[str, datetime]]:
    return lookup(cs, p)[0]


def count_queries(store: Store) -> list[str]:
    seen: list[str] = []

    @event.listens_for(store.engine, "before_cursor_execute")
    def _count(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("SELECT"):  # not SQLite's BEGIN
            seen.append(statement)

    return seen


# -- the store --------------------------------------------------------------------------------


def test_tables_exist_after_upgrade(store):
    names = set(inspect(store.engine).get_table_names(schema=store.schema))
    assert {"contacts", "customer_handles", "assignments", "feedback"} <= names


def test_contacts_by_customer_and_by_linked_handle(store):
    cs = contacts(store)
    got = cs.record(
        [
            ContactIn(customer_id="c-42", channel="phone", at=ago(hours=3)),
            ContactIn(customer_id="c-42", handle="@Kim", channel="email", at=ago(hours=2)),
            ContactIn(customer_id="other", channel="chat", at=ago(hours=1)),
        ]
    )
    assert (got.recorded, got.duplicates, got.linked) == (3, 0, 1)
    by_id, by_handle, stranger = lookup(
        cs, post("a", customer="c-42"), post("b", handle="KIM"), post("c", handle="@nobody")
    )
    assert by_id == by_handle == [("phone", ago(hours=3)), ("email", ago(hours=2))]
    assert stranger == []


def test_unlinked_handle_contacts_move_to_the_customer_once_linked(store):
    cs = contacts(store)
    cs.record([ContactIn(handle="@kim", channel="twitter", at=ago(hours=5))])
    cs.record([ContactIn(customer_id="c-1", channel="phone", at=ago(hours=4))])
    # Before the link: the handle and the customer are two histories.
    assert one(cs, post(customer="c-1")) == [("phone", ago(hours=4))]
    assert cs.record(links=[HandleLink(handle="Kim", customer_id="c-1")]).linked == 1
    assert cs.record(links=[HandleLink(handle="@KIM", customer_id="c-1")]).linked == 0  # same
    both = [("twitter", ago(hours=5)), ("phone", ago(hours=4))]
    assert one(cs, post(customer="c-1")) == both
    assert one(cs, post(handle="kim")) == both
    # A contact naming only the handle now lands on the customer.
    cs.record([ContactIn(handle="kim", channel="chat", at=ago(hours=1))])
    assert one(cs, post(customer="c-1"))[-1] == ("chat", ago(hours=1))
    # Moving the handle to another customer takes it away from the first.
    cs.record(links=[HandleLink(handle="kim", customer_id="c-2")])
    assert one(cs, post(handle="kim")) == []


def test_a_retried_contact_counts_once(store):
    cs = contacts(store)
    c = ContactIn(customer_id="c", channel="phone", at=ago(hours=1), id="crm-77")
    assert cs.record([c, c]).recorded == 1  # twice in one request
    again = cs.record([c])
    assert (again.recorded, again.duplicates) == (0, 1)
    assert len(one(cs, post(customer="c"))) == 1


def test_retention_and_cap_bound_the_history(store):
    cs = contacts(store, retention_days=10, max_per_customer=3)
    old = ContactIn(customer_id="c", channel="email", at=ago(days=11))
    assert cs.record([old]).recorded == 0  # past the retention already: not kept
    cs.record([ContactIn(customer_id="c", channel="phone", at=ago(hours=h)) for h in range(6)])
    assert [at for _, at in cs.history("c")] == [ago(hours=2), ago(hours=1), ago(hours=0)]
    cs.record([ContactIn(customer_id="d", handle="@d", channel="chat", at=ago(days=5))])
    # Six days on, d's contact is 11 days old: purged; c's contacts and d's link (made now)
    # are 6 days old: kept.
    assert cs.purge_expired(NOW + timedelta(days=6)) == 1
    assert len(cs.history("c")) == 3
    # Eleven days on, c's three contacts and the link not renewed since go too.
    assert cs.purge_expired(NOW + timedelta(days=11)) == 4


def test_erase_forgets_a_customer(store):
    cs = contacts(store)
    cs.record([ContactIn(customer_id="c", handle="@h", channel="phone", at=ago(hours=1))])
    assert cs.erase(customer_id="c") == 2  # the contact and the link
    assert lookup(cs, post(handle="h"), post("q", customer="c")) == [[], []]


def test_one_query_for_every_post_of_a_request_and_none_without_keys(store):
    cs = contacts(store)
    cs.record(links=[HandleLink(handle="h1", customer_id="c1")])
    cs.record([ContactIn(customer_id="c1", channel="phone", at=ago(hours=1))])
    seen = count_queries(store)
    posts = [post(f"p{i}", handle=f"h{i}", customer=f"c{i}") for i in range(50)]
    got = lookup(cs, *posts)
    assert len(seen) == 1 and "UNION ALL" in seen[0].upper()
    assert got[1] == [("phone", ago(hours=1))] and got[2] == []
    seen.clear()
    anonymous = [post("x"), post("y")]
    assert not wants_history(anonymous)
    assert cs.for_posts(anonymous, ago(days=1)) is None and seen == []


def test_the_posts_own_contacts_and_the_window(store):
    cs = contacts(store)
    cs.record(
        [
            ContactIn(customer_id="c", channel="phone", at=ago(hours=3)),
            ContactIn(customer_id="c", channel="email", at=ago(hours=60)),  # before the window
            ContactIn(customer_id="c", channel="chat", at=NOW + timedelta(minutes=5)),  # after
        ]
    )
    own = post(customer="c")
    own.customer.recent_contacts.append(Contact(channel=Channel.phone, at=ago(hours=3)))
    assert one(cs, own) == []  # the one it carries is not counted twice
    assert one(cs, post(customer="c")) == [("phone", ago(hours=3))]


def test_ids_no_store_can_hold_are_not_looked_up(store):
    # PostgreSQL refuses NUL even as a query parameter: looking it up was a 500.
    cs = contacts(store)
    odd = [post("a", customer="c\x00d"), post("b", handle="@k\x00m")]
    assert not wants_history(odd) and cs.for_posts(odd, ago(days=1)) is None
    mixed = lookup(cs, post("a", customer="c\x00d"), post("b", customer="fine"))
    assert mixed == [[], []]


def test_normalize_handle():
    assert normalize_handle(" @Kim ") == normalize_handle("kim") == "kim"
    assert normalize_handle("@") is None and normalize_handle(None) is None


# -- the API ----------------------------------------------------------------------------------


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def client(request, onnx_bundle, tmp_path_factory):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('contacts') / 'api.db'}"
    else:
        schema = request.getfixturevalue("pg_schemas")()
        url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
        url = url.render_as_string(hide_password=False)
    settings = Settings(
        api_keys=[KEY], model_dir=onnx_bundle, database_url=url, rate_limit_enabled=False
    )
    with TestClient(create_app(settings)) as c:
        yield c


def tweet(pid: str, handle: str) -> dict:
    return {
        "id": pid,
        "text": "@airline my bag never arrived and nobody answers!!",
        "channel": "twitter",
        "created_at": NOW.isoformat(),
        "author": {"handle": handle},
    }


def repeat_reason(result: dict) -> dict | None:
    found = [r for r in result["priority"]["reasons"] if r["factor"] == "repeat_contact"]
    return found[0] if found else None


def test_called_emailed_then_tweeted_raises_priority(client):
    before = client.post("/v1/score", headers=AUTH, json={"posts": [tweet("t0", "@kim")]})
    assert before.status_code == 200, before.text
    assert repeat_reason(before.json()["results"][0]) is None
    r = client.post(
        "/v1/contacts",
        headers=AUTH,
        json={
            "contacts": [
                {"customer_id": "c-42", "channel": "phone", "at": ago(hours=3).isoformat()},
                {"customer_id": "c-42", "channel": "email", "at": ago(hours=2).isoformat()},
            ],
            "links": [{"handle": "@Kim", "customer_id": "c-42"}],
        },
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"recorded": 2, "duplicates": 0, "linked": 1}
    after = client.post("/v1/score", headers=AUTH, json={"posts": [tweet("t1", "@kim")]})
    result = after.json()["results"][0]
    reason = repeat_reason(result)
    assert reason is not None and reason["points"] > 0
    assert "2 contact(s) on email, phone" in reason["detail"]
    old = before.json()["results"][0]["priority"]["score"]
    assert result["priority"]["score"] == min(100, old + round(reason["points"]))
    # Another author's tweet in the same request is untouched.
    both = client.post(
        "/v1/score", headers=AUTH, json={"posts": [tweet("a", "@kim"), tweet("b", "@zed")]}
    ).json()["results"]
    assert repeat_reason(both[0]) is not None and repeat_reason(both[1]) is None
    history = client.get("/v1/contacts", headers=AUTH, params={"handle": "KIM"}).json()
    assert [c["channel"] for c in history["contacts"]] == ["phone", "email"]
    assert client.delete("/v1/contacts", headers=AUTH, params={"customer_id": "c-42"}).json() == {
        "erased": 3
    }
    gone = client.post("/v1/score", headers=AUTH, json={"posts": [tweet("t2", "@kim")]})
    assert repeat_reason(gone.json()["results"][0]) is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"contacts": [{"channel": "phone", "at": NOW.isoformat()}]}, "contacts.0.handle"),
        ({}, "links"),
        ({"contacts": [], "links": []}, "links"),
        (
            {"contacts": [{"customer_id": "c", "channel": "fax", "at": NOW.isoformat()}]},
            "contacts.0.channel",
        ),
        (
            {"contacts": [{"customer_id": "c", "channel": "phone", "at": "2999-01-01T00:00Z"}]},
            "contacts.0.at",
        ),
        ({"links": [{"handle": " @ ", "customer_id": "c"}]}, "links.0.handle"),
        ({"links": [{"handle": "h", "customer_id": "c\u0000"}]}, "links.0.customer_id"),
    ],
)
def test_bad_contacts_are_422_naming_the_field(client, body, field):
    r = client.post("/v1/contacts", headers=AUTH, json=body)
    assert r.status_code == 422, r.text
    assert field in r.json()["fields"], r.json()


def test_an_id_no_store_holds_is_scored_not_a_500(client):
    body = {"posts": [{**tweet("n1", "@x\u0000y"), "customer": {"id": "c\u0000"}}]}
    r = client.post("/v1/score", headers=AUTH, json=body)
    assert r.status_code == 200, r.text
    assert repeat_reason(r.json()["results"][0]) is None


def test_history_needs_a_key_and_an_api_key(client):
    r = client.get("/v1/contacts", headers=AUTH)
    assert r.status_code == 422 and "customer_id" in r.json()["fields"]
    assert client.post("/v1/contacts", json={"links": []}).status_code == 401
