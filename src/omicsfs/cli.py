"""The `omicsfs` command: mount, unmount, complete, status, refresh, login, demo, emulator."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from omicsfs import __version__, credentials
from omicsfs.config import Config, PlatformConfig, load, parse_size, xdg_dir
from omicsfs.errors import OmicsfsError
from omicsfs.service import notify
from omicsfs.service.journal import JournalFormatter, stderr_is_journal

log = logging.getLogger("omicsfs")

#: Seconds `omicsfs status` waits for the daemon's answer (it has it at hand).
STATUS_TIMEOUT = 30.0

_URL_QUERY = re.compile(r"(https?://[^\s?'\"<>]+)\?[^\s'\"<>]*")


class Redact(logging.Filter):
    """Keeps tokens and presigned URLs' query strings out of every log line, whoever logs it.

    Hides `secrets` and every value a platform's token has had in this process (a token read
    again after a refusal is new: `credentials.secrets()`).
    """

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def _hide(self, text: str) -> str:
        text = _URL_QUERY.sub(r"\1?…", text)
        for secret in {*self.secrets, *credentials.secrets()}:
            text = text.replace(secret, "<token>")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = self._hide(record.getMessage())
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._hide(record.exc_text)
        record.msg, record.args = message, ()
        return True


def setup_logging(debug: bool, secrets: list[str], log_file: Path | None = None, warnings_to_stderr: bool = False) -> None:
    """Log to `log_file` (else stderr); with `warnings_to_stderr`, warnings and errors also reach
    the terminal of a foreground mount that logs to a file. Names a platform sent are written
    whatever they hold (an unencodable character is escaped, never an error)."""
    handlers: list[logging.Handler] = [logging.FileHandler(log_file, errors="backslashreplace") if log_file else logging.StreamHandler()]
    if log_file and warnings_to_stderr:
        handlers.append(logging.StreamHandler())
        handlers[-1].setLevel(logging.WARNING)
    journal = log_file is None and stderr_is_journal()  # a systemd service: journald stamps the lines
    for handler in handlers:
        handler.setFormatter(JournalFormatter() if journal else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(Redact(secrets))
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # httpx logs every request with its full URL (presigned signatures included) at INFO/DEBUG.
    for noisy in ("httpx", "httpcore", "hpack"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def default_log_file() -> Path:
    directory = xdg_dir("XDG_STATE_HOME", ".local/state") / "omicsfs"
    directory.mkdir(parents=True, exist_ok=True)
    return directory / "omicsfs.log"


def _apply_overrides(config: Config, args: argparse.Namespace) -> Config:
    if args.cache_dir:
        config.cache_dir = Path(args.cache_dir).expanduser()
    if args.cache_size:
        config.cache_size = parse_size(args.cache_size)
    if args.memory_cache_size:
        config.memory_cache_size = parse_size(args.memory_cache_size)
    if args.metadata_ttl is not None:
        config.metadata_ttl = args.metadata_ttl
    if args.write_back:
        config.write_back = args.write_back
    if args.allow_other:
        config.allow_other = True
    return config


# -- mount ---------------------------------------------------------------------------------------


def _serve_foreground(config: Config, mountpoint: Path, ready_fd: int | None, banner: str | None = None) -> int:
    from omicsfs.mount import serve

    def ready() -> None:
        if banner:
            print(banner, flush=True)
        if ready_fd is not None:
            os.write(ready_fd, b"ok\n")
            os.close(ready_fd)

    try:
        trio.run(serve, config, mountpoint, ready)
    except OmicsfsError as exc:
        message = f"omicsfs: {exc}"
        log.error("%s", exc)
        notify.status(f"failed: {exc}")
        if ready_fd is not None:
            os.write(ready_fd, message.encode() + b"\n")
        if (ready_fd is None or sys.stderr.isatty()) and not stderr_is_journal():  # the journal has the log line
            print(message, file=sys.stderr)
        return 1
    return 0


def _mount_background(args: argparse.Namespace, mountpoint: Path, log_file: Path) -> int:
    """Start the daemon and wait until it reports the mount live or failed."""
    from omicsfs.mount import is_mounted, unmount

    mounted_before = is_mounted(mountpoint)  # someone else's: a failed daemon must not unmount it
    read_end, write_end = os.pipe()
    command = [sys.executable, "-m", "omicsfs", "mount", str(mountpoint), "--foreground", "--ready-fd", str(write_end),
               "--log-file", str(log_file)]
    for option in ("config", "cache_dir", "cache_size", "memory_cache_size", "metadata_ttl", "write_back"):
        value = getattr(args, option)
        if value is not None:
            command += [f"--{option.replace('_', '-')}", str(value)]
    for flag in ("allow_other", "debug"):
        if getattr(args, flag):
            command.append(f"--{flag.replace('_', '-')}")
    with open(log_file, "ab") as log_output:
        daemon = subprocess.Popen(command, pass_fds=(write_end,), stdin=subprocess.DEVNULL, stdout=log_output,
                                  stderr=log_output, start_new_session=True)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as report:
        message = report.read().decode(errors="replace").strip()
    if message == "ok":
        print(f"omicsfs: mounted {mountpoint} (log: {log_file}; unmount with: omicsfs unmount {mountpoint})")
        return 0
    code = daemon.wait()
    print(message or f"omicsfs: the daemon exited with status {code} before mounting; see {log_file}", file=sys.stderr)
    if not mounted_before and is_mounted(mountpoint):  # never leave a dead mount point behind
        unmount(mountpoint, lazy=True)
    return 1


def cmd_mount(args: argparse.Namespace) -> int:
    mountpoint = Path(args.mountpoint).absolute()
    try:
        config = _apply_overrides(load(Path(args.config) if args.config else None), args)
    except (OmicsfsError, ValueError) as exc:
        print(f"omicsfs: {exc}", file=sys.stderr)
        return 2
    log_file = Path(args.log_file) if args.log_file else (None if args.foreground and args.ready_fd is None else default_log_file())
    setup_logging(args.debug, config.secrets(), log_file, warnings_to_stderr=args.foreground and args.ready_fd is None)
    if args.foreground:
        return _serve_foreground(config, mountpoint, args.ready_fd)
    return _mount_background(args, mountpoint, log_file)


def cmd_unmount(args: argparse.Namespace) -> int:
    from omicsfs.mount import daemon_pid, is_mounted, unmount

    mountpoint = Path(args.mountpoint).absolute()
    if not is_mounted(mountpoint):
        print(f"omicsfs: {mountpoint} is not mounted", file=sys.stderr)
        return 1
    pid = daemon_pid(mountpoint)
    try:
        unmount(mountpoint, lazy=args.lazy)
    except OmicsfsError as exc:
        print(f"omicsfs: {exc}", file=sys.stderr)
        return 1
    if pid is not None and not args.lazy:
        _wait_for_exit(pid)  # uploads under way land first (write_back = "async")
    return 0


def _wait_for_exit(pid: int) -> None:
    told = False
    started = time.monotonic()
    while Path(f"/proc/{pid}").exists() and _state(pid) not in ("Z", "X"):
        if not told and time.monotonic() - started > 1:
            print(f"omicsfs: waiting for the daemon (pid {pid}) to finish its uploads...", file=sys.stderr)
            told = True
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def cmd_action(args: argparse.Namespace) -> int:
    """`omicsfs complete PATH`: a platform's explicit act on an entry, done by the running daemon."""
    from omicsfs.service.control import find_mount, request

    path = Path(args.path).absolute()
    try:
        mountpoint = find_mount(path)
        answer = request(mountpoint, "perform", action=args.action, path=str(path.relative_to(mountpoint)))
    except OmicsfsError as exc:
        print(f"omicsfs: {exc}", file=sys.stderr)
        return 1
    print(answer["message"])
    return 0


