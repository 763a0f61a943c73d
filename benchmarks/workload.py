"""The posts every variant is timed on: real airline tweets when the shared data is present,
else seeded synthetic tweets (flagged in the report, since their length mix is only imitated)."""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

from features.text import DEFAULT_NORMALIZER, normalize_text

_VOCABULARY = (
    "flight delayed again my bag lost at the gate thanks for the help customer service "
    "cancelled rebook seat upgrade crew great awful waiting hours on hold please dm me "
    "refund boarding pass app crashed luggage missing connection missed weather today"
)


@dataclass(frozen=True)
class Workload:
    texts: list[str]
    source: str  # "airline/test.csv" or "synthetic"
    path: str | None
    note: str | None = None


def airline_texts(data_dir: Path) -> list[str] | None:
    """The ``text`` column of the airline test split, or None when the file is absent."""
    path = data_dir / "airline" / "test.csv"
    if not path.is_file():
        return None
    with path.open(encoding="utf-8", newline="") as f:
        return [row["text"] for row in csv.DictReader(f) if row.get("text", "").strip()]


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    """Tweet-like posts of 4-40 words with handles and links, deterministic for a seed."""
    rng = random.Random(seed)
    vocabulary = _VOCABULARY.split()
    out = []
    for i in range(n):
        words = rng.choices(vocabulary, k=rng.randint(4, 40))
        if rng.random() < 0.8:
            words.insert(0, "@airline")
        if rng.random() < 0.2:
            words.append(f"http://t.co/{i:06x}")
        out.append(" ".join(words))
    return out


def load_workload(
    data_dir: Path,
    limit: int | None = None,
    seed: int = 0,
    normalizer: str = DEFAULT_NORMALIZER,
) -> Workload:
    """Texts normalized as the bundle's training was (``normalizer``), so every variant gets
    the same tokens; arrival order is the file's order, cut to ``limit``."""
    raw = airline_texts(data_dir)
    if raw:
        texts, source, path, note = (
            raw,
            "airline/test.csv",
            str(data_dir / "airline/test.csv"),
            None,
        )
    else:
        texts = synthetic_texts(limit or 1449, seed)
        source, path = "synthetic", None
        note = f"{data_dir}/airline/test.csv not found: synthetic tweets stand in for real ones"
    if limit:
        texts = texts[:limit]
    return Workload([normalize_text(t, normalizer) for t in texts], source, path, note)
