"""Timestamps as platforms write them, to Unix time."""

import datetime as dt
import re

_FRACTION = re.compile(r"\.(\d+)")


def parse_timestamp(text: str | None) -> float:
    """Parse an ISO-8601 timestamp, lenient where platforms are odd; 0.0 when absent or unreadable.

    BaseSpace writes 7 fractional digits and often no zone (`2012-02-14T07:01:06.0000000`), which
    `fromisoformat` refuses before Python 3.11 and `strptime` refuses always; no zone means UTC.
    """
    if not text:
        return 0.0
    text = text.strip().replace(" ", "T", 1)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    text = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), text, count=1)
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return 0.0
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.timestamp()
