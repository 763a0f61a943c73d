"""Replay real traffic through scoring and assignment with a simulated team
(``serving/evaluation/team.py``), and compare routers a helpdesk would use with caretriage's.

An event-driven queue: posts arrive at their real times; an agent takes a case when on shift
and under capacity; a case holds one of the agent's slots for its handling time. Each router
decides two things, which post goes next and to whom:

* ``round-robin`` (Chatwoot, Zammad): first come first served, agents in turn;
* ``least-loaded``: first come first served, the agent with the fewest open cases;
* ``skills-only`` (Zendesk/Salesforce skills routing): first come first served, the agent with
  the highest declared skill for the predicted topic;
* ``caretriage``: the most urgent post first (priority level, then arrival), to the agent
  ``POST /v1/assign`` would pick: ``serving.dispatch.choose_agent`` (skill × spare capacity ×
  expected CSAT × speed, skill floor, fairness, a top band for strongly negative posts from
  valuable or influential customers) over the estimates ``serving.performance`` learns from
  every closed case. ``learning=None`` ranks with ``Roster.rank`` over the roster's declared
  figures instead. When nobody is ranked while an agent is free (no declared skill), a lead
  assigns the least-loaded agent: counted as ``fallbacks``.

Deterministic: the team and every post's luck come from the seed; ties break by index.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from serving import dispatch, performance, routing
from serving.evaluation import team as team_mod
from serving.evaluation.team import Luck, SimAgent
from serving.evaluation.traffic import ReplayPost
from serving.schemas import Agent, AgentStatus
from serving.settings import Settings

LEVEL_RANK = {"P1": 0, "P2": 1, "P3": 2, "P4": 3}
ROUTERS = ("round-robin", "least-loaded", "skills-only", "caretriage")


# --------------------------------------------------------------------------- routers


@dataclass
class TeamState:
    """What routers may look at: the clock, and per agent on shift now, open cases, capacity,
    last assignment (minutes)."""

    agents: Sequence[SimAgent]
    on_shift: list[bool]
    caseload: list[int]
    capacity: list[int]
    last_assigned: list[float]
    now: float = 0.0

    def available(self) -> list[int]:
        return [
            a
            for a in range(len(self.agents))
            if self.on_shift[a] and self.caseload[a] < self.capacity[a]
        ]


class Router:
    """First come first served; subclasses choose the agent."""

    name = "fifo"

    def __init__(self, posts: Sequence[ReplayPost], state: TeamState) -> None:
        self.posts, self.state = posts, state
        self._queue: deque[int] = deque()
        self.fallbacks = 0

    def push(self, i: int) -> None:
        self._queue.append(i)

    def peek(self) -> int | None:
        return self._queue[0] if self._queue else None

    def pop(self) -> None:
        self._queue.popleft()

    def __len__(self) -> int:
        return len(self._queue)

    def choose(self, i: int, free: list[int]) -> int | None:
        raise NotImplementedError

    def assigned(self, i: int, agent: int) -> None:
        """Post ``i`` went to ``agent``."""

    def closed(self, i: int, agent: int, csat: int, first_response: float) -> None:
        """A case closed (feedback); the baselines learn nothing."""


class RoundRobin(Router):
    name = "round-robin"

    def __init__(self, posts: Sequence[ReplayPost], state: TeamState) -> None:
        super().__init__(posts, state)
        self._next = 0

    def choose(self, i: int, free: list[int]) -> int | None:
        n = len(self.state.agents)
        ok = set(free)
        for k in range(n):
            a = (self._next + k) % n
            if a in ok:
                self._next = (a + 1) % n
                return a
        return None


class LeastLoaded(Router):
    name = "least-loaded"

    def choose(self, i: int, free: list[int]) -> int | None:
        s = self.state
        return min(free, key=lambda a: (s.caseload[a], s.last_assigned[a], a), default=None)


class SkillsOnly(Router):
    name = "skills-only"

    def choose(self, i: int, free: list[int]) -> int | None:
        s, topic = self.state, self.posts[i].topic
        return min(
            free,
            key=lambda a: (-s.agents[a].declared_skills.get(topic, 0.0), s.caseload[a], a),
            default=None,
        )


def roster_agents(agents: Sequence[SimAgent]) -> list[Agent]:
    """The roster as the API would hold it: declared skills and measured CSAT, no hidden truth."""
    return [
        Agent(
            id=a.id,
            skills=dict(a.declared_skills),
            capacity=a.capacity,
            csat=dict(a.declared_csat),
        )
        for a in agents
    ]


@dataclass(frozen=True)
class Learning:
    """How the caretriage router learns from outcomes, as ``POST /v1/assign`` does with the
    server's default settings: estimates shrunk toward the declared figures with
    ``prior_strength`` pseudo-cases, fairness over the last ``fairness_window`` assignments."""

    config: dispatch.RouterConfig = field(default_factory=dispatch.RouterConfig)
    prior_strength: float = 5.0
    fairness_window: int = 200
    # The server re-reads feedback sums at most this often (performance_refresh_seconds).
    refresh_minutes: float = 0.5

    @classmethod
    def server_defaults(cls) -> Learning:
        """The figures a server with default settings uses, read from the Settings class (not
        from the environment: a benchmark's result must not depend on the shell)."""
        defaults = SimpleNamespace(
            **{
                name: f.default
                for name, f in Settings.model_fields.items()
                if name.startswith(("routing_", "performance_"))
            }
        )
        return cls(
            config=dispatch.RouterConfig.from_settings(defaults),  # type: ignore[arg-type]
            prior_strength=defaults.performance_prior_strength,
            fairness_window=defaults.routing_fairness_window,
            refresh_minutes=defaults.performance_refresh_seconds / 60,
        )


class Caretriage(Router):
    """Priority queue (level, then arrival; ``fifo``: arrival only) and caretriage's choice of
    agent over the live caseloads: with ``learning``, ``serving.dispatch.choose_agent`` over
    the estimates ``serving.performance`` makes of every closed case's CSAT and first
    response (what ``POST /v1/feedback`` would record: minutes from the post); without,
    ``Roster.rank`` over the roster's declared skills and CSAT."""

    name = "caretriage"

    def __init__(
        self,
        posts: Sequence[ReplayPost],
        state: TeamState,
        policy: routing.RoutingPolicy,
        learning: Learning | None = None,
        fifo: bool = False,
    ) -> None:
        super().__init__(posts, state)
        self.policy, self.learning, self.fifo = policy, learning, fifo
        self.base = roster_agents(state.agents)
        self._index = {a.id: k for k, a in enumerate(state.agents)}
        self._heap: list[tuple[int, float, int]] = []
        self._tallies: dict[tuple[str, str], performance.Tally] = {}
        self._estimates: performance.Estimates | None = None
        self._estimated_at = -math.inf
        self._fresh = True  # no feedback since the estimates were made
        self._recent: deque[str] = deque(maxlen=learning.fairness_window if learning else 1)
        self._recent_counts: dict[str, int] = {}
        self._priors = performance.Priors(
            csat=policy.csat_prior,
            response_minutes=policy.speed_prior_minutes,
            strength=learning.prior_strength if learning else 0.0,
        )

    def push(self, i: int) -> None:
        if self.fifo:
            super().push(i)
            return
        p = self.posts[i]
        heapq.heappush(self._heap, (LEVEL_RANK[p.level], p.arrival, i))

    def peek(self) -> int | None:
        if self.fifo:
            return super().peek()
        return self._heap[0][2] if self._heap else None

    def pop(self) -> None:
        if self.fifo:
            super().pop()
        else:
            heapq.heappop(self._heap)

    def __len__(self) -> int:
        return super().__len__() if self.fifo else len(self._heap)

    def _pick(self, i: int, live: list[Agent]) -> str | None:
        p = self.posts[i]
        if self.learning is None:
            ranked = routing.Roster(live, self.policy).rank(
                topic=p.topic,
                topic_confidence=p.topic_confidence,
                p_negative=p.p_negative,
                priority=p.priority,
                top_k=1,
            )
            return ranked[0].id if ranked else None
        stale = self.state.now - self._estimated_at >= self.learning.refresh_minutes
        if self._estimates is None or (stale and not self._fresh):
            self._estimates = performance.Estimates(self._tallies.values(), self.base, self._priors)
            self._estimated_at, self._fresh = self.state.now, True
        case = dispatch.Case(
            post_id=str(i),
            topic=p.topic,
            topic_confidence=p.topic_confidence,
            p_negative=p.p_negative,
            priority=p.priority,
            high_value=p.high_value,
            influential=p.influential,
        )
        choice = dispatch.choose_agent(
            case, live, self._estimates, self._recent_counts, self.policy, self.learning.config
        )
        return choice.agent_id

    def choose(self, i: int, free: list[int]) -> int | None:
        if not free:
            return None
        s = self.state
        # Only the free agents: the ranking never returns an offline or full one, and each
        # declares every topic, so the roster's topic universe is the same.
        live = [
            self.base[k].model_copy(
                update={"caseload": s.caseload[k], "status": AgentStatus.online}
            )
            for k in free
        ]
        picked = self._pick(i, live)
        if picked is not None:
            return self._index[picked]
        self.fallbacks += 1
        return min(free, key=lambda a: (s.caseload[a], s.last_assigned[a], a))

    def assigned(self, i: int, agent: int) -> None:
        """Keep the counts of the last ``fairness_window`` assignments per agent."""
        if self.learning is None:
            return
        agent_id = self.state.agents[agent].id
        if len(self._recent) == self._recent.maxlen:
            gone = self._recent[0]
            self._recent_counts[gone] -= 1
            if not self._recent_counts[gone]:
                del self._recent_counts[gone]
        self._recent.append(agent_id)
        self._recent_counts[agent_id] = self._recent_counts.get(agent_id, 0) + 1

    def closed(self, i: int, agent: int, csat: int, first_response: float) -> None:
        if self.learning is None:
            return
        key = (self.state.agents[agent].id, self.posts[i].topic)
        got = performance.tally_of(*key, csat=csat, first_response_minutes=first_response)
        self._tallies[key] = self._tallies[key] + got if key in self._tallies else got
        self._fresh = False


RouterFactory = Callable[[Sequence[ReplayPost], TeamState], Router]


def router_factories(
    policy: routing.RoutingPolicy, learning: Learning | None = None
) -> dict[str, RouterFactory]:
    """The four routers compared, by name; caretriage learns with ``learning`` (default:
    the server's defaults)."""
    learn = learning or Learning.server_defaults()
    return {
        "round-robin": RoundRobin,
        "least-loaded": LeastLoaded,
        "skills-only": SkillsOnly,
        "caretriage": lambda posts, state: Caretriage(posts, state, policy, learn),
    }


# --------------------------------------------------------------------------- simulation


@dataclass
class Outcome:
    """Per post: who took it, when, and how it went (NaN / -1 when never assigned)."""

    agent: np.ndarray
    assigned: np.ndarray
    first_response: np.ndarray  # minutes from arrival
    handling: np.ndarray
    released: np.ndarray  # when the case freed the agent's slot
    csat: np.ndarray
    backlog: list[tuple[float, int]] = field(default_factory=list)  # (time, queue) at arrivals
    shift_minutes: np.ndarray | None = None  # per agent, minutes on shift during the replay
    fallbacks: int = 0


def _hidden_skill(agent: SimAgent, topic: str) -> float:
    return agent.skill.get(topic, agent.skill[team_mod.GENERAL])


def simulate(
    posts: Sequence[ReplayPost],
    agents: Sequence[SimAgent],
    router: RouterFactory,
    luck: Luck,
    *,
    t0_local_hour: float,
) -> Outcome:
    """Run the queue over ``posts`` (sorted by arrival) until every post has been answered.
    ``t0_local_hour``: the team's local hour at minute 0 (shifts are local)."""
    n = len(posts)
    if any(posts[i].arrival > posts[i + 1].arrival for i in range(n - 1)):
        raise ValueError("posts must be sorted by arrival")
    if len(luck.handling) < n:
        raise ValueError(f"luck drawn for {len(luck.handling)} posts, replaying {n}")
    shifts = [a.shift for a in agents]
    state = TeamState(
        agents=agents,
        on_shift=[s.on(team_mod.local_hour(0.0, t0_local_hour)) for s in shifts],
        caseload=[0] * len(agents),
        capacity=[a.capacity for a in agents],
        last_assigned=[-math.inf] * len(agents),
    )
    r = router(posts, state)
    out = Outcome(
        agent=np.full(n, -1, dtype=np.int64),
        assigned=np.full(n, np.nan),
        first_response=np.full(n, np.nan),
        handling=np.full(n, np.nan),
        released=np.full(n, np.nan),
        csat=np.zeros(n, dtype=np.int64),
    )
    horizon = (posts[-1].arrival if n else 0.0) + 7 * 24 * 60  # drains within a week
    changes = deque(team_mod.shift_changes(t0_local_hour, horizon, shifts))
    on_since = [0.0 if on else math.nan for on in state.on_shift]
    shift_minutes = np.zeros(len(agents))
    closing: list[tuple[float, int, int]] = []  # (time, post, agent)

    def assign_free(now: float) -> None:
        state.now = now
        while len(r):
            free = state.available()
            if not free:
                return
            i = r.peek()
            assert i is not None
            a = r.choose(i, free)
            if a is None:
                return
            r.pop()
            agent = agents[a]
            skill = _hidden_skill(agent, posts[i].true_topic)
            reply = team_mod.reply_minutes(skill, luck.reply[i])
            frt = now - posts[i].arrival + reply
            hold = team_mod.handling_minutes(skill, posts[i].true_topic, luck.handling[i])
            state.caseload[a] += 1
            state.last_assigned[a] = now
            r.assigned(i, a)
            out.agent[i], out.assigned[i] = a, now
            out.first_response[i], out.handling[i] = frt, hold
            out.csat[i] = team_mod.csat_rating(
                skill, posts[i].negative, posts[i].strongly_negative, frt, luck.rating[i]
            )
            # The case holds the slot until handled, and at least until its first response.
            out.released[i] = now + max(hold, reply)
            heapq.heappush(closing, (out.released[i], i, a))

    def shift_change(now: float) -> None:
        # Rounded: a change computed for 16:00 must not read as 15:59:59.999.
        hour = round(team_mod.local_hour(now, t0_local_hour), 6) % 24
        for a, s in enumerate(shifts):
            on = s.on(hour)
            if on and not state.on_shift[a]:
                on_since[a] = now
            elif not on and state.on_shift[a]:
                shift_minutes[a] += now - on_since[a]
                on_since[a] = math.nan
            state.on_shift[a] = on

    def advance(until: float) -> None:
        """Process closings and shift changes up to ``until``, in time order."""
        while True:
            t_close = closing[0][0] if closing else math.inf
            t_shift = changes[0] if changes else math.inf
            t = min(t_close, t_shift)
            if t > until:
                return
            if t_close <= t_shift:
                _, i, a = heapq.heappop(closing)
                state.caseload[a] -= 1
                r.closed(i, a, int(out.csat[i]), float(out.first_response[i]))
            else:
                changes.popleft()
                shift_change(t)
            assign_free(t)

    for i, post in enumerate(posts):
        advance(post.arrival)
        r.push(i)
        assign_free(post.arrival)
        out.backlog.append((post.arrival, len(r)))
    # After the last arrival, run until the queue is empty (or no agent will ever come).
    end = posts[-1].arrival if n else 0.0
    while len(r) and (closing or changes):
        end = min(closing[0][0] if closing else math.inf, changes[0] if changes else math.inf)
        advance(end)
    for a in range(len(agents)):  # shift time up to the last assignment, for workload
        if state.on_shift[a]:
            shift_minutes[a] += end - on_since[a]
    out.shift_minutes = shift_minutes
    out.fallbacks = r.fallbacks
    return out


# --------------------------------------------------------------------------- metrics


def _share(mask: np.ndarray) -> float | None:
    return float(mask.mean()) if mask.size else None


def metrics(posts: Sequence[ReplayPost], out: Outcome) -> dict[str, Any]:
    """The KPIs of one run: SLA breach rates (overall, P1, per level), first-response
    percentiles, CSAT (mean, satisfied share, on strongly negative posts), workload spread."""
    arrival = np.array([p.arrival for p in posts])
    due = np.array([p.due for p in posts])
    level = np.array([p.level for p in posts])
    strong = np.array([p.strongly_negative for p in posts], dtype=bool)
    done = out.agent >= 0
    responded_at = arrival + np.where(done, out.first_response, np.inf)
    breach = responded_at > due + 1e-9
    frt = out.first_response[done]
    csat = out.csat[done].astype(np.float64)
    hours = np.asarray(out.shift_minutes if out.shift_minutes is not None else [], dtype=float) / 60
    handled = np.bincount(out.agent[done], minlength=len(hours))
    per_hour = np.divide(handled, hours, out=np.zeros_like(hours), where=hours > 0)
    active = per_hour[hours > 0]
    return {
        "posts": len(posts),
        "answered": int(done.sum()),
        "sla_breach_rate": _share(breach),
        "sla_breach_rate_p1": _share(breach[level == "P1"]),
        "sla_breach_by_level": {
            lv: {"posts": int((level == lv).sum()), "breach_rate": _share(breach[level == lv])}
            for lv in LEVEL_RANK
        },
        "first_response_p50_min": float(np.percentile(frt, 50)) if frt.size else None,
        "first_response_p90_min": float(np.percentile(frt, 90)) if frt.size else None,
        "first_response_p90_p1_min": (
            float(np.percentile(out.first_response[done & (level == "P1")], 90))
            if (done & (level == "P1")).any()
            else None
        ),
        "csat_mean": float(csat.mean()) if csat.size else None,
        "csat_satisfied_share": float((csat >= team_mod.SATISFIED).mean()) if csat.size else None,
        "csat_strongly_negative": (
            float(out.csat[done & strong].mean()) if (done & strong).any() else None
        ),
        "strongly_negative_posts": int(strong.sum()),
        "workload": {
            "cases_per_agent": handled.tolist(),
            "cases_per_shift_hour_mean": float(active.mean()) if active.size else None,
            # Coefficient of variation of cases per shift hour across agents: 0 is even.
            "spread_cv": (
                float(active.std() / active.mean()) if active.size and active.mean() else None
            ),
        },
        "fallbacks": out.fallbacks,
    }


def hourly_backlog(out: Outcome, minutes: float = 60.0) -> list[tuple[float, int]]:
    """The largest queue seen at an arrival in each ``minutes`` bucket (for the plot)."""
    buckets: dict[int, int] = {}
    for t, q in out.backlog:
        b = int(t // minutes)
        buckets[b] = max(buckets.get(b, 0), q)
    return [(b * minutes, q) for b, q in sorted(buckets.items())]


def compare(
    posts: Sequence[ReplayPost],
    agents: Sequence[SimAgent],
    routers: Mapping[str, RouterFactory],
    luck: Luck,
    *,
    t0_local_hour: float,
    clock: Callable[[], float] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every router over the same posts, team and luck: its metrics, and (with ``clock``, e.g.
    ``time.perf_counter``) its simulation's seconds and posts/s."""
    results: dict[str, dict[str, Any]] = {}
    for name, factory in routers.items():
        t0 = clock() if clock else 0.0
        out = simulate(posts, agents, factory, luck, t0_local_hour=t0_local_hour)
        seconds = (clock() - t0) if clock else None
        m = metrics(posts, out)
        m["backlog_hourly"] = hourly_backlog(out)
        if seconds is not None:
            m["simulation_s"] = seconds
            m["posts_per_s"] = len(posts) / seconds if seconds > 0 else None
        results[name] = m
    return results
