"""The replay's traffic: real posts as the router sees them (the triage core's predictions and
priority) and as the simulated world knows them (gold labels), with the customer context the
data lacks drawn per author. Nothing here depends on a router."""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from statistics import NormalDist

from serving.dispatch import Case
from serving.evaluation.team import GENERAL
from serving.schemas import Priority


@dataclass(frozen=True)
class ReplayPost:
    """One post as the router sees it (predictions, priority) and as the world knows it (gold).
    Times are minutes from the replay's start."""

    arrival: float
    due: float  # respond_by: the public promise for the post's level
    level: str
    topic: str  # predicted
    topic_confidence: float
    p_negative: float
    priority: Priority
    true_topic: str  # gold; team.GENERAL when there is no concrete complaint
    negative: bool  # gold
    strongly_negative: bool  # gold
    # As the assignment endpoint judges them (serving.dispatch.case_of): a top-band post when
    # strongly negative too.
    high_value: bool = False
    influential: bool = False


def stable_unit(key: str, salt: str) -> float:
    """A uniform number in [0, 1) from a string: the same author gets the same draw in every
    run and on every machine (``hash()`` is salted per process)."""
    digest = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _open_unit(u: float) -> float:
    """``u`` kept inside (0, 1), where the normal quantile is finite."""
    return min(max(u, 1e-12), 1 - 1e-12)


# A retweet shows the post to the retweeter's followers: taken as a typical account's (a few
# hundred), so reach = the author's followers + this per retweet.
RETWEET_AUDIENCE = 300


@dataclass(frozen=True)
class CustomerContext:
    lifetime_value: float
    followers: int
    open_tickets: int


def customer_context(
    authors: Sequence[str],
    created: Sequence[datetime],
    retweets: Sequence[int],
    seed: int,
    *,
    ticket_window: timedelta = timedelta(hours=24),
) -> list[CustomerContext]:
    """What the CRM would know, where the data has nothing: per author a lifetime value
    (log-normal, median 600, σ 1.2: most customers are occasional flyers, a few are worth tens
    of thousands) and followers (log-normal, median 250, σ 1.5), drawn from the author's name
    and ``seed``; reach adds ``RETWEET_AUDIENCE`` per retweet. ``open_tickets`` is the author's
    own posts in the ``ticket_window`` before this one (a customer chasing an answer). None of
    it depends on a router."""
    if not (len(authors) == len(created) == len(retweets)):
        raise ValueError("authors, created and retweets must have one entry per post")
    z = NormalDist().inv_cdf
    recent: dict[str, deque[datetime]] = {}
    order = sorted(range(len(authors)), key=lambda i: (created[i], i))
    tickets = [0] * len(authors)
    for i in order:
        q = recent.setdefault(authors[i], deque())
        while q and created[i] - q[0] > ticket_window:
            q.popleft()
        tickets[i] = len(q)
        q.append(created[i])
    out = []
    for i, author in enumerate(authors):
        value = 600 * math.exp(1.2 * z(_open_unit(stable_unit(author, f"value-{seed}"))))
        followers = 250 * math.exp(1.5 * z(_open_unit(stable_unit(author, f"followers-{seed}"))))
        out.append(
            CustomerContext(
                lifetime_value=round(value, 2),
                followers=int(followers) + RETWEET_AUDIENCE * max(0, retweets[i]),
                open_tickets=tickets[i],
            )
        )
    return out


def replay_posts(
    created: Sequence[datetime],
    cases: Sequence[Case],
    true_topics: Sequence[str],
    negative: Sequence[bool],
    strongly_negative: Sequence[bool],
) -> tuple[list[ReplayPost], datetime]:
    """ReplayPosts in arrival order, from each post's case as the assignment endpoint sees it
    (``serving.dispatch.case_of`` of the triage result: topic, P(negative), priority, value and
    influence) and its gold labels; and the moment minute 0 stands for."""
    if not (len(cases) == len(created) == len(true_topics) == len(negative)):
        raise ValueError("one case, time and gold label per post")
    if len(strongly_negative) != len(created):
        raise ValueError("one case, time and gold label per post")
    order = sorted(range(len(created)), key=lambda i: (created[i], i))
    t0 = created[order[0]]

    def minutes(t: datetime) -> float:
        return (t - t0).total_seconds() / 60

    return [
        ReplayPost(
            arrival=minutes(created[i]),
            due=minutes(cases[i].priority.respond_by),
            level=cases[i].priority.level,
            topic=cases[i].topic,
            topic_confidence=cases[i].topic_confidence,
            p_negative=cases[i].p_negative,
            priority=cases[i].priority,
            true_topic=true_topics[i],
            negative=bool(negative[i]),
            strongly_negative=bool(strongly_negative[i]),
            high_value=cases[i].high_value,
            influential=cases[i].influential,
        )
        for i in order
    ], t0


_TOPIC_ALIASES = {"longlines": "long_lines"}


def airline_true_topic(sentiment: str, negativereason: str | None, topics: Sequence[str]) -> str:
    """The gold topic of an airline tweet in the model's label names (``Lost Luggage`` →
    ``lost_luggage``), or ``GENERAL`` for a tweet with no concrete complaint (not negative, or
    "Can't Tell")."""
    if sentiment.strip().lower() != "negative":
        return GENERAL
    key = "".join(c if c.isalnum() else "_" for c in (negativereason or "").strip().lower())
    key = "_".join(p for p in key.split("_") if p)
    key = _TOPIC_ALIASES.get(key, key)
    return key if key in topics else GENERAL
