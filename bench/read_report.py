"""The read benchmark's tables: one per group of figures, each followed by the goals of issue 10
that it measures (ratios against the peers of the same run) and whether they are met."""

from __future__ import annotations

from harness import GiB, MB, MiB, fmt, goal_line, load_note, ratio, spread

NAME = 46


def _error_line(row: dict) -> str:
    return f"{row['name']:{NAME}} {row.get('error') or 'no figure'}"


def render_region_query(results: dict, goals: list[dict]) -> list[str]:
    settings = results["settings"]
    lines = []
    for key, query in results["region_query"].items():
        rows, reads = query["rows"], query["samtools_reads"]
        baseline = reads.get("bytes")
        bam = query["bam"]
        lines += [
            "",
            (f"Region query, cold: samtools view -c {bam} {' '.join(query['regions'])}; API and store "
             f"{settings['rtt_ms']:g} ms away (round trip); median of {settings['runs']} runs{load_note(results, 'region_query')}"),
            (f"{bam} {reads.get('bam_size', 0):,} bytes, .bai {reads.get('bai_size', 0):,} bytes; samtools reads "
             + (f"{baseline:,} bytes of them (strace, local copy)" if baseline else f"? ({reads.get('error')})")),
            (f"{'':{NAME}} {'seconds':>7} {'(min-max)':>11} {'x rclone':>8} {'reads':>6} {'GETs':>5} {'conns':>5} "
             f"{'API':>4} {'bytes fetched':>14} {'x samtools':>10}"),
        ]
        rclone = [rows[k]["seconds"] for k in ("rclone_off", "rclone_full") if rows[k].get("seconds") is not None]
        best = min(rclone) if rclone else None
        counts = {row.get("reads") for row in rows.values() if row.get("reads") is not None}
        for row in rows.values():
            if row.get("seconds") is None:
                lines.append(_error_line(row))
                continue
            lines.append(
                f"{row['name']:{NAME}} {row['seconds']:7.3f} {spread(row, 'seconds', '.2f'):>11} "
                f"{fmt(ratio(row['seconds'], best), '8.2f'):>8} {fmt(row.get('reads'), '6.0f'):>6} "
                f"{row['store_gets']:5.0f} {row['store_connections']:5.0f} {row['api_requests'] + row['store_other_requests']:4.0f} "
                f"{row['store_bytes']:14,.0f} {fmt(ratio(row['store_bytes'], baseline), '10.2f'):>10}"
            )
        lines.append(f"{'':{NAME}} (API: the platform's API requests; for rclone, its listing and HEAD requests to nginx)")
        if len(counts) > 1:
            lines.append(f"  warning: the rows counted different numbers of reads: {sorted(counts)}")
        cold = rows["omicsfs_cold"]
        speed = ratio(cold.get("seconds"), best)
        lines.append(goal_line(goals, f"region query {bam}", "omicsfs cold faster than rclone mount's best mode (aim: 0.5x its time)",
                           speed, f"{fmt(speed, '.2f')}x" + ("" if speed is None else f" (aim 0.5x {'met' if speed <= 0.5 else 'not met'})"),
                           None if speed is None else speed < 1))
        fetched = ratio(cold.get("store_bytes"), baseline)
        lines.append(goal_line(goals, f"region query {bam}", "omicsfs cold fetches at most 2x the bytes samtools reads",
                           fetched, f"{fmt(fetched, '.2f')}x", None if fetched is None else fetched <= 2))
    return lines


def _mb_s(size: int, seconds: float | None) -> float | None:
    return size / seconds / MB if seconds else None


