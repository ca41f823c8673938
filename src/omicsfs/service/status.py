"""`omicsfs status`: what a running mount's daemon is doing, from the figures it already keeps.

The daemon answers `snapshot(...)`, a plain dict (the `--json` output, its keys documented in
docs/CONFIGURATION.md and kept stable); the command formats it with `table(...)`. Nothing here
counts anything: each figure is read from the object that keeps it (`Http.stats` per platform,
`BlockCache.stats` and its store, `Uploads`), so that status and the log never disagree.

Memory: the daemon keeps no blocks in Python's memory (they live in sparse cache files, in the
kernel's page cache), so what is shown is the process's resident set against the configured
memory bound, not a cache's fill.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from omicsfs import __version__
from omicsfs.credentials import utc
from omicsfs.http import redact_url

if TYPE_CHECKING:
    from omicsfs.config import Config
    from omicsfs.fs import Filesystem
    from omicsfs.uploads import Upload


def resident_bytes() -> int:
    """This process's resident set size (the second field of /proc/self/statm, in pages)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def snapshot(filesystem: Filesystem, config: Config, mountpoint: Path) -> dict:
    """The daemon's live figures, as JSON-ready data (see docs/CONFIGURATION.md for every key)."""
    cache = filesystem.cache
    uploads = filesystem.uploads
    return {
        "version": __version__,
        "pid": os.getpid(),
        "mountpoint": str(mountpoint),
        "started": filesystem.started,
        "uptime": time.time() - filesystem.started,
        "config": {
            "source": config.source if config.source.startswith("<") else os.path.abspath(config.source),  # "<demo>": no file
            "cache_dir": str(config.cache_dir),
            "cache_size": config.cache_size,
            "memory_cache_size": config.memory_cache_size,
            "metadata_ttl": config.metadata_ttl,
            "write_back": config.write_back,
            "allow_other": config.allow_other,
        },
        "platforms": {
            name: {
                "kind": platform.kind,
                "url": redact_url(platform.settings.get("url", "")),
                "token_source": platform.token.describe_source() if platform.token else None,
                "token_expires": platform.token.expiry if platform.token else None,
                "requests": platform.http.stats.requests,
                "retries": platform.http.stats.retries,
                "rate_limited": platform.http.stats.rate_limited,
                "errors": platform.http.stats.errors,
                "bytes_received": platform.http.stats.bytes_received,
                "last_error": platform.http.stats.last_error,
            }
            for name, platform in filesystem.platforms.items()
        },
        "cache": {
            "hits": cache.stats.hits,
            "misses": cache.stats.misses,
            "requests": cache.stats.requests,
            "bytes_fetched": cache.stats.bytes_fetched,
            "bytes_served": cache.stats.bytes_served,
            "torn_blocks": cache.stats.torn_blocks,
            "disk_used": cache.store.used,
            "disk_capacity": cache.store.capacity,
            "memory_resident": resident_bytes(),
            "memory_bound": config.memory_cache_size,
        },
        "uploads": {
            "pending": [_upload(upload) for upload in uploads.pending()] if uploads is not None else [],
            "remembered": uploads.remembered_count() if uploads is not None else 0,
        },
    }


def _upload(upload: Upload) -> dict:
    record = upload.record
    size = record.size
    # Bytes the platform confirmed, in parts it holds; a part beyond a file that shrank counts
    # only up to the end.
    confirmed = sum(max(0, min(part["end"], size) - part["start"]) for part in record.parts.values())
    return {
        "path": record.path,
        "platform": record.platform,
        "state": record.state,
        "size": size,
        "bytes_confirmed": confirmed,
        "progress": confirmed / size if size else 0.0,
        "parts_confirmed": len(record.parts),
        "parts_in_flight": len(upload.in_flight),
        "sending": bool(upload.in_flight) or upload.lock.locked(),
        "writers": upload.writers,
        "failures": record.failures,
        "error": record.error,
    }


# -- for people --------------------------------------------------------------------------------


def human_size(count: float) -> str:
    """Bytes in binary units, as the configuration's sizes are given (256M is 256 MiB)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def duration(seconds: float) -> str:
    seconds = int(seconds)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {seconds:02d}s"


def _token(platform: dict) -> str:
    """Where the token comes from, and when it expires if it says."""
    source, expires = platform["token_source"] or "", platform["token_expires"]
    if expires is None:
        return source
    left = expires - time.time()
    return f"{source}, " + (f"expired at {utc(expires)}" if left <= 0 else f"expires {utc(expires)} (in {duration(left)})")


#: An upload's state (`staging.Record.state`), in words.
UPLOAD_STATES = {"open": "being written", "pending": "written, not yet confirmed", "confirmed": "confirmed, still open"}


def table(status: dict) -> str:
    """The status as people read it: the mount, each platform, the cache, the uploads."""
    config, cache, uploads = status["config"], status["cache"], status["uploads"]
    lines = [
        f"omicsfs {status['version']} at {status['mountpoint']}: up {duration(status['uptime'])} "
        f"(since {utc(status['started'])}), pid {status['pid']}",
        f"configuration {config['source']}: metadata_ttl {config['metadata_ttl']:g} s, write_back {config['write_back']}"
        + (", allow_other" if config["allow_other"] else ""),
        "",
    ]
    rows = [("platform", "requests", "retries", "429s", "errors", "received", "token")]
    for name, platform in status["platforms"].items():
        rows.append((name, str(platform["requests"]), str(platform["retries"]), str(platform["rate_limited"]),
                     str(platform["errors"]), human_size(platform["bytes_received"]), _token(platform)))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:-1], widths[1:-1])] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    for name, platform in status["platforms"].items():
        if platform["last_error"]:
            lines.append(f"  {name}: last error: {platform['last_error']}")
    served = cache["hits"] + cache["misses"]
    lines += [
        "",
        f"cache     memory {human_size(cache['memory_resident'])} resident (bound {human_size(cache['memory_bound'])}); "
        f"disk {human_size(cache['disk_used'])} of {human_size(cache['disk_capacity'])} in {config['cache_dir']}",
        f"          reads {cache['hits']} hits, {cache['misses']} misses"
        + (f" ({100 * cache['hits'] / served:.1f}% hits)" if served else "")
        + f"; {human_size(cache['bytes_served'])} served"
        + f"; {human_size(cache['bytes_fetched'])} fetched in {cache['requests']} requests"
        + (f"; {cache['torn_blocks']} torn blocks fetched again" if cache["torn_blocks"] else ""),
        "",
    ]
    pending = uploads["pending"]
    sending = sum(1 for upload in pending if upload["sending"])
    lines.append(f"uploads   {len(pending)} pending ({sending} sending now), {uploads['remembered']} remembered")
    for upload in pending:
        state = UPLOAD_STATES.get(upload["state"], upload["state"]) + (", sending" if upload["sending"] else "")
        progress = f"{human_size(upload['bytes_confirmed'])} of {human_size(upload['size'])} ({100 * upload['progress']:.0f}%)"
        lines.append(f"  {upload['path']}: {progress}, {state}")
        if upload["error"]:
            lines.append(f"    failed {upload['failures']} time(s); last: {upload['error']}")
    return "\n".join(lines) + "\n"
