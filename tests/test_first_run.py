"""What a new user meets first: `omicsfs demo` without the emulator installed, and the dates at the top of a mount."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest


@pytest.mark.parametrize("command", ["demo", "emulator"])
def test_without_the_emulator_extra_demo_says_what_to_install(tmp_path, command):
    # `pip install .` leaves out starlette, uvicorn and pysam; here they are made unimportable
    # (None in sys.modules is how Python spells "not installed" to an import).
    hide = "import sys; sys.modules.update(starlette=None, uvicorn=None, pysam=None); from omicsfs.cli import main; "
    arguments = [command, str(tmp_path / "mnt")] if command == "demo" else [command]
    result = subprocess.run([sys.executable, "-c", hide + f"sys.exit(main({arguments!r}))"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"omicsfs {command} runs the built-in emulator, whose packages are not installed here (starlette, uvicorn, pysam)" in result.stderr
    assert "pip install 'omicsfs[emulator]'" in result.stderr


def test_the_root_and_platform_directories_show_the_mount_start_not_1970(mount, fresh_emulator):
    before = time.time()
    mounted = mount()
    after = time.time()
    for directory in (mounted.path, mounted.path / "basespace"):
        mtime = os.stat(directory).st_mtime
        assert before - 1 <= mtime <= after + 1, (directory, time.ctime(mtime))
    # Entities keep the platform's own dates.
    project = os.stat(mounted.path / "basespace/Projects/Tumor-Normal WGS").st_mtime
    assert time.gmtime(project).tm_year < time.gmtime(before).tm_year
