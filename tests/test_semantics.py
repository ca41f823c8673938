"""The promises of docs/SEMANTICS.md, each checked through a real mount of the BaseSpace emulator.

These tests say what a user of the mount would notice, and nothing of how omicsfs keeps its
promises, so that they hold while its insides change. Expected bytes, sizes, ids and dates come
from the emulator's own data or are written out here; the emulator's stats say what reached it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from omicsfs.emulator import sampledata
from omicsfs.mount import daemon_pid, is_mounted
from tests.conftest import run_omicsfs, wait_for

PROJECT = "basespace/Projects/Tumor-Normal WGS"
S1_FILES = f"{PROJECT}/Samples/S1/Files"
S2_FILES = f"{PROJECT}/Samples/S2/Files"
WGS = f"{PROJECT}/AppResults/BWA Alignment S1/Files"
SMALL = [f"{WGS}/Alignment/S1.bam.bai", f"{WGS}/Variants/S1.vcf.gz", f"{WGS}/Variants/S1.vcf.gz.tbi", f"{S1_FILES}/S1_L001_R2_001.fastq.gz"]
ARCHIVE = f"{PROJECT}/AppResults/Archive/Files/Archive/reportarchive.bin"
RUN = "basespace/Runs/221103_M00123_0042_000000000-KX7F2"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def account(emulator) -> dict:
    return sampledata.load(emulator.data_dir / "basespace")


def item_at(account: dict, path: str) -> dict:
    """The emulator's description of the file at `path` (under PROJECT) in the mount."""
    container = path.split("/")[4]  # the sample's or app result's name
    project = next(p for p in account["projects"] if p["Name"] == "Tumor-Normal WGS")
    for parent in project["samples"] + project["appresults"]:
        for item in parent["files"]:
            if parent["Name"] == container and path.endswith("/" + item["Path"]):
                return item
    raise LookupError(path)


def source_bytes(emulator, item: dict) -> bytes:
    return sampledata.object_path(emulator.data_dir / "basespace", item["Id"]).read_bytes()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sample_id(account: dict, name: str) -> str:
    project = next(p for p in account["projects"] if p["Name"] == "Tumor-Normal WGS")
    return next(s["Id"] for s in project["samples"] if s["Name"] == name)


# -- what the mount shows ------------------------------------------------------------------------


def test_modes_and_owner(mount):
    root = mount().path
    for directory in (root, root / "basespace", root / PROJECT, root / WGS / "Alignment"):
        mode = directory.stat().st_mode
        assert stat.S_ISDIR(mode) and stat.S_IMODE(mode) == 0o555, (directory, oct(mode))
    for file in (root / WGS / "Alignment/S1.bam", root / PROJECT / ".json", root / PROJECT / ".id"):
        mode = file.stat().st_mode
        assert stat.S_ISREG(mode) and stat.S_IMODE(mode) == 0o444, (file, oct(mode))
    for path in (root / PROJECT, root / WGS / "Alignment/S1.bam"):
        assert (path.stat().st_uid, path.stat().st_gid) == (os.getuid(), os.getgid())
    bam = (root / WGS / "Alignment/S1.bam").stat()
    assert (bam.st_nlink, bam.st_size, bam.st_blocks) == (1, 5445154, 10636)  # 512-byte blocks, rounded up: `du`
    assert (root / PROJECT).stat().st_nlink == 2
    assert subprocess.run(["du", "-k", str(root / WGS / "Alignment/S1.bam")], capture_output=True, text=True).stdout.split()[0] == "5318"
    usage = os.statvfs(root)
    assert usage.f_namemax == 255 and usage.f_bsize == 65536
    # df: BaseSpace's quota (1 TiB) and usage (StorageStatistics), in 64 KiB blocks.
    assert usage.f_blocks * usage.f_frsize == 1 << 40
    assert (usage.f_blocks - usage.f_bavail) * usage.f_frsize == pytest.approx(187_512_345_678, abs=65536)
    # `.json` is the platform's answer, keys sorted, indented by two.
    assert (root / PROJECT / ".json").read_text().startswith('{\n  "DateCreated": "2023-05-17T')