def render_sequential(results: dict, goals: list[dict]) -> list[str]:
    settings, rows = results["settings"], results["sequential"]
    size = settings["file_size"]
    per_gib = size / GiB

    def mb_s(key: str) -> float | None:
        return _mb_s(size, rows[key].get("seconds"))

    rclone = [m for m in (mb_s("rclone_off"), mb_s("rclone_full")) if m is not None]
    best = max(rclone) if rclone else None
    lines = [
        "",
        (f"Sequential read, cold: {settings['file']} ({size / GiB:g} GiB), {settings['read_command']}; store nginx on "
         f"loopback, no delay; median of {settings['runs']} runs{load_note(results, 'sequential')}"),
        (f"{'':{NAME}} {'MB/s':>6} {'(min-max)':>11} {'x rclone':>8} {'x nullfs':>8} {'GETs':>5} {'conns':>5} "
         f"{'fetched/size':>12} {'CPU s':>6} {'CPU s/GiB':>9} {'peak RSS':>9}"),
    ]
    for key in ("curl", "nullfs", "rclone_off", "rclone_full", "omicsfs"):
        row = rows[key]
        if row.get("seconds") is None:
            lines.append(_error_line(row))
            continue
        speed = mb_s(key)
        fetched = row["store_bytes"] / size if key != "nullfs" else None
        rss = row.get("daemon_peak_rss")
        lines.append(
            f"{row['name']:{NAME}} {speed:6.0f} {spread(row, 'seconds', '.0f', lambda s: size / s / MB):>11} "
            f"{fmt(ratio(speed, best), '8.2f'):>8} {fmt(ratio(speed, mb_s('nullfs')), '8.2f'):>8} "
            f"{row['store_gets']:5.0f} {row['store_connections']:5.0f} {fmt(fetched, '11.3f') + ('x' if fetched is not None else ''):>12} "
            f"{fmt(row.get('daemon_cpu_s'), '6.1f'):>6} {fmt(ratio(row.get('daemon_cpu_s'), per_gib), '9.2f'):>9} "
            f"{fmt(rss / MiB if rss else None, '5.0f') + (' MiB' if rss else ''):>9}"
        )
    lines.append(f"{'':{NAME}} (CPU s: the FUSE daemon's during the read; peak RSS: its VmHWM)")
    cold = rows["omicsfs"]
    speed = ratio(mb_s("omicsfs"), best)
    lines.append(goal_line(goals, "sequential", "omicsfs cold at least 1.5x rclone mount's best mode", speed,
                       f"{fmt(speed, '.2f')}x", None if speed is None else speed >= 1.5))
    bound = settings["memory_cache"] + 100 * MiB
    peaks = [rows[k].get("daemon_peak_rss_max") for k in ("omicsfs", "omicsfs_again", "omicsfs_remount")]
    peak = max((p for p in peaks if p is not None), default=None)
    lines.append(goal_line(goals, "sequential", f"daemon peak RSS at most the memory cache + 100 MiB ({bound / MiB:.0f} MiB)",
                       peak, f"{fmt(peak / MiB if peak else None, '.0f')} MiB (highest of every run)",
                       None if peak is None else peak <= bound))
    cpu = ratio(cold.get("daemon_cpu_s"), per_gib)
    lines.append(goal_line(goals, "sequential", "daemon CPU seconds per GiB read cold", cpu, f"{fmt(cpu, '.2f')} s", None))

    lines += [
        "",
        (f"Re-read of the same file, page cache dropped before each read (store on loopback); median of "
         f"{settings['runs']} runs{load_note(results, 'sequential')}"),
        (f"{'':{NAME}} {'MB/s':>6} {'(min-max)':>11} {'x rclone full':>13} {'GETs':>5} {'fetched again':>14} "
         f"{'CPU s':>6} {'peak RSS':>9}"),
    ]
    warm = mb_s("rclone_full_again")
    for key in ("rclone_off_again", "rclone_full_again", "omicsfs_again", "omicsfs_remount"):
        row = rows[key]
        if row.get("seconds") is None:
            lines.append(_error_line(row))
            continue
        rss = row.get("daemon_peak_rss")
        lines.append(
            f"{row['name']:{NAME}} {mb_s(key):6.0f} {spread(row, 'seconds', '.0f', lambda s: size / s / MB):>11} "
            f"{fmt(ratio(mb_s(key), warm), '13.2f'):>13} {row['store_gets']:5.0f} {row['store_bytes']:14,.0f} "
            f"{fmt(row.get('daemon_cpu_s'), '6.1f'):>6} {fmt(rss / MiB if rss else None, '5.0f') + (' MiB' if rss else ''):>9}"
        )
    for key, what in (("omicsfs_again", "again in the same mount"), ("omicsfs_remount", "after a remount")):
        row = rows[key]
        fetched = row.get("store_bytes_max")
        lines.append(goal_line(goals, "re-read", f"omicsfs {what} fetches 0 bytes", fetched,
                           f"{fmt(fetched, ',.0f')} bytes (most of any run)", None if fetched is None else fetched == 0))
        speed = ratio(mb_s(key), warm)
        lines.append(goal_line(goals, "re-read", f"omicsfs {what} at least 1.5x rclone full's warm read", speed,
                           f"{fmt(speed, '.2f')}x", None if speed is None else speed >= 1.5))
    return lines


