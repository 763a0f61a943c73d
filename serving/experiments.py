"""Routing experiments: an A/B between two routing policies, and the statistics that say whether
B beat A. Pure (no I/O, no clock); ``serving.experiment_store`` keeps the configuration and
reads the outcomes, ``serving.routers.experiments`` serves both.

**Arms.** A post is in arm A or B by one of two splits:

* ``share``: a seeded hash of the post id, uniform in [0, 1), below ``share_b`` is B. The same
  post is in the same arm in every process and after a restart; the seed (default: the name)
  makes a new experiment reshuffle the posts.
* ``time``: alternating periods of ``period_minutes`` from ``start`` (or the Unix epoch),
  the first A. For when posts of one hour share a queue and must not be split (one team, one
  policy at a time); beware the time of day: use periods that divide a day evenly in two,
  or ones much shorter than a day.

Outside ``[start, stop)``, or with ``enabled`` false, posts get no arm and the server's routing.

**Statistics**, each an interval for B − A at a chosen confidence (0.95 by default):

* means (CSAT, mean first response): Welch's t interval; the t quantile at the
  Welch–Satterthwaite degrees of freedom is computed here from the regularized incomplete beta
  function (no scipy in serving; the tests check it against scipy);
* medians (first response): Bonett & Price (2002), a distribution-free standard error of each
  median from two order statistics (McKean–Schrader with a binomial-exact z), combined as a
  normal interval; no resampling, so a report costs a sort;
* proportions (resolution, SLA breach): Newcombe's hybrid score interval (his method 10) from
  each arm's Wilson interval, which keeps its coverage near 0 or 1 and with few cases, where
  the plain normal (Wald) interval does not.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from statistics import NormalDist
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serving.dispatch import Choice, Objective, RouterConfig
from serving.routing import RoutingPolicy
from serving.schemas import Agent, AgentMatch, AgentStatus, Stored

Arm = Literal["A", "B"]
Split = Literal["share", "time"]
Strategy = Literal["caretriage", "skills-only", "least-loaded"]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EARLIEST, _LATEST = datetime(2000, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------- configuration


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ArmPolicy(_Strict):
    """How one arm routes. ``caretriage`` is the server's router (``serving.dispatch``) with
    this arm's objective and routing section; the two baselines are what helpdesks do."""

    label: Stored = Field(default="", max_length=200, description="Words for the report.")
    strategy: Strategy = Field(
        default="caretriage",
        description="caretriage (learned expected outcome × spare capacity, fairness, top "
        "band), skills-only (highest declared skill, then least loaded) or least-loaded.",
    )
    objective: Objective | None = Field(
        default=None,
        description="caretriage only: csat, speed or mix; default CARETRIAGE_ROUTING_OBJECTIVE.",
    )
    routing: RoutingPolicy | None = Field(
        default=None,
        description="caretriage only: a whole routing section (as in the dictionary) for this "
        "arm; default the dictionary's in force.",
    )

    def describe(self) -> str:
        if self.label:
            return self.label
        if self.strategy != "caretriage":
            return self.strategy
        extra = [f"objective {self.objective}"] if self.objective else []
        extra += ["own routing section"] if self.routing is not None else []
        return "caretriage" + (f" ({', '.join(extra)})" if extra else "")


