"""A routing experiment on the replay: the posts split between two routers by the same seeded
hash of the post id ``POST /v1/assign`` uses (``serving.experiments``), one simulated team
serving both, and each KPI's B − A with its confidence interval, as
``GET /v1/reports/experiment`` computes it.

Each arm keeps its own queue in its own order (the caretriage router's by priority, a
baseline's by arrival). When agents are free and both arms wait, the arm furthest below its
share of the assignments made so far goes next, so neither arm's queue discipline takes the
other's capacity. The arms share the agents, as in a live experiment: a slow arm's cases
keep agents busy for both, which narrows the differences a split measures compared with two
separate teams (the replay's table of whole runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from serving import experiments as ex
from serving.evaluation.replay import Outcome, Router, RouterFactory, TeamState, simulate
from serving.evaluation.team import Luck, SimAgent
from serving.evaluation.traffic import ReplayPost

ARMS = ("A", "B")


def arms_of(post_ids: Sequence[str], share_b: float = 0.5, seed: str = "replay") -> list[str]:
    """Each post's arm, by the share split of ``serving.experiments``."""
    return ["B" if ex.unit_hash(seed, pid) < share_b else "A" for pid in post_ids]


class SplitRouter(Router):
    """Arm A's router for A's posts, arm B's for B's, over one team."""

    name = "a/b"

    def __init__(
        self,
        posts: Sequence[ReplayPost],
        state: TeamState,
        arms: Sequence[str],
        a: RouterFactory,
        b: RouterFactory,
        share_b: float = 0.5,
    ) -> None:
        super().__init__(posts, state)
        if len(arms) != len(posts):
            raise ValueError(f"{len(arms)} arms for {len(posts)} posts")
        self.arms = arms
        self.routers = {"A": a(posts, state), "B": b(posts, state)}
        self.share = {"A": 1.0 - share_b, "B": share_b}
        self.served = {"A": 0, "B": 0}

    def _next(self) -> str | None:
        waiting = [k for k in ARMS if len(self.routers[k])]
        if not waiting:
            return None
        return min(waiting, key=lambda k: ((self.served[k] + 1) / self.share[k], k))

    def push(self, i: int) -> None:
        self.routers[self.arms[i]].push(i)

    def peek(self) -> int | None:
        arm = self._next()
        return None if arm is None else self.routers[arm].peek()

    def pop(self) -> None:
        arm = self._next()
        assert arm is not None
        self.routers[arm].pop()
        self.served[arm] += 1

    def __len__(self) -> int:
        return sum(len(r) for r in self.routers.values())

    def choose(self, i: int, free: list[int]) -> int | None:
        router = self.routers[self.arms[i]]
        before = router.fallbacks
        got = router.choose(i, free)
        self.fallbacks += router.fallbacks - before
        return got

    def assigned(self, i: int, agent: int) -> None:
        self.routers[self.arms[i]].assigned(i, agent)

    def closed(self, i: int, agent: int, csat: int, first_response: float) -> None:
        self.routers[self.arms[i]].closed(i, agent, csat, first_response)


# The replay's KPIs: CSAT, first response (median, mean), SLA breach (all, P1).
KPIS: tuple[ex.Kpi, ...] = (
    ex.Kpi("csat", "CSAT", "higher", "mean"),
    ex.Kpi("first_response_median", "median first response", "lower", "median", "min"),
    ex.Kpi("first_response_mean", "mean first response", "lower", "mean", "min"),
    ex.Kpi("sla_breach_rate", "SLA breach rate", "lower", "proportion", "pp", need=1),
    ex.Kpi("sla_breach_rate_p1", "P1 SLA breach rate", "lower", "proportion", "pp", need=1),
)


def _values(posts: Sequence[ReplayPost], out: Outcome, mask: np.ndarray) -> dict[str, list]:
    arrival = np.array([p.arrival for p in posts])
    due = np.array([p.due for p in posts])
    p1 = np.array([p.level == "P1" for p in posts], dtype=bool)
    done = (out.agent >= 0) & mask
    breach = (arrival + np.where(out.agent >= 0, out.first_response, np.inf)) > due + 1e-9
    frt = out.first_response[done].tolist()
    return {
        "csat": out.csat[done].astype(float).tolist(),
        "first_response_median": frt,
        "first_response_mean": frt,
        "sla_breach_rate": breach[mask].astype(float).tolist(),
        "sla_breach_rate_p1": breach[mask & p1].astype(float).tolist(),
    }


def report(
    posts: Sequence[ReplayPost], out: Outcome, arms: Sequence[str], level: float = 0.95
) -> dict[str, Any]:
    """Per arm: posts and KPI figures; per KPI: B − A, its interval and a sentence."""
    arm = np.array(arms)
    values = {k: _values(posts, out, arm == k) for k in ARMS}
    rows, said = [], {}
    for kpi in KPIS:
        va, vb = values["A"][kpi.key], values["B"][kpi.key]
        got = ex.interval_of(kpi, va, vb, level)
        sentence = ex.verdict(kpi, got, len(va), len(vb))
        said[kpi.key] = (got, sentence)
        rows.append(
            {
                "key": kpi.key,
                "label": kpi.label,
                "a": None if got is None else got.a,
                "b": None if got is None else got.b,
                "n_a": len(va),
                "n_b": len(vb),
                "difference": None if got is None else got.difference,
                "low": None if got is None else got.low,
                "high": None if got is None else got.high,
                "method": None if got is None else got.method,
                "significant": bool(got and got.significant),
                "verdict": sentence,
            }
        )
    return {
        "posts": {k: int((arm == k).sum()) for k in ARMS},
        "confidence": level,
        "kpis": rows,
        "verdict": ex.overall(said),
    }


def run(
    posts: Sequence[ReplayPost],
    post_ids: Sequence[str],
    agents: Sequence[SimAgent],
    luck: Luck,
    routers: dict[str, RouterFactory],
    *,
    t0_local_hour: float,
    share_b: float = 0.5,
    seed: str = "replay",
    level: float = 0.95,
) -> dict[str, Any]:
    """Replay ``posts`` (``post_ids`` in the same order) with ``routers`` {"A": ..., "B": ...}
    splitting them, and report each KPI's B − A."""
    arms = arms_of(post_ids, share_b, seed)
    out = simulate(
        posts,
        agents,
        lambda p, s: SplitRouter(p, s, arms, routers["A"], routers["B"], share_b),
        luck,
        t0_local_hour=t0_local_hour,
    )
    return {
        "split": {"by": "post id hash", "share_b": share_b, "seed": seed},
        **report(posts, out, arms, level),
        "fallbacks": out.fallbacks,
    }