#: Names `omicsfs refresh` prints per directory that gained or lost them; the rest are counted.
SHOWN_CHANGES = 20


def cmd_status(args: argparse.Namespace) -> int:
    """`omicsfs status MOUNTPOINT`: the running daemon's figures, once or every `--watch` seconds."""
    from omicsfs.service.control import find_mount, request
    from omicsfs.service.status import table

    watching = args.watch is not None
    if watching and not args.watch > 0:
        print(f"omicsfs: --watch takes a number of seconds above 0, not {args.watch:g}", file=sys.stderr)
        return 2
    redraw = watching and not args.json and sys.stdout.isatty()
    try:
        mountpoint = find_mount(Path(args.mountpoint).absolute())
        while True:
            answer = request(mountpoint, "status", timeout=STATUS_TIMEOUT)
            if args.json:  # once: indented; watching: one line per snapshot (JSON Lines)
                print(json.dumps(answer, indent=None if watching else 2, sort_keys=True))
            else:
                text = table(answer) + (f"\n(every {args.watch:g} s; Ctrl-C to stop)\n" if watching else "")
                # Home and clear first: drawn in place, as watch(1) does.
                sys.stdout.write(("\x1b[H\x1b[2J" if redraw else "") + text)
            if not watching:
                return 0
            sys.stdout.flush()
            time.sleep(args.watch)
    except OmicsfsError as exc:
        print(f"omicsfs: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def cmd_refresh(args: argparse.Namespace) -> int:
    """`omicsfs refresh PATH`: the daemon asks the platform again for PATH's listing (and below)."""
    from omicsfs.service.control import find_mount, request

    path = Path(args.path).absolute()
    try:
        mountpoint = find_mount(path)
        answer = request(mountpoint, "refresh", path=str(path.relative_to(mountpoint)), recursive=args.recursive)
    except OmicsfsError as exc:
        print(f"omicsfs: {exc}", file=sys.stderr)
        return 1
    for directory in sorted(answer["refreshed"], key=lambda item: item["path"]):
        added, removed = directory["added"], directory["removed"]
        changes = "" if added is None else f", {len(added)} new, {len(removed)} gone"
        entries = f"{directory['entries']} entr{'y' if directory['entries'] == 1 else 'ies'}"
        print(f"refreshed {mountpoint / directory['path']}: {entries}{changes}")
        for sign, names in (("+", added or []), ("-", removed or [])):
            for name in names[:SHOWN_CHANGES]:
                print(f"  {sign} {name}")
            if len(names) > SHOWN_CHANGES:
                print(f"  {sign} ... and {len(names) - SHOWN_CHANGES} more")
    for failure in answer["failed"]:
        print(f"omicsfs: {mountpoint / failure['path']}: not refreshed: {failure['error']}", file=sys.stderr)
    return 1 if answer["failed"] else 0


# -- login ---------------------------------------------------------------------------------------


def cmd_login(args: argparse.Namespace) -> int:
    from omicsfs.login import login

    return login(Path(args.config) if args.config else None, args.name)


# -- emulator and demo ---------------------------------------------------------------------------

#: What `omicsfs[emulator]` adds; `pip install omicsfs` alone has none of them.
EMULATOR_PACKAGES = ("starlette", "uvicorn", "pysam")


def emulator_installed(command: str) -> bool:
    """Whether the emulator's packages are there; if not, say how to get them (not a traceback)."""
    missing = [name for name in EMULATOR_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        print(f"omicsfs {command} runs the built-in emulator, whose packages are not installed here ({', '.join(missing)}).\n"
              "Install omicsfs with its emulator extra: pip install 'omicsfs[emulator]' "
              "(from a checkout: pip install '.[emulator]', or pipx install --force '.[emulator]')", file=sys.stderr)
    return not missing


def cmd_emulator(args: argparse.Namespace) -> int:
    if not emulator_installed("emulator"):
        return 1
    from omicsfs.emulator import DEFAULT_TOKEN
    from omicsfs.emulator.server import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(args.port, Path(args.data) if args.data else None, args.token or DEFAULT_TOKEN, parse_size(args.large_file_size), args.host,
          parse_size(args.deep_bam_size), args.wide_directory)
    return 0


DEMO_HINTS = """\
omicsfs demo: the emulator's sample accounts are mounted at {mnt}, one directory per platform

Try, in another terminal:
  ls {mnt}
  ls -la "{mnt}/basespace/Projects/Tumor-Normal WGS/AppResults/BWA Alignment S1/Files/Alignment"
  samtools view -c "{mnt}/basespace/Projects/Tumor-Normal WGS/AppResults/BWA Alignment S1/Files/Alignment/S1.bam" chr1:100000-200000
  tabix "{mnt}/basespace/Projects/Tumor-Normal WGS/AppResults/BWA Alignment S1/Files/Variants/S1.vcf.gz" chr2:1-50000 | head
  md5sum {mnt}/basespace/Projects/RNA\\ Pilot*/Samples/*/Files/*.fastq.gz
  cat "{mnt}/basespace/Projects/Tumor-Normal WGS/.json"
  getfattr -d -m user.omicsfs "{mnt}/basespace/Projects/Tumor-Normal WGS/AppResults/BWA Alignment S1/Files/Alignment/S1.bam"
  ls {mnt}/basespace/Runs/*/Files/Data/Intensities/BaseCalls/L001 | head
  ls -a {mnt}/sevenbridges/Projects/alice/wgs-cohort {mnt}/sevenbridges/Projects/alice/wgs-cohort/.tasks
  ls {mnt}/bugseq/jobs | head; cat "$(ls -d {mnt}/bugseq/jobs/* | head -1)/job.json" | head -20
  find {mnt}/isabl/projects -maxdepth 8 | head -30
  df -h {mnt}

Writes become uploads, where each platform takes them (docs/SEMANTICS.md, "Writing"):
  mkdir "{mnt}/basespace/Projects/Tumor-Normal WGS/AppResults/My Calls"
  cp /etc/os-release "{mnt}/basespace/Projects/Tumor-Normal WGS/AppResults/My Calls/Files/"
  {omicsfs} complete "{mnt}/basespace/Projects/Tumor-Normal WGS/AppResults/My Calls"
  cp /etc/os-release {mnt}/sevenbridges/Projects/alice/wgs-cohort/
  cp /etc/os-release {mnt}/bugseq/uploads/ && getfattr -n user.omicsfs.id {mnt}/bugseq/uploads/os-release
  {omicsfs} status {mnt}

Press Ctrl-C here to unmount and stop.
"""


def _command_name() -> str:
    """How to run this omicsfs from a shell: `omicsfs` where PATH finds this one, else its path."""
    here = Path(sys.executable).parent / "omicsfs"
    found = shutil.which("omicsfs")
    return "omicsfs" if found and Path(found).resolve() == here.resolve() else str(here)


def demo_config(url: str, token: str, cache_dir: Path) -> Config:
    """Every platform the emulator serves, each under its own prefix, as one mount."""
    from omicsfs.emulator import platform_modules

    platforms = []
    for module in platform_modules():
        kind = module.__name__.rsplit(".", 1)[-1]
        settings = {"url": f"{url}{module.PREFIX}", "token": token, **getattr(module, "DEMO_SETTINGS", {})}
        platforms.append(PlatformConfig(kind, kind, settings))
    return Config(platforms, cache_dir=cache_dir, cache_size=2 * 1024**3, metadata_ttl=60.0, source="<demo>")


def cmd_demo(args: argparse.Namespace) -> int:
    if not emulator_installed("demo"):
        return 1
    from omicsfs.emulator.server import EmulatorProcess

    mountpoint = Path(args.mountpoint).absolute()
    mountpoint.mkdir(parents=True, exist_ok=True)
    # A kill stops the demo as Ctrl-C does: through the cleanup below. (While mounted, the
    # daemon's own signal handling unmounts first.) Sent on as SIGINT, not raised here: inside
    # trio.run, after the mount's own handling has ended, trio delivers a SIGINT where it is safe,
    # where a KeyboardInterrupt raised anywhere in trio's teardown can come out as
    # TrioInternalError (likely the exit status 1 the demo once gave when killed as it stopped).
    signal.signal(signal.SIGTERM, lambda number, frame: os.kill(os.getpid(), signal.SIGINT))
    print("omicsfs demo: starting the emulator (the first run generates its sample data)...", flush=True)
    emulator = EmulatorProcess(args.data, large_file_size=args.large_file_size, port=args.port)
    cache_dir = Path(tempfile.mkdtemp(prefix="omicsfs-demo-cache-"))
    try:
        emulator.wait_ready()
        config = demo_config(emulator.url, emulator.token, cache_dir)
        setup_logging(args.debug, config.secrets())
        return _serve_foreground(config, mountpoint, None, banner=DEMO_HINTS.format(mnt=mountpoint, omicsfs=_command_name()))
    except (OmicsfsError, RuntimeError, TimeoutError) as exc:
        print(f"omicsfs: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        defer_signals()
        emulator.stop()
        shutil.rmtree(cache_dir, ignore_errors=True)
        # Done: a kill from here on has nothing left to stop. Ignored, not left to Python's exit,
        # which would die of it (status -15) after the cleanup it was meant to allow.
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)


def defer_signals() -> None:
    """From here on a second Ctrl-C or a `kill` is noted, not obeyed: the cleanup must not be cut short."""

    def note(number, frame) -> None:
        print(f"omicsfs: {signal.Signals(number).name} while stopping; finishing the cleanup first", file=sys.stderr)

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, note)


# -- argument parsing ----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="omicsfs", description="Mount genomics platforms as one directory tree.")
    top.add_argument("--version", action="version", version=f"omicsfs {__version__}")
    commands = top.add_subparsers(dest="command", required=True)

    mount = commands.add_parser("mount", help="mount the configured platforms")
    mount.add_argument("mountpoint")
    mount.add_argument("--config", help="configuration file (default: $OMICSFS_CONFIG, else ~/.config/omicsfs/config.toml)")
    mount.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground until unmounted")
    mount.add_argument("--cache-dir", help="on-disk block cache directory (default ~/.cache/omicsfs)")
    mount.add_argument("--cache-size", help="on-disk block cache size, e.g. 10G (default 10G)")
    mount.add_argument("--memory-cache-size", help="in-memory block cache size, e.g. 256M (default 256M)")
    mount.add_argument("--metadata-ttl", type=float, help="seconds listings and attributes are cached (default 60)")
    mount.add_argument("--write-back", choices=("sync", "async"),
                       help="sync (default): close() returns once the platform confirmed the upload; async: at once")
    mount.add_argument("--allow-other", action="store_true",
                       help="let other users in, as the mode bits allow (non-root: needs user_allow_other in /etc/fuse.conf)")
    mount.add_argument("--debug", action="store_true", help="log every operation")
    mount.add_argument("--log-file", help="log file (default: stderr in the foreground, else ~/.local/state/omicsfs/omicsfs.log)")
    mount.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    mount.set_defaults(run=cmd_mount)

    unmount = commands.add_parser("unmount", help="unmount")
    unmount.add_argument("mountpoint")
    unmount.add_argument("--lazy", "-z", action="store_true", help="detach now, clean up when no longer busy")
    unmount.set_defaults(run=cmd_unmount)

    complete = commands.add_parser("complete", help="mark a BaseSpace app result's session complete (an explicit act)")
    complete.add_argument("path", help="the app result's directory in a mount")
    complete.set_defaults(run=cmd_action, action="complete")
    status = commands.add_parser("status", help="what a mount's daemon is doing: requests, cache, uploads")
    status.add_argument("mountpoint", help="the mount point (or any path in the mount)")
    status.add_argument("--json", action="store_true", help="as JSON, for scripts (keys: docs/CONFIGURATION.md)")
    status.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                        help="show it again every SECONDS (default 2) until Ctrl-C")
    status.set_defaults(run=cmd_status)
    refresh = commands.add_parser("refresh", help="ask the platform again for a directory's listing, now")
    refresh.add_argument("path", help="a directory in a mount")
    refresh.add_argument("--recursive", "-r", action="store_true", help="and every directory below it listed so far")
    refresh.set_defaults(run=cmd_refresh)
    login = commands.add_parser("login", help="get a platform's token and keep it in the table's token_file")
    login.add_argument("name", help="the platform table, [platforms.NAME]")
    login.add_argument("--config", help="configuration file (default: $OMICSFS_CONFIG, else ~/.config/omicsfs/config.toml)")
    login.set_defaults(run=cmd_login)

    demo = commands.add_parser("demo", help="mount the built-in emulator's sample data")
    demo.add_argument("mountpoint")
    demo.add_argument("--port", type=int, help="emulator port (default: a free one)")
    demo.add_argument("--data", help="emulator data directory (default ~/.cache/omicsfs/emulator-data)")
    demo.add_argument("--large-file-size", default="1G", help="size of the sample account's large file (default 1G)")
    demo.add_argument("--debug", action="store_true")
    demo.set_defaults(run=cmd_demo)

    emulator = commands.add_parser("emulator", help="run the platform emulators alone")
    emulator.add_argument("--port", type=int, default=8780)
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--data", help="data directory (default ~/.cache/omicsfs/emulator-data)")
    emulator.add_argument("--token", default=None, help="the token the emulator accepts")
    emulator.add_argument("--large-file-size", default="1G", help="size of the sample account's large file")
    emulator.add_argument("--deep-bam-size", default="0", help="add a deep coordinate-sorted BAM of about this size (bench/)")
    emulator.add_argument("--wide-directory", type=int, default=0, metavar="N", help="add a directory of N files (bench/)")
    emulator.set_defaults(run=cmd_emulator)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)
