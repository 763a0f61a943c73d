"""Customer-context features: pure functions of what a helpdesk knows about the author.

Shared by serving (priority) and, later, by training (outcome models), so they live here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime, timedelta


def reach(followers: int | None, saturation: int = 1_000_000) -> float:
    """Follower reach on a log scale in [0, 1]: 0 for none, 1 at ``saturation`` or more."""
    if not followers or followers <= 0:
        return 0.0
    return min(1.0, math.log10(1 + followers) / math.log10(1 + saturation))


def value(lifetime_value: float | None, saturation: float = 10_000.0) -> float:
    """Customer lifetime value on a log scale in [0, 1]."""
    if not lifetime_value or lifetime_value <= 0:
        return 0.0
    return min(1.0, math.log1p(lifetime_value) / math.log1p(saturation))


def repeat_contacts(
    contacts: Iterable[tuple[str, datetime]],
    now: datetime,
    channel: str,
    window: timedelta = timedelta(hours=24),
) -> int:
    """How many contacts on *another* channel fell within ``window`` before ``now``."""
    return sum(1 for ch, at in contacts if ch != channel and timedelta(0) <= now - at <= window)
