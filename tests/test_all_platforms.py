"""Every platform in one mount, and the demo that shows them all."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from omicsfs.emulator import bugseq, isabl, platform_modules, sampledata, sevenbridges
from omicsfs.mount import is_mounted
from tests.conftest import md5sums, platform_table

KINDS = sorted(module.__name__.rsplit(".", 1)[-1] for module in platform_modules())


def first_files(root: Path, suffix: str) -> list[Path]:
    """Files ending in `suffix` under `root`, hidden directories and entity metadata left out."""
    found = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        found += [Path(directory, name) for name in sorted(names) if name.endswith(suffix)]
    return found


def source_of(emulator, kind: str, path: Path) -> Path:
    """The emulator's file behind a mounted file, found by the attributes the mount gives it."""
    data = emulator.data_dir / kind
    if kind == "basespace":
        return sampledata.object_path(data, os.getxattr(path, "user.omicsfs.id").decode())
    if kind == "sevenbridges":
        return sevenbridges.object_path(data, os.getxattr(path, "user.omicsfs.id").decode())
    if kind == "bugseq":
        job_id, filename = (os.getxattr(path, f"user.omicsfs.{key}").decode() for key in ("job_id", "filename"))
        job = next(job for job in bugseq.load(data)["jobs"] if job["id"] == job_id)
        return bugseq.object_path(data, next(o["object"] for o in job["outputs"] if o["filename"] == filename))
    assert kind == "isabl"
    installation = isabl.Installation(data)
    analysis = installation.tables["analyses"][int(os.getxattr(path, "user.omicsfs.analysis"))]
    return installation.local_path(analysis["results"][os.getxattr(path, "user.omicsfs.result").decode()])


def test_every_platform_side_by_side_in_one_mount(mount, fresh_emulator):
    assert KINDS == ["basespace", "bugseq", "isabl", "sevenbridges"]
    mounted = mount({kind: platform_table(fresh_emulator, kind) for kind in KINDS})
    assert sorted(os.listdir(mounted.path)) == KINDS
    for kind in KINDS:
        bams = first_files(mounted.path / kind, ".bam")
        assert bams, f"no BAM under {kind}"
        bam = bams[0]
        assert Path(f"{bam}.bai").exists(), f"{bam} has no index beside it"
        # The same region query works on every platform's BAM, through one daemon.
        count = subprocess.run(["samtools", "view", "-c", str(bam), "chr1:100000-200000"], capture_output=True, text=True)
        assert count.returncode == 0 and int(count.stdout) > 0, (kind, count.stderr)
        # and every platform's bytes come through whole: the BGZF EOF marker ends each BAM.
        assert bam.read_bytes()[-28:] == bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
    # One md5sum run over files of all four platforms, each equal to the emulator's own bytes.
    some = [path for kind in KINDS for path in first_files(mounted.path / kind, ".bai")[:2]]
    assert {path.relative_to(mounted.path).parts[0] for path in some} == set(KINDS)
    sums = md5sums(some)
    for path in some:
        kind = path.relative_to(mounted.path).parts[0]
        assert sums[path] == hashlib.md5(source_of(fresh_emulator, kind, path).read_bytes()).hexdigest(), path
    # df on the mount answers (BaseSpace reports its quota).
    assert os.statvfs(mounted.path).f_blocks > 0


def test_demo_mounts_every_platform_and_unmounts_on_ctrl_c(tmp_path, emulator):
    mountpoint = tmp_path / "mnt"
    demo = subprocess.Popen(
        [sys.executable, "-m", "omicsfs", "demo", str(mountpoint), "--data", str(emulator.data_dir),
         "--large-file-size", "64M"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 300
        banner = []
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            assert line, "the demo ended before mounting:\n" + "".join(banner)
            banner.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        text = "".join(banner)
        assert "Try, in another terminal" in text
        assert sorted(os.listdir(mountpoint)) == KINDS
        # The commands the banner shows work as shown.
        bam = mountpoint / "basespace/Projects/Tumor-Normal WGS/AppResults/BWA Alignment S1/Files/Alignment/S1.bam"
        assert f'samtools view -c "{bam}" chr1:100000-200000' in text
        count = subprocess.run(["samtools", "view", "-c", str(bam), "chr1:100000-200000"], capture_output=True, text=True)
        assert int(count.stdout) > 0
        # The write hints too, each line as the banner shows it, through a shell.
        writes = text.split("Writes become uploads", 1)[1].split("Press Ctrl-C", 1)[0].strip().splitlines()[1:]
        assert len(writes) == 6
        for line in writes:
            done = subprocess.run(["bash", "-c", line.strip()], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, (line, done.stderr)
        uploaded = {kind: mountpoint / kind / place / "os-release" for kind, place in (
            ("basespace", "Projects/Tumor-Normal WGS/AppResults/My Calls/Files"),
            ("sevenbridges", "Projects/alice/wgs-cohort"), ("bugseq", "uploads"))}
        for path in uploaded.values():
            assert path.read_bytes() == Path("/etc/os-release").read_bytes(), path
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 0
        assert not is_mounted(mountpoint)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        if is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-uz", str(mountpoint)])