def test_a_directory_of_2000_files_lists_whole(mount, fresh_emulator, account):
    # Far more than one readdir reply holds: the listing continues where each reply ended.
    parent = f"samples/{sample_id(account, 'S2')}"
    fresh_emulator.control("POST", "basespace/files", [
        {"parent": parent, "path": f"many/file-{number:04d}.txt", "content": "x"} for number in range(2000)
    ])
    many = mount().path / S2_FILES / "many"
    assert sorted(os.listdir(many)) == [f"file-{number:04d}.txt" for number in range(2000)]


def test_a_directory_listed_again_keeps_every_entry_usable(mount):
    # 151 cycle folders: more than one readdir reply holds, listed twice (the second time the
    # kernel knows them all), then every one opened.
    lane = mount().path / RUN / "Files/Data/Intensities/BaseCalls/L001"
    first = sorted(os.listdir(lane))
    assert len(first) == 151 and sorted(os.listdir(lane)) == first
    for name in first:
        assert len(os.listdir(lane / name)) == 8, name


def test_extended_attributes_are_listed_and_read(mount):
    root = mount().path
    bam = root / WGS / "Alignment/S1.bam"
    assert sorted(os.listxattr(bam)) == ["user.omicsfs.href", "user.omicsfs.id"]
    assert sorted(os.listxattr(root / PROJECT)) == ["user.omicsfs.href", "user.omicsfs.id"]
    # As SEMANTICS shows it: `getfattr -d -m user.omicsfs FILE`.
    shown = subprocess.run(["getfattr", "-d", "-m", "user.omicsfs", str(bam)], capture_output=True, text=True, check=True).stdout
    assert 'user.omicsfs.id="1864691"' in shown and 'user.omicsfs.href="v1pre3/files/1864691"' in shown
    with pytest.raises(OSError) as info:
        os.getxattr(bam, "user.omicsfs.nothing")
    assert info.value.errno == errno.ENODATA


# -- writes --------------------------------------------------------------------------------------

#: What each tool reports for the errnos a read-only place may answer with.
REFUSALS = {os.strerror(code): code for code in (errno.EROFS, errno.EACCES, errno.EPERM)}


def refused(*command: str) -> int:
    """Run a shell tool that must fail; the errno it reports."""
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode != 0, f"{command} succeeded"
    reasons = [code for message, code in REFUSALS.items() if result.stderr.rstrip().endswith(message)]
    assert reasons, f"{command[0]} failed otherwise: {result.stderr.strip()}"
    return reasons[0]


def test_writes_to_read_only_places_are_refused(mount, fresh_emulator):
    root = mount().path
    places = {
        "the mount's root": root,
        "a platform's top": root / "basespace",
        "a sample's files": root / S1_FILES,
        "an app result's folder": root / WGS / "Alignment",
        "a run's folder": root / RUN / "Files/Data",
    }
    existing = {
        "a sample's files": root / S1_FILES / "S1_L001_R1_001.fastq.gz",
        "an app result's folder": root / WGS / "Alignment/S1.bam",
        "a run's folder": root / RUN / "Files/RunInfo.xml",
    }
    answers: dict[tuple[str, str], int] = {}
    for where, directory in places.items():
        answers[where, "touch a new file"] = refused("touch", str(directory / "new.txt"))
        answers[where, "mkdir"] = refused("mkdir", str(directory / "new-folder"))
    for where, file in existing.items():
        answers[where, "touch"] = refused("touch", str(file))
        answers[where, "rm"] = refused("rm", "-f", str(file))
        answers[where, "mv"] = refused("mv", str(file), str(file.parent / "renamed"))
        answers[where, "chmod"] = refused("chmod", "u+w", str(file))
        answers[where, "setfattr"] = refused("setfattr", "-n", "user.note", "-v", "x", str(file))
        answers[where, "append"] = refused("sh", "-c", 'echo more >> "$1"', "sh", str(file))
    answers["a directory", "rmdir"] = refused("rmdir", str(root / WGS / "Alignment"))
    answers["a directory", "chmod"] = refused("chmod", "u+w", str(root / PROJECT))
    # EROFS where nothing can be written; EPERM where the place takes other writes (Projects/ takes
    # new projects, so a project's own attributes are "not permitted" rather than read-only).
    wrong = {key: os.strerror(code) for key, code in answers.items()
             if code != (errno.EPERM if key == ("a directory", "chmod") else errno.EROFS)}
    assert wrong == {}
    # Nothing changed, and no request that could change anything reached the platform.
    assert (root / WGS / "Alignment/S1.bam").stat().st_size == 5445154
    assert "renamed" not in os.listdir(root / S1_FILES)
    assert fresh_emulator.stats()["write_requests"] == 0


