"""systemd's notify protocol (sd_notify(3)), so that a `Type=notify` unit knows when the mount is live.

The protocol is one datagram of newline-separated `KEY=value` lines sent to the unix socket named
by `$NOTIFY_SOCKET` (a path, or an abstract-namespace name when it starts with `@`). It is written
out here rather than taken from a package: it is a single `sendto`, the packages that wrap it
either bind libsystemd (systemd-python: C headers to build, a library to link) or add nothing
(sdnotify), and a daemon not run by systemd must work the same without any of them.

Without `$NOTIFY_SOCKET` (run by hand, or by another service manager) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(*fields: str) -> bool:
    """Send `fields` ("READY=1", "STATUS=…") in one datagram; False when there is no one to tell."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("NOTIFY_SOCKET=%s is not a unix socket; the service manager is not told", address)
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sender:
        try:
            sender.sendto("\n".join(fields).encode(), address)
        except OSError as exc:
            log.warning("cannot tell the service manager %s: %s", fields, exc.strerror)
            return False
    return True


def status(text: str, *more: str) -> bool:
    """A `STATUS=` line (`systemctl status` shows it), with any further fields."""
    # One line: a newline would start a new KEY=value field.
    return notify(*more, "STATUS=" + "; ".join(line for line in text.splitlines() if line.strip()))


def ready(text: str) -> bool:
    return status(text, "READY=1")


def stopping(text: str) -> bool:
    return status(text, "STOPPING=1")
