"""Reading the shared data sets for the priority-quality and replay benchmarks, with the
standard library only (serving code may not import ``training``; the data is never copied
into the repository). The folder is ``CARETRIAGE_DATA_DIR`` or ``../shared/data``.

The airline CSVs carry a known flaw: in about 4% of rows the tweet's text was cut at its first
``;`` (an HTML entity such as ``&amp;``) and the remainder pushed into the following columns,
so ``tweet_created`` holds text or coordinates, or is lost. Columns before ``text`` are intact.
The text is kept as it stands (the model was trained and tested on it), and the timestamp is
taken from ``tweet_created`` when it parses, else from a later column that starts with one,
else from the tweet id: Twitter ids encode their creation time to the millisecond, and they
agree with ``tweet_created`` within a second on all 13,926 rows where that column parses.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
AIRLINE_SPLITS = ("train", "val", "test")
_TIMESTAMP = re.compile(r"^\s*(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4})")
_TWITTER_EPOCH_MS = 1_288_834_974_657  # snowflake ids count milliseconds from here


def data_dir() -> Path:
    return Path(os.environ.get("CARETRIAGE_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")


def snowflake_time(tweet_id: int) -> datetime:
    """When a tweet with this (post-2010) id was created."""
    return datetime.fromtimestamp(((tweet_id >> 22) + _TWITTER_EPOCH_MS) / 1000, UTC)


@dataclass(frozen=True)
class AirlineTweet:
    tweet_id: str
    split: str
    text: str
    created_at: datetime  # aware, UTC
    sentiment: str
    sentiment_confidence: float
    negativereason: str
    retweet_count: int
    author: str
    airline: str
    time_source: str  # tweet_created | shifted_column | tweet_id


def _when(row: list[str], created_col: int, text_col: int, tweet_id: str) -> tuple[datetime, str]:
    m = _TIMESTAMP.match(row[created_col]) if created_col < len(row) else None
    source = "tweet_created"
    if m is None:
        source = "shifted_column"
        m = next((x for x in map(_TIMESTAMP.match, row[text_col + 1 :]) if x), None)
    if m is None:
        return snowflake_time(int(tweet_id)), "tweet_id"
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S %z").astimezone(UTC), source


def airline(
    splits: tuple[str, ...] = AIRLINE_SPLITS, root: Path | None = None
) -> list[AirlineTweet]:
    """The airline tweets of ``splits``, in file order."""
    folder = (root or data_dir()) / "airline"
    out: list[AirlineTweet] = []
    for split in splits:
        path = folder / f"{split}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: set CARETRIAGE_DATA_DIR")
        with path.open(newline="", encoding="utf-8") as f:
            rows = csv.reader(f)
            head = next(rows)
            col = {name: i for i, name in enumerate(head)}
            for row in rows:
                when, source = _when(row, col["tweet_created"], col["text"], row[col["tweet_id"]])
                out.append(
                    AirlineTweet(
                        tweet_id=row[col["tweet_id"]],
                        split=split,
                        text=row[col["text"]],
                        created_at=when,
                        sentiment=row[col["airline_sentiment"]],
                        sentiment_confidence=float(row[col["airline_sentiment_confidence"]] or 1),
                        negativereason=row[col["negativereason"]],
                        retweet_count=int(row[col["retweet_count"]] or 0),
                        author=row[col["name"]],
                        airline=row[col["airline"]],
                        time_source=source,
                    )
                )
    return out


@dataclass(frozen=True)
class ComplaintTweet:
    tweet_id: str
    text: str
    complaint: int
    domain: str
    fold: int
    kind: str | None  # request | none, for brand-addressed non-complaints


def complaints(fold: int | None = 0, root: Path | None = None) -> list[ComplaintTweet]:
    """The complaints corpus (one fold, or all with ``fold=None``), in file order, joined with
    the project's actionability annotation."""
    folder = (root or data_dir()) / "complaints"
    with (folder / "actionability_labels.csv").open(newline="", encoding="utf-8") as f:
        kinds = {r["tweet_id"]: r["kind"] for r in csv.DictReader(f)}
    with (folder / "complaints.csv").open(newline="", encoding="utf-8") as f:
        return [
            ComplaintTweet(
                tweet_id=r["tweet_id"],
                text=r["text"],
                complaint=int(r["complaint"]),
                domain=r["domain"],
                fold=int(r["fold"]),
                kind=kinds.get(r["tweet_id"]),
            )
            for r in csv.DictReader(f)
            if fold is None or int(r["fold"]) == fold
        ]


# A fixed clock for corpora without timestamps: the priority score does not depend on it.
UNDATED = datetime(2020, 1, 1, tzinfo=UTC)
ONE_SECOND = timedelta(seconds=1)
