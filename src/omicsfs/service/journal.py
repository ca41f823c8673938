"""Log lines for the journal, when a systemd service's stderr is the journal.

journald stamps every line itself and reads a leading `<N>` as the line's syslog priority
(`SyslogLevelPrefix=`, on by default), so that `journalctl -p warning` finds omicsfs's warnings.
systemd says where stderr goes in `$JOURNAL_STREAM` (device:inode of the stream), so a daemon
whose stderr was redirected elsewhere keeps the plain format.
"""

from __future__ import annotations

import logging
import os


def stderr_is_journal() -> bool:
    stream = os.environ.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        stderr = os.fstat(2)
    except OSError:
        return False
    return stream == f"{stderr.st_dev}:{stderr.st_ino}"


def priority(level: int) -> int:
    """The syslog priority of a logging level (sd-daemon(3)'s SD_ERR=3 … SD_DEBUG=7)."""
    if level >= logging.CRITICAL:
        return 2
    if level >= logging.ERROR:
        return 3
    if level >= logging.WARNING:
        return 4
    return 6 if level >= logging.INFO else 7


class JournalFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return f"<{priority(record.levelno)}>{super().format(record)}"
