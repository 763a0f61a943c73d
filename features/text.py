"""Text normalization applied identically before training and before serving.

Handles and links are replaced by placeholders (as TweetEval does) so the model learns from
what the customer says rather than which brand or URL they mention; the bundle records the
normalizer version so serving can refuse a model trained with another one.
"""

from __future__ import annotations

import html
import re

NORMALIZER_VERSION = "tweet-v1"

_URL = re.compile(r"(?:https?://|www\.)\S*", re.IGNORECASE)
_HANDLE = re.compile(r"(?<![\w@])@\w{1,50}")
_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Unescape HTML entities, replace links by ``http`` and handles by ``@user``, fold spaces."""
    text = html.unescape(text)
    text = _URL.sub("http", text)
    text = _HANDLE.sub("@user", text)
    return _SPACE.sub(" ", text).strip()
