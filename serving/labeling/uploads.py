"""Item uploads: CSV (a header row, a ``text`` column) or JSONL (an object per line), a bad
row reported by its physical line and the good rows kept. Pure functions."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from serving.errors import json_problem
from serving.labeling.formats import iso_utc
from serving.schemas import storable_problem

MAX_TEXT = 5000  # serving.schemas.MAX_TEXT
MAX_ROWS = 100_000
MAX_ERRORS = 1000  # an upload of garbage gets the first errors and a count, not 100k messages
MAX_EXTERNAL_ID = 200  # label_items.external_id
MAX_CHANNEL = 32  # label_items.channel

Row = Mapping[str, Any]


# --------------------------------------------------------------------------- uploads


@dataclass(frozen=True, slots=True)
class UploadRow:
    """One item to add, with the 1-based physical line it starts on."""

    text: str
    external_id: str | None
    channel: str | None
    author: dict[str, Any] | None
    created_at: str | None
    line: int


@dataclass(frozen=True, slots=True)
class RowError:
    """A problem at a 1-based physical line (0: the file as a whole).

    ``warning`` marks notes that dropped nothing (unknown columns); otherwise the row was skipped.
    """

    line: int
    message: str
    warning: bool = False


KNOWN_FIELDS = ("text", "id", "external_id", "channel", "author", "handle", "created_at")
_CSV_TYPES = {"text/csv", "application/csv", "text/comma-separated-values"}
_JSONL_TYPES = {
    "application/jsonl",
    "application/x-jsonlines",
    "application/jsonlines",
    "application/x-ndjson",
    "application/ndjson",
    "application/json-lines",
}


def _opt_str(obj: Mapping[str, Any], key: str, limit: int | None = None) -> str | None:
    value = obj.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool) and key != "channel":
        value = str(value)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string")
    value = (value or "").strip() or None
    if value is not None and limit is not None and len(value) > limit:
        raise ValueError(f"{key!r} is longer than {limit} characters")
    return value


def _check_storable(value: Any, key: str) -> None:
    """Refuse what no store keeps (NUL, lone surrogates from JSON's unpaired escapes) in a
    string, or in any key or string nested in it; the same test as the API's ``Stored``."""
    stack = [value]
    while stack:  # not recursive: an author object may nest as deep as json.loads allows
        v = stack.pop()
        if isinstance(v, str) and (problem := storable_problem(v)):
            raise ValueError(f"{key!r} {problem}")
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def _author(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    value, handle = obj.get("author"), _opt_str(obj, "handle")
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"'author' is not valid JSON: {e.msg}") from None
        except (ValueError, RecursionError) as e:  # too deep, an integer too long
            raise ValueError(f"'author' is not readable: {json_problem(e)}") from None
    if isinstance(value, str):
        value = {"handle": value.strip()} if value.strip() else None
    if value is not None and not isinstance(value, dict):
        raise ValueError("'author' must be an object or a handle")
    if handle:
        value = {"handle": handle, **(value or {})}
    _check_storable(value, "author")
    return value


def _upload_row(obj: Mapping[str, Any], line: int) -> UploadRow:
    """Validate one record (CSV cells or a JSON object); ValueError says what is wrong."""
    text = obj.get("text")
    if text is not None and not isinstance(text, str):
        raise ValueError("'text' must be a string")
    text = (text or "").strip()
    if not text:
        raise ValueError("missing or empty 'text'")
    if len(text) > MAX_TEXT:
        raise ValueError(f"'text' has {len(text)} characters; the limit is {MAX_TEXT}")
    _check_storable(text, "text")
    external_id = _opt_str(obj, "id", MAX_EXTERNAL_ID) or _opt_str(
        obj, "external_id", MAX_EXTERNAL_ID
    )
    channel = _opt_str(obj, "channel", MAX_CHANNEL)
    _check_storable(external_id, "id")
    _check_storable(channel, "channel")
    created_at = obj.get("created_at")
    if created_at is not None and not isinstance(created_at, str):
        raise ValueError("'created_at' must be an ISO-8601 string")
    try:
        created = iso_utc(created_at) if created_at and created_at.strip() else None
    except ValueError:
        raise ValueError(f"'created_at' is not an ISO-8601 time: {created_at!r}") from None
    return UploadRow(text, external_id, channel and channel.lower(), _author(obj), created, line)


def _parse_csv(text: str, max_rows: int) -> tuple[list[UploadRow], list[RowError]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows: list[UploadRow] = []
    errors: list[RowError] = []
    seen = 0
    while True:
        start = reader.line_num + 1  # the physical line the next record starts on
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            errors.append(RowError(start, f"malformed CSV: {e}"))
            if reader.line_num < start:
                break
            continue
        if not any(cell.strip() for cell in record):
            continue
        if header is None:
            header = [h.strip().lower() for h in record]
            if "text" not in header:
                hint = "; use commas between columns" if any(c in record[0] for c in ";\t") else ""
                return [], [RowError(start, f"the header row needs a 'text' column{hint}")]
            unknown = [h for h in header if h and h not in KNOWN_FIELDS]
            if unknown:
                errors.append(RowError(start, f"ignored columns: {', '.join(unknown)}", True))
            continue
        seen += 1
        if seen > max_rows:
            errors.append(
                RowError(start, f"more than {max_rows} rows: this and later rows were not read")
            )
            break
        if any(cell.strip() for cell in record[len(header) :]):
            errors.append(RowError(start, f"{len(record)} fields but {len(header)} columns"))
            continue
        obj: dict[str, str] = {}
        for name, cell in zip(header, record, strict=False):
            obj.setdefault(name, cell)
        try:
            rows.append(_upload_row(obj, start))
        except ValueError as e:
            errors.append(RowError(start, str(e)))
    return rows, errors


def _parse_jsonl(text: str, max_rows: int) -> tuple[list[UploadRow], list[RowError]]:
    rows: list[UploadRow] = []
    errors: list[RowError] = []
    unknown: set[str] = set()
    seen = 0
    # split("\n"), not splitlines(): JSON strings may hold U+2028, which splitlines breaks on.
    for line, raw in enumerate(text.split("\n"), 1):
        if not raw.strip():
            continue
        seen += 1
        if seen > max_rows:
            errors.append(
                RowError(line, f"more than {max_rows} rows: this and later lines were not read")
            )
            break
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            errors.append(RowError(line, f"invalid JSON: {e.msg} (column {e.colno})"))
            continue
        except (ValueError, RecursionError) as e:  # too deep, an integer too long
            errors.append(RowError(line, f"invalid JSON: {json_problem(e)}"))
            continue
        if not isinstance(obj, dict):
            errors.append(RowError(line, f"expected a JSON object, got {type(obj).__name__}"))
            continue
        new = set(obj) - set(KNOWN_FIELDS) - unknown
        if new:
            unknown |= new
            errors.append(RowError(line, f"ignored fields: {', '.join(sorted(new))}", True))
        try:
            rows.append(_upload_row(obj, line))
        except ValueError as e:
            errors.append(RowError(line, str(e)))
    return rows, errors


def _detect(text: str, filename: str | None, content_type: str | None) -> str:
    name = (filename or "").lower()
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".jsonl", ".ndjson", ".json-lines", ".jsonlines")):
        return "jsonl"
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime in _CSV_TYPES:
        return "csv"
    if mime in _JSONL_TYPES:
        return "jsonl"
    first = text.lstrip()[:1]
    return {"{": "jsonl", "[": "json-array"}.get(first, "csv")


def parse_upload(
    data: bytes, filename: str | None, content_type: str | None, *, max_rows: int = MAX_ROWS
) -> tuple[list[UploadRow], list[RowError]]:
    """Parse an item upload (CSV with a header naming ``text``, or JSONL objects with "text").

    Good rows are kept and bad ones reported by line; nothing raises. The format comes from the
    file name, then the content type, then the first character ('{' means JSONL). At most
    ``max_rows`` rows are read; errors beyond ``MAX_ERRORS`` are summarized in one.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        return [], [RowError(line, f"the file is not UTF-8 text (byte {e.start}); save as UTF-8")]
    kind = _detect(text, filename, content_type)
    if kind == "json-array":
        line = text[: len(text) - len(text.lstrip())].count("\n") + 1
        return [], [RowError(line, "a JSON array is not supported: upload one object per line")]
    rows, errors = (_parse_csv if kind == "csv" else _parse_jsonl)(text, max_rows)
    if not rows and not errors:
        errors.append(RowError(0, "the file has no rows"))
    if len(errors) > MAX_ERRORS:
        rest = len(errors) - MAX_ERRORS
        errors = [*errors[:MAX_ERRORS], RowError(errors[MAX_ERRORS].line, f"{rest} more errors")]
    return rows, errors