def render_listing(results: dict, goals: list[dict]) -> list[str]:
    settings, rows = results["settings"], results["listing"]
    api = rows["api"].get("seconds")
    lines = [
        "",
        (f"Listing {settings['listing_directory']} ({settings['listing_files']:,} files, pages of "
         f"{settings['page_cap']}); API {settings['rtt_ms']:g} ms away; median of {settings['runs']} runs"
         f"{load_note(results, 'listing')}"),
        f"{'':{NAME}} {'seconds':>7} {'(min-max)':>13} {'x API':>6} {'API req':>7}",
    ]
    for row in rows.values():
        if row.get("seconds") is None:
            lines.append(_error_line(row))
            continue
        lines.append(f"{row['name']:{NAME}} {row['seconds']:7.3f} {spread(row, 'seconds', '.3f'):>13} "
                     f"{fmt(ratio(row['seconds'], api), '6.2f'):>6} {row['api_requests']:7.0f}")
    cold = ratio(rows["ls_l_cold"].get("seconds"), api)
    lines.append(goal_line(goals, "listing", "omicsfs ls -l cold at most 1.2x the API's own paging", cold,
                       f"{fmt(cold, '.2f')}x", None if cold is None else cold <= 1.2))
    return lines


def render_platforms(results: dict) -> list[str]:
    """The two per-platform tables: sequential cold/warm reads, and the region query."""
    platforms = results.get("platforms")
    if not platforms:
        return []
    runs = results["settings"]["runs"]

    def content(entry: dict, key: str = "requests") -> float | None:
        if not entry or entry.get("store_gets") is None:
            return None
        if key == "requests":
            return entry["store_gets"] + entry["emulator_store_requests"]
        return entry["store_bytes"] + entry["emulator_store_bytes"]

    lines = [
        "",
        (f"Per platform ({len(platforms)} platforms in one omicsfs mount, store on loopback, no delay): sequential read "
         f"of each platform's largest file, median of {runs} runs{load_note(results, 'platforms')}."),
        ("cold = fresh mount, empty cache dir; warm = unmount, mount again with the same cache dir (disk cache); "
         "caches dropped before each."),
        ("lookup = the path's lookups, before the read (untimed); API = platform API requests; content = object GETs "
         "(nginx; Isabl: its API's stream endpoint)."),
        (f"{'':13} {'':13}  {' cold read ':-^14}  {' warm read ':-^14}  {' lookup ':-^11}  "
         f"{' cold read requests ':-^26}  {' warm read ':-^11}"),
        (f"{'':13} {'size bytes':>13}  {'MB/s':>6} {'ms':>7}  {'MB/s':>6} {'ms':>7}  {'API':>3} {'content':>7}  "
         f"{'API':>3} {'content':>7} {'fetched/size':>14}  {'API':>3} {'content':>7}"),
    ]
    small = False
    for kind, row in platforms.items():
        cold, warm, largest = row.get("cold") or {}, row.get("warm") or {}, row.get("largest") or {}
        if cold.get("seconds") is None:
            lines.append(f"{kind:13} {'; '.join(row['errors']) or 'no figure'}")
            continue
        size = largest["size"]
        small = small or size < 100 * MB
        fetched = content(cold, "bytes")
        lines.append(
            f"{kind:13} {size:13,}  {_mb_s(size, cold['seconds']):6.0f} {cold['seconds'] * 1000:7.0f}  "
            f"{fmt(_mb_s(size, warm.get('seconds')), '6.0f'):>6} {fmt(warm['seconds'] * 1000 if warm.get('seconds') else None, '7.0f'):>7}  "
            f"{fmt(cold.get('lookup_api_requests'), '3.0f'):>3} {fmt(cold.get('lookup_content_requests'), '7.0f'):>7}  "
            f"{fmt(cold.get('api_requests'), '3.0f'):>3} {fmt(content(cold), '7.0f'):>7} "
            f"{fmt(fetched / size if fetched is not None else None, '13.3f') + ('x' if fetched is not None else ''):>14}  "
            f"{fmt(warm.get('api_requests'), '3.0f'):>3} {fmt(content(warm), '7.0f'):>7}"
        )
        if row["errors"]:
            lines.append(f"{'':13} note: {'; '.join(row['errors'])}")
    if small:
        lines.append(f"{'':13} (files of a few MB take milliseconds: their MB/s measure per-file latency -- "
                     "download URL, first GETs, dd's start -- more than throughput)")
    for kind, row in platforms.items():
        if row.get("largest"):
            lines.append(f"{'':13} {kind}: {row['largest']['path'].partition('/')[2]}")
    lines += [
        "",
        (f"Per platform (same mount): samtools view -c BAM chr2:500000-501000 on a coordinate-sorted BAM with its .bai, "
         f"median of {runs} runs,"),
        ("each through a fresh mount with an empty cache dir; requests counted from after the mount (path lookups "
         "included):"),
        (f"{'':13} {'BAM bytes':>11} {'BAI bytes':>9} {'reads':>6} {'API req':>8} {'content req':>11} "
         f"{'bytes fetched':>14} {'x BAM size':>11} {'seconds':>8}"),
    ]
    for kind, row in platforms.items():
        query, bam = row.get("region_query") or {}, row.get("bam") or {}
        if query.get("seconds") is None:
            errors = [e for e in row["errors"] if "BAM" in e or "region" in e or "walking" in e]
            lines.append(f"{kind:13} {'; '.join(errors) or 'no figure'}")
            continue
        fetched = content(query, "bytes")
        lines.append(
            f"{kind:13} {bam['size']:11,} {bam['bai_size']:9,} {fmt(query.get('reads'), '6.0f'):>6} "
            f"{query['api_requests']:8.0f} {content(query):11.0f} {fetched:14,.0f} "
            f"{fetched / bam['size']:10.3f}x {query['seconds']:8.2f}"
        )
    for kind, row in platforms.items():
        if row.get("bam"):
            lines.append(f"{'':13} {kind}: {row['bam']['path'].partition('/')[2]}")
    return lines


