"""The triage core: a post's model probabilities in, its scored, prioritized and routed result
out. No web imports, no I/O: the API (``POST /v1/score``), the assignment endpoint and the
replay benchmarks all call this one function, so they can never disagree.

Entry point::

    results = triage(
        posts,                 # Sequence[serving.schemas.Post]
        probs,                 # {task: ndarray (posts x labels)}: the model's probabilities
        schema,                # features.schema.LabelSchema of the served bundle
        policy,                # serving.priority.Policy (priority + routing)
        roster,                # serving.routing.Roster (compile once per roster snapshot)
        actionable_threshold=0.5,
        abstain_below={"topic": 0.5, ...},   # per-task abstention, as in Settings
        now=None,              # the clock for breach risk; None: no breach-risk points
        contacts=None,         # per post, extra (channel, at) contacts from the history store
        dictionary_version=None,  # stamped on each result's priority
    )  # -> list[ScoreResult], one per post, in order

``Triage`` bundles the keyword arguments for callers that score many batches alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from features.schema import TASK_NAMES, LabelSchema
from serving import priority, routing
from serving.schemas import Actionable, Agent, Channel, Post, Prediction, Route, ScoreResult

# A contact from another channel: (channel, when). The post's own ``customer.recent_contacts``
# are merged with these.
ContactAt = tuple[Channel, datetime]


def predictions(labels: list[str], probs: np.ndarray, abstain_below: float) -> list[Prediction]:
    """Per row of ``probs`` (posts x labels): the argmax label, flagged uncertain (shown, not to
    be applied) under the task's threshold. One pass over the batch: per-post NumPy calls cost
    more than the arithmetic at 32 posts a request."""
    best = probs.argmax(axis=1)
    confidence = probs[np.arange(len(probs)), best].tolist()
    scores = probs.tolist()
    return [
        Prediction(
            label=labels[b],
            confidence=round(c, 4),
            scores={lab: round(p, 4) for lab, p in zip(labels, row, strict=True)},
            uncertain=c < abstain_below,
        )
        for b, c, row in zip(best.tolist(), confidence, scores, strict=True)
    ]


def triage(
    posts: Sequence[Post],
    probs: Mapping[str, np.ndarray],
    schema: LabelSchema,
    policy: priority.Policy,
    roster: routing.Roster,
    *,
    actionable_threshold: float = 0.5,
    abstain_below: Mapping[str, float] | None = None,
    now: datetime | None = None,
    contacts: Sequence[Sequence[ContactAt]] | None = None,
    dictionary_version: int | None = None,
) -> list[ScoreResult]:
    """Assemble one result per post: predictions, priority (with breach risk when ``now`` is
    given), and the agents the roster ranks for it. Pure: same inputs, same results."""
    if contacts is not None and len(contacts) != len(posts):
        raise ValueError(f"contacts has {len(contacts)} entries for {len(posts)} posts")
    abstain = abstain_below or {}
    actionability = schema.task("actionability")
    positive = [actionability.index(lab) for lab in actionability.positive_labels]
    negative_labels = schema.task("sentiment").positive_labels
    per_task = {
        t: predictions(schema.task(t).labels, probs[t], abstain.get(t, 0.0))
        for t in schema.names
        if t in probs
    }
    further = [t for t in per_task if t not in TASK_NAMES]
    p_actionable_all = np.minimum(1.0, probs["actionability"][:, positive].sum(axis=1)).tolist()
    results = []
    for i, post in enumerate(posts):
        preds = {t: per_task[t][i] for t in TASK_NAMES}
        p_actionable = p_actionable_all[i]
        signals = priority.signals_from(
            post,
            preds["topic"],
            preds["sentiment"],
            p_actionable,
            negative_labels,
            extra_contacts=contacts[i] if contacts is not None else (),
        )
        prio = priority.prioritize(signals, policy.priority, now=now)
        if dictionary_version is not None:
            prio.dictionary_version = dictionary_version
        matches = roster.rank(
            topic=preds["topic"].label,
            topic_confidence=signals.topic_confidence,
            p_negative=signals.p_negative,
            priority=prio,
        )
        results.append(
            ScoreResult(
                id=post.id,
                topic=preds["topic"],
                sentiment=preds["sentiment"],
                actionability=preds["actionability"],
                actionable=Actionable(
                    label=p_actionable >= actionable_threshold,
                    probability=round(p_actionable, 4),
                ),
                priority=prio,
                route=Route(agents=matches),
                tasks={t: per_task[t][i] for t in further},
            )
        )
    return results


@dataclass(frozen=True)
class Triage:
    """The fixed parts of a triage run (model schema, policy, thresholds), for callers that
    score many batches alike: ``Triage(schema, policy).run(posts, probs, roster)``."""

    schema: LabelSchema
    policy: priority.Policy
    actionable_threshold: float = 0.5
    abstain_below: Mapping[str, float] = field(default_factory=dict)
    dictionary_version: int | None = None

    def run(
        self,
        posts: Sequence[Post],
        probs: Mapping[str, np.ndarray],
        roster: routing.Roster,
        *,
        now: datetime | None = None,
        contacts: Sequence[Sequence[ContactAt]] | None = None,
    ) -> list[ScoreResult]:
        return triage(
            posts,
            probs,
            self.schema,
            self.policy,
            roster,
            actionable_threshold=self.actionable_threshold,
            abstain_below=self.abstain_below,
            now=now,
            contacts=contacts,
            dictionary_version=self.dictionary_version,
        )


def compiled_roster(
    holder: object, agents: Sequence[Agent], policy: routing.RoutingPolicy
) -> routing.Roster:
    """The roster snapshot compiled for routing, cached on ``holder`` (the app state, or any
    object) while the caller hands out the same snapshot (compiling costs a pass over every
    agent; ranking a post then costs array operations only)."""
    cached: routing.Roster | None = getattr(holder, "compiled_roster", None)
    if cached is None or cached.source is not agents or cached.policy is not policy:
        cached = routing.Roster(agents, policy)
        setattr(holder, "compiled_roster", cached)  # noqa: B010
    return cached
