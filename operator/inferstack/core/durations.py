"""Go-style durations as Kubernetes users write them: ``30s``, ``5m``, ``1h30m``, ``500ms``.

The API schema (``DURATION_PATTERN``) already rejects malformed strings, so a
``ValueError`` here means a caller passed something that never went through
the API server (a test, an annotation, a config value).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Final

# ``ms`` must be tried before ``m`` or "500ms" would parse as 500 minutes + "s".
_PART: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_SECONDS_PER_UNIT: Final[dict[str, float]] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_seconds(text: str) -> float:
    """Seconds in a duration; units may repeat and are summed, like Go's time.ParseDuration."""
    text = text.strip()
    pos = 0
    total = 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _SECONDS_PER_UNIT[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(text):
        raise ValueError(f"invalid duration {text!r}: expected e.g. 30s, 5m, 1h30m, 500ms")
    return total


def parse_duration(text: str) -> timedelta:
    """A duration as a ``timedelta``."""
    return timedelta(seconds=parse_seconds(text))


def format_duration(delta: timedelta) -> str:
    """The shortest Go-style spelling of a whole-millisecond duration, for messages."""
    ms = round(delta.total_seconds() * 1000)
    if ms == 0:
        return "0s"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    seconds, ms = divmod(ms, 1000)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{seconds}s" if seconds else ""]
    if ms:
        parts.append(f"{ms}ms")
    return "".join(parts)