# -- freshness -------------------------------------------------------------------------------------


def test_new_and_changed_files_appear_within_the_metadata_ttl(mount, fresh_emulator, account):
    root = mount(None, "--metadata-ttl", "1").path
    files = root / S1_FILES
    changed = files / "S1_L001_R2_001.fastq.gz"
    before = changed.stat()
    assert before.st_size == 369420
    assert md5(changed.read_bytes()) == item_at(account, str(changed.relative_to(root)))["Md5"]
    with pytest.raises(FileNotFoundError):
        (files / "notes.txt").stat()  # the kernel may remember the absence, for the TTL only

    fresh_emulator.control("POST", "basespace/files", {
        "parent": f"samples/{sample_id(account, 'S1')}", "path": "notes.txt", "content": "a note\n",
        "date": "2025-01-02T03:04:05.0000000",
    })
    fresh_emulator.control("PUT", "basespace/files/1864462", {
        "content": "@r1\nACGT\n+\nFFFF\n", "date": "2025-02-03T04:05:06.0000000",
    })

    wait_for(lambda: "notes.txt" in os.listdir(files))
    assert (files / "notes.txt").read_bytes() == b"a note\n"
    assert (files / "notes.txt").stat().st_mtime == 1735787045  # 2025-01-02T03:04:05Z
    after = wait_for(lambda: changed.stat().st_size == 16 and changed.stat())
    assert after.st_mtime == 1738555506  # 2025-02-03T04:05:06Z
    assert changed.read_bytes() == b"@r1\nACGT\n+\nFFFF\n"
    # A changed file keeps its inode; no page the kernel cached of the old bytes is served.
    assert after.st_ino == before.st_ino
    assert subprocess.run(["cat", str(changed)], capture_output=True, check=True).stdout == b"@r1\nACGT\n+\nFFFF\n"


def test_a_descriptor_opened_before_a_change_reads_the_new_bytes(mount, fresh_emulator, emulator):
    root = mount(None, "--metadata-ttl", "1").path
    fastq = root / S1_FILES / "S1_L001_R1_001.fastq.gz"
    new = b"@r1\nACGT\n+\nFFFF\n" * 4096  # 65536 bytes
    old = sampledata.object_path(emulator.data_dir / "basespace", "1864431").read_bytes()
    descriptor = os.open(fastq, os.O_RDONLY)
    try:
        assert os.pread(descriptor, 4096, 0) == old[:4096]
        fresh_emulator.control("PUT", "basespace/files/1864431", {"content": new.decode()})
        wait_for(lambda: fastq.stat().st_size == len(new))
        assert fastq.read_bytes() == new  # by path: the new file
        through_old = bytearray()
        while chunk := os.pread(descriptor, 1 << 20, len(through_old)):
            through_old += chunk
    finally:
        os.close(descriptor)
    assert bytes(through_old) == new


def test_a_listing_is_trusted_for_the_metadata_ttl(mount, fresh_emulator, account):
    root = mount(None, "--metadata-ttl", "3").path
    files = root / S2_FILES
    assert sorted(os.listdir(files)) == ["S2_L001_R1_001.fastq.gz", "S2_L001_R2_001.fastq.gz"]
    fresh_emulator.control("POST", "basespace/files", {"parent": f"samples/{sample_id(account, 'S2')}", "path": "late.txt", "content": "x"})
    listed = time.monotonic()
    assert "late.txt" not in os.listdir(files)  # within the TTL: no request, the old answer
    wait_for(lambda: "late.txt" in os.listdir(files))
    assert time.monotonic() - listed > 1.5


