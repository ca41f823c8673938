"""A cache directory on a disk that fills up: writes are told ENOSPC and lose nothing they were
promised, reads fail rather than give wrong bytes, and the mount stays up. The disk is a tmpfs of a
few MiB, made for the test."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from omicsfs.emulator import sampledata
from omicsfs.mount import is_mounted
from tests.conftest import platform_table

MiB = 1024 * 1024
BAM = "basespace/Projects/Tumor-Normal WGS/AppResults/BWA Alignment S1/Files/Alignment/S1.bam"


@pytest.fixture
def tiny_disk(tmp_path):
    """A directory on a tmpfs of `size`, unmounted afterwards."""
    made = []

    def make(size: str) -> Path:
        path = tmp_path / f"tiny-{len(made)}"
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
        made.append(path)
        return path

    yield make
    for path in made:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_staging_disk_tells_the_writer_and_loses_nothing_accepted(mount, fresh_emulator, tiny_disk):
    cache = tiny_disk("12M")
    mounted = mount({"bugseq": platform_table(fresh_emulator, "bugseq")}, cache_dir=cache)
    target = mounted.path / "bugseq" / "uploads" / "too-big.bin"
    data = random.Random(3).randbytes(32 * MiB)
    accepted = 0
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        with pytest.raises(OSError) as full:
            while accepted < len(data):
                accepted += os.write(descriptor, data[accepted : accepted + MiB])
        assert full.value.errno == errno.ENOSPC
    finally:
        try:
            os.close(descriptor)  # the upload of what was accepted: done, or kept to try again
        except OSError as exc:
            assert exc.errno == errno.EIO
    assert 0 < accepted < len(data)
    assert is_mounted(mounted.path) and "uploads" in os.listdir(mounted.path / "bugseq")
    # Nothing accepted is lost: the platform ends up with exactly those bytes.
    expected = hashlib.md5(data[:accepted]).hexdigest()

    def uploaded() -> list[dict]:
        files = httpx.get(f"{fresh_emulator.url}/bugseq/_emulator/uploads", timeout=10).json()["files"]
        return [f for f in files if f["filename"] == "too-big.bin" and f["status"] == "uploaded"]

    start = time.monotonic()
    while not uploaded() and time.monotonic() - start < 120:
        time.sleep(0.5)
    (record,) = uploaded()
    assert (record["size"], record["md5"]) == (accepted, expected)
    assert "No space left on device" in mounted.log.read_text()


def test_a_full_cache_disk_never_gives_wrong_bytes(mount, fresh_emulator, emulator, tiny_disk):
    cache = tiny_disk("1M")
    mounted = mount(None, cache_dir=cache)
    bam = mounted.path / BAM
    source = sampledata.object_path(emulator.data_dir / "basespace", os.getxattr(bam, "user.omicsfs.id").decode())
    truth = hashlib.md5(source.read_bytes()).hexdigest()
    for _ in range(3):
        result = subprocess.run(["md5sum", str(bam)], capture_output=True, text=True)
        if result.returncode == 0:
            assert result.stdout.split()[0] == truth, "bytes read through a full cache disk were wrong"
        else:
            assert "Input/output error" in result.stderr
    assert is_mounted(mounted.path)