def render(results: dict) -> str:
    """Every table; `results["goals"]` is filled with the goals as they are judged."""
    machine, settings = results["machine"], results["settings"]
    goals: list[dict] = []
    lines = [
        f"omicsfs read benchmark (issue 10): median of {settings['runs']} runs; MB = 10^6 bytes",
        (f"machine: {machine['cpus']} CPUs, Linux {machine['kernel']}, load average "
         f"{machine['load_average_before'][0]:.1f} before / {machine['load_average_after'][0]:.1f} after; "
         f"drop_caches {'used' if machine['drop_caches_allowed'] else 'NOT allowed: cold figures are not cold'}"),
    ]
    if fill := machine.get("page_fill"):
        lines.append(f"memory: a new 1 GiB file written at {fill['new_pages_mb_s']:.0f} MB/s after drop_caches, "
                     f"{fill['same_pages_mb_s']:.0f} MB/s written over (new pages cost this much here; a cold read "
                     f"through a disk cache fills two sets, the cache file's and FUSE's)")
    lines += [
        (f"store: nginx on loopback (GETs, bytes and connections as it logged them); API and store "
         f"{settings['rtt_ms']:g} ms away through bench/delayproxy.py where a table says so; omicsfs mounted with "
         f"{' '.join(settings['mount_options'])}"),
    ]
    if "region_query" in results:
        lines += render_region_query(results, goals)
    if "sequential" in results:
        lines += render_sequential(results, goals)
    if "listing" in results:
        lines += render_listing(results, goals)
    lines += render_platforms(results)
    judged = [g for g in goals if g["met"] is not None]
    lines.append("")
    if judged:
        lines.append(f"goals of issue 10 met: {sum(g['met'] for g in judged)} of {len(judged)}")
    lines.append(f"whole bench: {results['elapsed_s']:.0f} s")
    results["goals"] = goals
    return "\n".join(lines)