def test_siblings_whose_names_collide_are_all_shown(mount, fresh_emulator, account):
    # `a (1)` is a plain name that looks like the id-suffixed name of the file with id 1, one of
    # the two files called `a`: every one of the three must stay reachable, with its own bytes.
    parent = f"samples/{sample_id(account, 'S2')}"
    for file_id, name, content in (("9", "a (1)", "nine\n"), ("1", "a", "one\n"), ("2", "a", "two\n")):
        fresh_emulator.control("POST", "basespace/files", {"parent": parent, "path": name, "content": content, "id": file_id})
    files = mount().path / S2_FILES
    names = [name for name in os.listdir(files) if name.startswith("a")]
    assert len(names) == len(set(names)) == 3
    by_id = {os.getxattr(files / name, "user.omicsfs.id").decode(): name for name in names}
    assert by_id.keys() == {"9", "1", "2"}
    assert {file_id: (files / name).read_bytes() for file_id, name in by_id.items()} == {"9": b"nine\n", "1": b"one\n", "2": b"two\n"}
    assert by_id["9"] == "a (1)", "the file really named `a (1)` keeps its name"
    assert by_id["2"] == "a (2)"
    assert "a" not in names, "siblings that share a name all get their id"


# -- the disk cache across mounts ------------------------------------------------------------------


def test_a_remount_reads_small_files_from_the_disk_cache(mount, fresh_emulator, account, tmp_path):
    cache = tmp_path / "shared cache"
    first = mount(None, cache_dir=cache)
    run_files = sorted((first.path / RUN / "Files/Data/Intensities/BaseCalls/L001/C1.1").iterdir())
    paths = [first.path / path for path in SMALL] + run_files
    expected = {path.relative_to(first.path): path.read_bytes() for path in paths}
    assert fresh_emulator.stats()["store_requests"] >= len(paths)
    for relative, data in expected.items():
        if not str(relative).startswith("basespace/Runs"):
            assert md5(data) == item_at(account, str(relative))["Md5"], relative
    run_omicsfs("unmount", str(first.path))
    # The store it read from is remembered, to be connected to as the next mount starts: its
    # address only, no URL, no signature.
    store = httpx.URL(fresh_emulator.url)
    assert (cache / "stores").read_text() == f"http {store.host} {store.port}\n"

    fresh_emulator.reset_stats()
    second = mount(None, cache_dir=cache)
    for relative in expected:
        (second.path / relative).stat()  # the listings
    listed = fresh_emulator.stats()["api_requests"]
    assert {relative: (second.path / relative).read_bytes() for relative in expected} == expected
    assert fresh_emulator.stats()["store_requests"] == 0, "every block came from the disk cache"
    assert fresh_emulator.stats()["api_requests"] == listed, "a file the cache holds whole needs no download URL"


def test_a_corrupt_cache_file_costs_one_refetch(mount, fresh_emulator, account, tmp_path):
    cache = tmp_path / "shared cache"
    tbi = f"{WGS}/Variants/S1.vcf.gz.tbi"  # 2246 bytes: one block
    expected = item_at(account, tbi)
    first = mount(None, cache_dir=cache)
    assert md5((first.path / tbi).read_bytes()) == expected["Md5"]
    run_omicsfs("unmount", str(first.path))
    cached = [path for path in cache.rglob("*") if path.is_file()]
    assert cached, "the read left nothing in the cache directory"
    # One byte flipped in the middle of every file the cache holds: the object's index is
    # unreadable then and the block is fetched again. (A data block alone changed within one boot
    # is served as the page cache holds it; after a reboot it is checked: tests/test_blockcache.py.)
    for path in cached:
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0x20
        path.write_bytes(bytes(raw))

    fresh_emulator.reset_stats()
    second = mount(None, cache_dir=cache)
    assert md5((second.path / tbi).read_bytes()) == expected["Md5"]
    assert fresh_emulator.stats()["store_requests"] == 1
    fresh_emulator.reset_stats()
    assert md5(subprocess.run(["cat", str(second.path / tbi)], capture_output=True, check=True).stdout) == expected["Md5"]
    assert fresh_emulator.stats()["store_requests"] == 0


