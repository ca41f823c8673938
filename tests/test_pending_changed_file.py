"""PENDING (fails today, so `make test` leaves it out; see conftest.py): a file descriptor opened
before a file changed on the platform reads a mixture of old and new bytes.

The change itself shows as it should: after the metadata TTL a path lookup finds a new inode with
the new size and bytes. But a descriptor opened before keeps the old inode, whose size is the old
one and whose reads go to the same platform file id: the blocks and pages cached before the change
come back old, the rest is fetched from the store, which now holds the new bytes (or answers
416 past their end). The issue asks that the new bytes be read through such a descriptor too.
"""

from __future__ import annotations

import os
import time

from omicsfs.emulator import sampledata

FILES = "basespace/Projects/Tumor-Normal WGS/Samples/S1/Files"
NEW = b"@r1\nACGT\n+\nFFFF\n" * 4096  # 65536 bytes


def test_a_descriptor_opened_before_a_change_reads_the_new_bytes(mount, fresh_emulator, emulator):
    root = mount(None, "--metadata-ttl", "1").path
    fastq = root / FILES / "S1_L001_R1_001.fastq.gz"
    old = sampledata.object_path(emulator.data_dir / "basespace", "1864431").read_bytes()
    descriptor = os.open(fastq, os.O_RDONLY)
    try:
        assert os.pread(descriptor, 4096, 0) == old[:4096]
        fresh_emulator.control("PUT", "basespace/files/1864431", {"content": NEW.decode()})
        deadline = time.monotonic() + 15
        while fastq.stat().st_size != len(NEW) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert fastq.read_bytes() == NEW  # by path: the new file
        through_old = bytearray()
        while chunk := os.pread(descriptor, 1 << 20, len(through_old)):
            through_old += chunk
    finally:
        os.close(descriptor)
    assert bytes(through_old) == NEW
