"""The triage core (serving/triage.py): model probabilities, policy and roster in, results out;
the same function behind the API, assignment and the replay benchmarks."""

from __future__ import annotations

import functools
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from features.schema import LabelSchema, default_schema_path
from serving.priority import Policy, load_policy
from serving.routing import Roster
from serving.schemas import Agent, Channel, Post
from serving.triage import Triage, compiled_roster, triage

T0 = datetime(2024, 3, 5, 14, 0, tzinfo=UTC)


@functools.cache
def schema() -> LabelSchema:
    return LabelSchema.load(default_schema_path())


@functools.cache
def policy() -> Policy:
    return load_policy()


def probs_for(rows: list[dict[str, str]], sure: float = 0.9) -> dict[str, np.ndarray]:
    """One row per post: probability ``sure`` on the named label of each task, the rest
    spread evenly."""
    out = {}
    for task in schema().names:
        labels = schema().task(task).labels
        m = np.full((len(rows), len(labels)), (1 - sure) / (len(labels) - 1), dtype=np.float32)
        for i, row in enumerate(rows):
            m[i, labels.index(row[task])] = sure
        out[task] = m
    return out


def angry(topic: str = "lost_luggage") -> dict[str, str]:
    s = schema()
    return {
        "topic": topic,
        "sentiment": s.task("sentiment").positive_labels[0],
        "actionability": s.task("actionability").positive_labels[0],
    }


def calm() -> dict[str, str]:
    s = schema()
    sentiment = [
        x for x in s.task("sentiment").labels if x not in s.task("sentiment").positive_labels
    ]
    action = [
        x
        for x in s.task("actionability").labels
        if x not in s.task("actionability").positive_labels
    ]
    return {"topic": "bad_flight", "sentiment": sentiment[-1], "actionability": action[0]}


def post(i: int, **kw) -> Post:
    return Post(id=f"p{i}", text="text", created_at=kw.pop("created_at", T0), **kw)


def roster(*agents: Agent) -> Roster:
    return Roster(agents, policy().routing)


def test_results_follow_posts_in_order_with_predictions_priority_and_route():
    rows = [angry(), calm(), angry("cancelled_flight")]
    posts = [post(i) for i in range(3)]
    team = roster(
        Agent(id="bags", skills={"lost_luggage": 0.9}),
        Agent(id="flights", skills={"cancelled_flight": 0.9}),
    )
    got = triage(posts, probs_for(rows), schema(), policy(), team)
    assert [r.id for r in got] == ["p0", "p1", "p2"]
    assert [r.topic.label for r in got] == ["lost_luggage", "bad_flight", "cancelled_flight"]
    assert got[0].actionable.label and not got[1].actionable.label
    assert got[0].priority.score > got[1].priority.score
    assert got[0].route.agents[0].id == "bags" and got[2].route.agents[0].id == "flights"
    assert all(r.priority.dictionary_version is None for r in got)


def test_thresholds_abstention_and_dictionary_version_are_applied():
    rows = [angry()]
    probs = probs_for(rows, sure=0.6)
    got = triage(
        [post(0)],
        probs,
        schema(),
        policy(),
        roster(),
        actionable_threshold=0.99,
        abstain_below={"topic": 0.7},
        dictionary_version=7,
    )[0]
    assert got.topic.uncertain and not got.sentiment.uncertain
    assert not got.actionable.label, "0.6 is under the 0.99 threshold"
    assert got.priority.dictionary_version == 7


def test_contacts_from_the_history_raise_priority_with_a_reason():
    """A customer who phoned three hours ago and now tweets: the history store's contacts
    count exactly like those the post carries."""
    rows = [angry()]
    alone = triage([post(0)], probs_for(rows), schema(), policy(), roster())[0]
    history = [[(Channel.phone, T0 - timedelta(hours=3))]]
    merged = triage([post(0)], probs_for(rows), schema(), policy(), roster(), contacts=history)[0]
    carried = post(
        0, customer={"recent_contacts": [{"channel": "phone", "at": T0 - timedelta(hours=3)}]}
    )
    inline = triage([carried], probs_for(rows), schema(), policy(), roster())[0]
    assert merged.priority.score > alone.priority.score
    assert merged.priority == inline.priority
    reason = next(r for r in merged.priority.reasons if r.factor == "repeat_contact")
    assert "phone" in reason.detail


def test_contacts_must_align_with_posts():
    with pytest.raises(ValueError, match="contacts has 2 entries for 1 posts"):
        triage([post(0)], probs_for([angry()]), schema(), policy(), roster(), contacts=[[], []])


def test_the_customer_tier_counts():
    rows = [angry(), angry(), angry()]
    posts = [
        post(0),
        post(1, customer={"tier": "Platinum"}),
        post(2, customer={"tier": "no-such-tier"}),
    ]
    plain, platinum, unknown = triage(posts, probs_for(rows), schema(), policy(), roster())
    assert platinum.priority.score > plain.priority.score
    assert unknown.priority.score == plain.priority.score
    reason = next(r for r in platinum.priority.reasons if r.factor == "customer_tier")
    assert "Platinum" in reason.detail


def test_now_adds_breach_risk_only_when_given():
    """Pure without ``now``; with it, a post waiting past its window gets the reason."""
    rows = [angry()]
    old = [post(0, created_at=T0 - timedelta(hours=3))]
    pure = triage(old, probs_for(rows), schema(), policy(), roster())[0]
    late = triage(old, probs_for(rows), schema(), policy(), roster(), now=T0)[0]
    fresh = triage([post(0)], probs_for(rows), schema(), policy(), roster(), now=T0)[0]
    assert "breach_risk" not in {r.factor for r in pure.priority.reasons}
    assert "breach_risk" not in {r.factor for r in fresh.priority.reasons}
    assert "breach_risk" in {r.factor for r in late.priority.reasons}
    assert late.priority.score > pure.priority.score
    assert late.priority.respond_by == pure.priority.respond_by


def test_the_triage_object_runs_like_the_function():
    rows = [angry(), calm()]
    posts = [post(0), post(1)]
    t = Triage(schema(), policy(), actionable_threshold=0.4, dictionary_version=3)
    kw = {"actionable_threshold": 0.4, "dictionary_version": 3, "now": T0}
    assert t.run(posts, probs_for(rows), roster(), now=T0) == triage(
        posts, probs_for(rows), schema(), policy(), roster(), **kw
    )


def test_the_compiled_roster_is_cached_on_any_holder():
    class Holder:
        pass

    h, agents = Holder(), (Agent(id="a"),)
    first = compiled_roster(h, agents, policy().routing)
    assert compiled_roster(h, agents, policy().routing) is first
    assert compiled_roster(h, (Agent(id="a"),), policy().routing) is not first


def test_the_core_has_no_web_or_database_imports():
    code = (
        "import sys\n"
        "import serving.triage\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('fastapi', 'starlette', 'sqlalchemy', 'torch')]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