class ExperimentConfig(_Strict):
    """An A/B between two routing policies. Changing it under the same ``name`` continues the
    experiment (its report counts every assignment made under the name); a new name starts a
    new one."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    enabled: bool = True
    a: ArmPolicy = Field(description="Arm A, usually the current way of routing (control).")
    b: ArmPolicy = Field(description="Arm B, the challenger.")
    split: Split = "share"
    share_b: float = Field(
        default=0.5, gt=0, lt=1, description="share split: the share of posts routed by B."
    )
    period_minutes: float | None = Field(
        default=None, ge=1, le=60 * 24 * 28, description="time split: each period's length."
    )
    seed: Stored = Field(default="", max_length=100, description="share split: hash seed.")
    start: datetime | None = Field(default=None, description="Naive times are UTC.")
    stop: datetime | None = Field(default=None, description="Exclusive; naive times are UTC.")

    @field_validator("start", "stop")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return None
        v = v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)
        if not _EARLIEST <= v < _LATEST:
            raise ValueError("must be between 2000 and 2200")
        return v

    def problems(self) -> list[tuple[str, str]]:
        """What the field constraints cannot see, as (field, message)."""
        out: list[tuple[str, str]] = []
        if self.split == "time" and self.period_minutes is None:
            out.append(("period_minutes", "a time split needs period_minutes"))
        if self.start is not None and self.stop is not None and self.stop <= self.start:
            out.append(("stop", "must be after start"))
        if self.a == self.b:
            out.append(("b", "routes exactly as arm a: the experiment would measure nothing"))
        for key, arm in (("a", self.a), ("b", self.b)):
            if arm.routing is not None:
                # Nested models accept Infinity (JSON parsers do); no rule means it.
                bad = _non_finite(arm.routing.model_dump(), f"{key}.routing")
                out.extend((path, "must be a finite number") for path in bad)
            if arm.strategy != "caretriage":
                for name in ("objective", "routing"):
                    if getattr(arm, name) is not None:
                        out.append(
                            (f"{key}.{name}", f"only a caretriage arm has one ({arm.strategy})")
                        )
        return out

    def active(self, at: datetime) -> bool:
        return (
            self.enabled
            and (self.start is None or at >= self.start)
            and (self.stop is None or at < self.stop)
        )

    def arm_of(self, post_id: str, at: datetime) -> Arm | None:
        """The arm routing ``post_id`` at ``at``, or None outside the experiment."""
        if not self.active(at):
            return None
        if self.split == "share":
            return "B" if unit_hash(self.seed or self.name, post_id) < self.share_b else "A"
        assert self.period_minutes is not None
        minutes = (at - (self.start or EPOCH)).total_seconds() / 60
        return "A" if math.floor(minutes / self.period_minutes) % 2 == 0 else "B"

    def arm(self, arm: Arm) -> ArmPolicy:
        return self.a if arm == "A" else self.b


def _non_finite(data: object, path: str) -> list[str]:
    if isinstance(data, float) and not math.isfinite(data):
        return [path]
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in _non_finite(v, f"{path}.{k}")]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in _non_finite(v, f"{path}.{i}")]
    return []


def unit_hash(seed: str, key: str) -> float:
    """A uniform number in [0, 1) from ``seed`` and ``key``, the same on every machine
    (Python's ``hash`` is salted per process)."""
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def baseline_choice(strategy: Strategy, topic: str, agents: Sequence[Agent]) -> Choice:
    """What a helpdesk's own routing would pick: ``skills-only`` the highest declared skill on
    the topic (then the least loaded), ``least-loaded`` the fewest open cases. Offline and full
    agents are never candidates; away ones come after everyone online; ties go by id."""
    free = [a for a in agents if a.status != AgentStatus.offline and a.caseload < a.capacity]
    if not free:
        return Choice((), why_none="no available agent with spare capacity")

    def key(a: Agent) -> tuple[object, ...]:
        away = a.status == AgentStatus.away
        if strategy == "skills-only":
            return (away, -a.skills.get(topic, 0.0), a.caseload, a.id)
        return (away, a.caseload, a.id)

    out = []
    for a in sorted(free, key=key):
        reasons = [f"{strategy} baseline", f"caseload {a.caseload}/{a.capacity}"]
        if strategy == "skills-only":
            reasons.insert(1, f"declared skill {topic} {a.skills.get(topic, 0.0):.2f}")
        if a.status == AgentStatus.away:
            reasons.append("away")
        out.append(AgentMatch(id=a.id, score=0.0, reasons=reasons))
    return Choice(tuple(out))


# --------------------------------------------------------------------------- distributions


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        m2 = 2 * m
        for aa in (
            m * (b - m) * x / ((a + m2 - 1.0) * (a + m2)),
            -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if not (a > 0 and b > 0):
        raise ValueError("a and b must be positive")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` (> 0, not necessarily whole) degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_ppf(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (bisection on ``t_cdf``, to 1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be within (0, 1), got {p!r}")
    if df > 1e7:
        return NormalDist().inv_cdf(p)
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def binom_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return betainc(n - k, k + 1, 0.5)


def _z(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be within (0, 1), got {level!r}")
    return NormalDist().inv_cdf(0.5 + level / 2.0)


# --------------------------------------------------------------------------- intervals


@dataclass(frozen=True)
class Interval:
    """B − A with its confidence interval, and each arm's estimate and sample size."""

    a: float
    b: float
    n_a: int
    n_b: int
    low: float
    high: float
    level: float
    method: str

    @property
    def difference(self) -> float:
        return self.b - self.a

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.low > 0.0 or self.high < 0.0


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Interval | None:
    """Welch's t interval for mean(B) − mean(A); None with fewer than 2 values in an arm or
    no variation in either (the interval would be a point)."""
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return None
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    sa, sb = statistics.variance(a, ma) / na, statistics.variance(b, mb) / nb
    se2 = sa + sb
    if se2 <= 0.0:
        return None
    df = se2 * se2 / (sa * sa / (na - 1) + sb * sb / (nb - 1))
    half = t_ppf(0.5 + level / 2.0, df) * math.sqrt(se2)
    d = mb - ma
    return Interval(ma, mb, na, nb, d - half, d + half, level, f"Welch t (df {df:.1f})")


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k / n``."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    z = _z(level)
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def proportions(k_a: int, n_a: int, k_b: int, n_b: int, level: float = 0.95) -> Interval | None:
    """Newcombe's hybrid score interval for p(B) − p(A); None with an empty arm."""
    if n_a < 1 or n_b < 1:
        return None
    pa, pb = k_a / n_a, k_b / n_b
    la, ua = wilson(k_a, n_a, level)
    lb, ub = wilson(k_b, n_b, level)
    d = pb - pa
    low = d - math.sqrt((pb - lb) ** 2 + (ua - pa) ** 2)
    high = d + math.sqrt((ub - pb) ** 2 + (pa - la) ** 2)
    return Interval(pa, pb, n_a, n_b, low, high, level, "Newcombe hybrid score")


def median_se(values: Sequence[float]) -> float:
    """The distribution-free standard error of a sample median (Bonett & Price 2002): the
    spread of the order statistics ``c`` in from each end, c = round(n/2 − √n), over twice
    the normal quantile matching their exact binomial coverage."""
    y = sorted(values)
    n = len(y)
    if n < 2:
        raise ValueError("a median's standard error needs at least 2 values")
    c = max(1, round(n / 2 - math.sqrt(n)))
    z = NormalDist().inv_cdf(1.0 - binom_cdf_half(c - 1, n))
    return (y[n - c] - y[c - 1]) / (2.0 * z)


def medians(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Interval | None:
    """Bonett & Price's interval for median(B) − median(A); None with fewer than 2 values in
    an arm or no spread in either."""
    if len(a) < 2 or len(b) < 2:
        return None
    se = math.hypot(median_se(a), median_se(b))
    if se <= 0.0:
        return None
    ma, mb = statistics.median(a), statistics.median(b)
    half = _z(level) * se
    d = mb - ma
    return Interval(ma, mb, len(a), len(b), d - half, d + half, level, "Bonett-Price medians")


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Kpi:
    """A KPI of the report: which way is better, and how its numbers read."""

    key: str
    label: str
    better: Literal["higher", "lower"]
    kind: Literal["mean", "median", "proportion"]
    unit: str = ""  # "min", or "pp" for a proportion shown in percentage points
    need: int = 2  # values per arm below which nothing is said


KPIS: tuple[Kpi, ...] = (
    Kpi("csat", "CSAT", "higher", "mean"),
    Kpi("first_response_median", "median first response", "lower", "median", "min"),
    Kpi("first_response_mean", "mean first response", "lower", "mean", "min"),
    Kpi("resolution_rate", "resolution rate", "higher", "proportion", "pp", need=1),
    Kpi("sla_breach_rate", "SLA breach rate", "lower", "proportion", "pp", need=1),
)


def interval_of(
    kpi: Kpi, a: Sequence[float], b: Sequence[float], level: float = 0.95
) -> Interval | None:
    """The KPI's interval from each arm's values (for a proportion: 0/1 or bools)."""
    if kpi.kind == "proportion":
        return proportions(int(sum(a)), len(a), int(sum(b)), len(b), level)
    if kpi.kind == "median":
        return medians(a, b, level)
    return welch(a, b, level)


def _num(kpi: Kpi, x: float, sign: bool = False) -> str:
    scale = 100.0 if kpi.unit == "pp" else 1.0
    text = f"{x * scale:+.2f}" if sign else f"{x * scale:.2f}"
    return text.replace("-", "\u2212")


def verdict(kpi: Kpi, got: Interval | None, n_a: int, n_b: int) -> str:
    """One sentence: "B is better on CSAT by 0.21 [0.05, 0.37]", "no significant difference
    on ..." or "not enough data on ..."."""
    if got is None:
        return (
            f"not enough data on {kpi.label} (A {n_a}, B {n_b}; at least {kpi.need} each "
            "with some spread needed)"
        )
    unit = f" {kpi.unit}" if kpi.unit else ""
    if not got.significant:
        ci = f"[{_num(kpi, got.low)}, {_num(kpi, got.high)}]"
        diff = _num(kpi, got.difference, True)
        return f"no significant difference on {kpi.label} (B \u2212 A {diff}{unit} {ci})"
    up = got.difference > 0
    word = "better" if up == (kpi.better == "higher") else "worse"
    # "by" the size of the difference, with the interval of that size (B − A, or A − B when
    # B is lower), so "better by 3.20 min [1.30, 5.10]" reads the way a manager says it.
    low, high = (got.low, got.high) if up else (-got.high, -got.low)
    return (
        f"B is {word} on {kpi.label} by {_num(kpi, abs(got.difference))}{unit} "
        f"[{_num(kpi, low)}, {_num(kpi, high)}]"
    )


def overall(sentences: Mapping[str, tuple[Interval | None, str]]) -> str:
    """The report's headline: every significant KPI's sentence, else "no significant
    difference" (or "not enough data yet" when no KPI could be estimated)."""
    found = [s for got, s in sentences.values() if got is not None and got.significant]
    if found:
        return "; ".join(found)
    if all(got is None for got, _ in sentences.values()):
        return "not enough data yet"
    return "no significant difference"


@dataclass(frozen=True)
class ArmRouting:
    """How one post of an experiment is routed: what the assignment store needs and records."""

    experiment: str
    arm: Arm
    strategy: Strategy
    config: RouterConfig
    policy: RoutingPolicy | None  # None: the dictionary's routing section in force
    description: str

    @property
    def reason(self) -> str:
        return f"experiment {self.experiment}: arm {self.arm} ({self.description})"


def routing_for(
    config: ExperimentConfig, post_id: str, at: datetime, base: RouterConfig
) -> ArmRouting | None:
    """The arm routing ``post_id`` at ``at`` with its policy, or None outside the experiment;
    ``base``: the server's router settings, which an arm's objective overrides."""
    arm = config.arm_of(post_id, at)
    if arm is None:
        return None
    p = config.arm(arm)
    cfg = base if p.objective is None else replace(base, objective=p.objective)
    return ArmRouting(config.name, arm, p.strategy, cfg, p.routing, p.describe())
