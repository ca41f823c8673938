"""The test command of the mutation run: pytest on this copy's own source, cleaned up after.

cosmic-ray runs this in a worker's copy of the repository, with one mutation applied to a file of
`src/omicsfs`. It runs pytest so that the code under test, and every daemon a test mounts with, is
that copy's (`PYTHONPATH`), under a deadline of its own shorter than cosmic-ray's, so that it can
clean up even after a mutant that hangs: a mount left by a test is detached and its daemon, which
runs in a session of its own, is ended. Exit status: pytest's (non-zero: the mutant was killed).

    python tests/mutation/run_tests.py SECONDS PYTEST_ARGS...
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]  # the copy of the repository this runs in


def main() -> int:
    deadline, pytest_args = float(sys.argv[1]), sys.argv[2:]
    basetemp = Path(tempfile.mkdtemp(prefix="omicsfs-mutant-"))
    environment = {**os.environ, "PYTHONPATH": str(HERE / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", f"--basetemp={basetemp}", *pytest_args]
    tests = subprocess.Popen(command, cwd=HERE, env=environment, start_new_session=True)
    try:
        status = tests.wait(timeout=deadline)
    except subprocess.TimeoutExpired:
        print(f"run_tests: no result within {deadline:.0f} s: killed", flush=True)
        os.killpg(tests.pid, signal.SIGKILL)
        tests.wait()
        status = 124
    finally:
        clean_up(basetemp)
    return status


def clean_up(basetemp: Path) -> None:
    """Detach the mounts under `basetemp` and end the daemons serving them: the processes whose
    command line names a path under it (this run's own, by its unique directory)."""
    with open("/proc/self/mountinfo") as mounts:
        points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4]) for line in mounts]
    for point in points:
        if point.startswith(str(basetemp)):
            subprocess.run(["fusermount3", "-uz", point], capture_output=True)
    marker = str(basetemp).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                continue
    shutil.rmtree(basetemp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