# -- reading ---------------------------------------------------------------------------------------


def test_at_most_8_requests_at_once(mount, fresh_emulator):
    root = mount().path
    folder = root / RUN / "Files/Data/Intensities/BaseCalls/L001"
    files = [folder / f"C{cycle}.1" / "s_1_1101.bcl" for cycle in range(1, 25)]
    for file in files:
        file.stat()
    fresh_emulator.knobs(store_delay=0.5)  # every body starts half a second late: readers overlap
    results: dict[Path, int] = {}

    def read(path: Path) -> None:
        results[path] = len(path.read_bytes())

    threads = [threading.Thread(target=read, args=(file,)) for file in files]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == len(files) and all(results.values())
    assert 2 <= fresh_emulator.stats()["store_concurrency"] <= 8


def test_an_indexed_file_has_its_end_and_its_index_fetched_beside_its_header(mount, fresh_emulator, emulator, account, tmp_path):
    """htslib reads a BAM's header, then its end-of-file marker, then its index: opening a file with
    an index beside it sends for all three at once, and the header's read fetches only its blocks."""
    root = mount().path
    bam_path, bai_path = f"{WGS}/Alignment/S1.bam", f"{WGS}/Alignment/S1.bam.bai"
    bam, bai = item_at(account, bam_path), item_at(account, bai_path)
    (root / bam_path).stat()  # the listings, before the count starts
    local = tmp_path / "S1.bam"
    local.write_bytes(source_bytes(emulator, bam))
    (tmp_path / "S1.bam.bai").write_bytes(source_bytes(emulator, bai))
    region = "chr2:500000-501000"
    expected = subprocess.run(["samtools", "view", "-c", str(local), region], capture_output=True, text=True, check=True).stdout
    fresh_emulator.reset_stats()
    fresh_emulator.knobs(store_delay=0.3)  # each body starts late: requests sent together overlap
    counted = subprocess.run(["samtools", "view", "-c", str(root / bam_path), region], capture_output=True, text=True, check=True)
    assert counted.stdout == expected and int(expected) > 0
    stats = fresh_emulator.stats()
    last_block = (bam["Size"] - 1) // (64 * 1024) * 64 * 1024
    first_three = set(stats["store_ranges"][:3])
    assert first_three == {f"{bam['Id']}:0-65535", f"{bam['Id']}:{last_block}-{bam['Size'] - 1}", f"{bai['Id']}:0-{bai['Size'] - 1}"}
    assert stats["store_concurrency"] >= 3, "the header, the end and the index were asked one after the other"


def test_sequential_prefetch_stays_within_half_the_memory_cache(mount, fresh_emulator):
    # A 16 MiB memory cache caps the prefetch window at 8 MiB.
    root = mount(None, "--memory-cache-size", "16M").path
    archive = root / ARCHIVE
    archive.stat()
    fresh_emulator.reset_stats()
    read_to = 4 * MiB
    with open(archive, "rb", buffering=0) as file:
        while file.tell() < read_to:
            assert file.read(128 * 1024)
        time.sleep(1)  # what was prefetched has arrived
        ranges = fresh_emulator.stats()["store_ranges"]
        furthest = max(int(text.rpartition("-")[2]) + 1 for text in ranges)
    assert read_to < furthest, "a sequential read prefetches"
    # The kernel's own readahead (1 MiB here) plus the 8 MiB window, rounded up to 64 KiB blocks.
    assert furthest <= read_to + 1 * MiB + 8 * MiB + 64 * 1024, f"fetched up to {furthest / MiB:.1f} MiB"


