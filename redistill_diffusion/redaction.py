"""Keeping Hub tokens out of everything the library writes: cards, logs, summaries, tracker hparams.

Redaction goes by meaning, not by one spelling: an option is secret when its name says "token" (any
spelling: ``--hub_token``, ``--hub-token``, ``--my_token``) or is an abbreviation of such a word
(``--hub_tok``); parsers refuse abbreviations anyway (``allow_abbrev=False``), but a refused command
line is still reported and must not carry the value. Values are secret too wherever they appear: the
values of ``HF_TOKEN`` / ``HUGGING_FACE_HUB_TOKEN`` and every value given to a secret option in this
process (`remember_secrets`) are replaced by `MASK` in text the library writes (`redact_text`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

MASK = "***"
SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
_SECRET_WORD = "token"
_known_secrets: set[str] = set()


def is_secret_name(name: str) -> bool:
    """Whether an option or config key names a secret: it contains "token", or one of its words is an
    abbreviation of it (``hub_tok``, ``--hub-toke``)."""
    normalized = name.lstrip("-").lower().replace("-", "_")
    if _SECRET_WORD in normalized:
        return True
    return any(len(word) >= 3 and _SECRET_WORD.startswith(word) for word in normalized.split("_"))


def remember_secrets(values: Iterable[Any]) -> None:
    """Values to mask wherever they appear later in this process (a --hub_token given on the command line)."""
    _known_secrets.update(v for v in values if isinstance(v, str) and len(v) >= 4)


def _secret_values() -> list[str]:
    values = set(_known_secrets)
    values.update(v for v in (os.environ.get(name) for name in SECRET_ENV_VARS) if v and len(v) >= 4)
    return sorted(values, key=len, reverse=True)  # a longer secret first, should one contain another


def redact_text(text: str) -> str:
    """``text`` with every known secret value (env tokens, token flags' values) replaced by `MASK`."""
    for value in _secret_values():
        if value in text:
            text = text.replace(value, MASK)
    return text


def secret_option_values(argv: Sequence[str]) -> list[str]:
    """The values given to secret options in ``argv`` (``--hub_token X`` and ``--hub_token=X``)."""
    values, take_next = [], False
    for word in argv:
        if take_next:
            values.append(word)
            take_next = False
            continue
        if word.startswith("-"):
            flag, eq, value = word.partition("=")
            if is_secret_name(flag):
                if eq:
                    values.append(value)
                else:
                    take_next = True
    return values


def drop_secret_options(argv: Sequence[str]) -> list[str]:
    """``argv`` without its secret options and their values (for a command line written in a card)."""
    words, skip = [], False
    for word in argv:
        if skip:
            skip = False
            continue
        flag, eq, _ = word.partition("=")
        if word.startswith("-") and is_secret_name(flag):
            skip = not eq
            continue
        words.append(redact_text(word))
    return words


def drop_secret_keys(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` without keys that name a secret; string values redacted (tracker hparams, summaries)."""
    return {
        key: redact_text(value) if isinstance(value, str) else value
        for key, value in config.items()
        if not is_secret_name(str(key))
    }


class RedactingFilter(logging.Filter):
    """A handler filter that masks secret values in every record it lets through."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _secret_values():
            message = record.getMessage()
            redacted = redact_text(message)
            if redacted != message:
                record.msg, record.args = redacted, None
        return True


def redact_log_handlers(logger: logging.Logger | None = None) -> None:
    """Attach `RedactingFilter` to the handlers of ``logger`` (default: the root logger), once each."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


__all__ = [
    "MASK",
    "RedactingFilter",
    "SECRET_ENV_VARS",
    "drop_secret_keys",
    "drop_secret_options",
    "is_secret_name",
    "redact_log_handlers",
    "redact_text",
    "remember_secrets",
    "secret_option_values",
]
