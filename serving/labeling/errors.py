"""The one error the labeling store raises; routes map ``status`` to the API's taxonomy."""

from __future__ import annotations

from collections.abc import Sequence


class LabelingError(Exception):
    """A request the workspace cannot carry out; ``status`` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 409, fields: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message, self.status, self.fields = message, status, list(fields)