def test_a_body_cut_off_in_the_middle_is_resumed(mount, fresh_emulator, account):
    root = mount().path
    bam = root / WGS / "Alignment/S1.bam"
    bam.stat()
    fresh_emulator.knobs(cuts=[
        {"prefix": "/store", "after_bytes": 300_000, "count": 2},
        {"prefix": "/store", "fraction": 0.5, "count": 1},
    ])
    data = subprocess.run(["cat", str(bam)], capture_output=True, check=True).stdout
    assert len(data) == 5445154 and md5(data) == item_at(account, f"{WGS}/Alignment/S1.bam")["Md5"]
    stats = fresh_emulator.stats()
    assert stats["cut_bodies"] == 3
    # Resumed where the cut left off: far less than three more whole BAMs crossed the wire.
    assert stats["store_bytes"] < 2 * len(data)


# -- errors ----------------------------------------------------------------------------------------


def test_exhausted_retries_give_eio_after_8_tries(mount, fresh_emulator, account):
    mounted = mount()
    vcf = mounted.path / WGS / "Variants/S1.vcf.gz"
    vcf.stat()
    # 503s asking for no wait: eight tries pass quickly.
    fresh_emulator.knobs(failures=[{"prefix": "/store", "status": 503, "count": 1000, "headers": {"Retry-After": "0"}}])
    with pytest.raises(OSError) as info:
        vcf.read_bytes()
    assert info.value.errno == errno.EIO
    tries = fresh_emulator.stats()["injected_failures"]
    assert tries >= 8 and tries % 8 == 0, f"{tries} requests: not a whole number of 8-try reads"
    log = mounted.log.read_text()
    assert f"{WGS}/Variants/S1.vcf.gz: read of" in log and "gave up after 8 attempts" in log
    # The failure is not remembered: once the store answers again, so does the file.
    fresh_emulator.knobs(failures=[])
    assert md5(vcf.read_bytes()) == item_at(account, f"{WGS}/Variants/S1.vcf.gz")["Md5"]


def test_a_refused_token_gives_eacces(mount, fresh_emulator):
    mounted = mount()
    samples = mounted.path / PROJECT / "Samples"
    fresh_emulator.knobs(failures=[{"prefix": "/basespace/v1pre3/projects/", "status": 401, "count": 1000}])
    with pytest.raises(PermissionError):
        os.listdir(samples)
    log = mounted.log.read_text()
    assert f"{PROJECT}/Samples: listing failed" in log and "answered 401 Unauthorized" in log


# -- unmounting --------------------------------------------------------------------------------


def test_lazy_unmount_with_a_file_open(mount, account):
    mounted = mount()
    vcf = mounted.path / WGS / "Variants/S1.vcf.gz"
    with open(vcf, "rb") as file:
        head = file.read(1000)
        run_omicsfs("unmount", "--lazy", str(mounted.path))
        assert not is_mounted(mounted.path)
        rest = file.read()  # an open file still reads after a lazy unmount
    assert md5(head + rest) == item_at(account, f"{WGS}/Variants/S1.vcf.gz")["Md5"]
    wait_for(lambda: daemon_pid(mounted.path) is None, timeout=30)  # and the daemon ends once it is closed


def test_an_unmount_right_after_a_read_keeps_what_was_read(mount, fresh_emulator, account, tmp_path):
    # The disk cache is written behind the reads: an unmount the moment a read ends must still
    # leave every block of it on disk (SEMANTICS: an unmount waits for the queue to drain).
    cache = tmp_path / "shared cache"
    first = mount(None, cache_dir=cache)
    bam = f"{WGS}/Alignment/S1.bam"
    (first.path / bam).stat()
    subprocess.run(["sh", "-c", 'cat "$1" > /dev/null && fusermount3 -u "$2"', "sh", str(first.path / bam), str(first.path)], check=True)
    wait_for(lambda: daemon_pid(first.path) is None, timeout=60)

    fresh_emulator.reset_stats()
    second = mount(None, cache_dir=cache)
    assert md5((second.path / bam).read_bytes()) == item_at(account, bam)["Md5"]
    assert fresh_emulator.stats()["store_requests"] == 0
