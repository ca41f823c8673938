"""`omicsfs status` and `omicsfs refresh` against running mounts: the real commands, real reads and
uploads through the mount, the emulator changed behind the mount's back through BaseSpace's own API.

The tests that write run on an emulator of their own (sharing the session's generated data), so
that what they create stays out of the listings other tests compare with the sample account.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from omicsfs.emulator import sampledata
from omicsfs.emulator.server import EmulatorProcess
from tests.conftest import OMICSFS, TEST_LARGE_FILE, assert_no_secrets, md5sums, platform_table, run_omicsfs, toml_config

MiB = 1024 * 1024
BAM = "Projects/Tumor-Normal WGS/AppResults/BWA Alignment S1/Files/Alignment/S1.bam"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture(scope="module")
def own_emulator(emulator) -> EmulatorProcess:
    process = EmulatorProcess(emulator.data_dir, large_file_size=TEST_LARGE_FILE).wait_ready()
    yield process
    process.stop()


@pytest.fixture
def bs(own_emulator) -> EmulatorProcess:
    own_emulator.knobs(part_faults=[], failures=[])
    own_emulator.reset_stats()
    yield own_emulator
    own_emulator.knobs(part_faults=[], failures=[])


@pytest.fixture
def bs_mount(mount, bs):
    """The test's own emulator's BaseSpace, mounted with a metadata TTL far beyond the test's length:
    whatever appears before it runs out was asked for."""

    def do_mount(*extra: str):
        mounted = mount({"basespace": platform_table(bs, "basespace")}, "--metadata-ttl", "3600", *extra)
        return mounted, mounted.path / "basespace"

    return do_mount


def status(path: Path) -> dict:
    return json.loads(run_omicsfs("status", str(path), "--json").stdout)


def new_place(root: Path) -> Path:
    """A new project and app result made with mkdir, as a user makes them; its Files directory."""
    project = root / "Projects" / f"Status {uuid.uuid4().hex[:8]}"
    project.mkdir()
    (project / "AppResults" / "Calls").mkdir()
    return project / "AppResults" / "Calls" / "Files"


def add_on_the_platform(emulator: EmulatorProcess, appresult_id: str, name: str, content: bytes, directory: str = "") -> None:
    """A file added to an app result behind the mount's back, through BaseSpace's own upload API."""
    response = httpx.post(f"{emulator.url}/basespace/v1pre3/appresults/{appresult_id}/files",
                          params={"name": name, "directory": directory}, content=content,
                          headers={"x-access-token": emulator.token, "Content-Type": "text/plain"}, timeout=30)
    assert response.status_code == 201, response.text


def dd_direct(path: Path) -> int:
    """Read the whole file with O_DIRECT, past the kernel's page cache: every read reaches the
    daemon. The bytes dd copied."""
    result = subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M", "iflag=direct"], capture_output=True, text=True,
                            check=True)
    return int(result.stderr.strip().splitlines()[-1].split()[0])


# -- status ----------------------------------------------------------------------------------------


def test_status_counts_requests_then_cache_misses_then_hits(mount, fresh_emulator, tmp_path):
    mounted = mount(None, "--memory-cache-size", "64M")
    root = mounted.path / "basespace"
    files = {f["Path"]: f for _, container, f in sampledata.iter_files(sampledata.load(fresh_emulator.data_dir / "basespace"))
             if container["Name"] == "BWA Alignment S1"}
    bam = files["Alignment/S1.bam"]
    index = files["Alignment/S1.bam.bai"]["Size"]  # opening the BAM fetches the index beside it too

    first = status(mounted.path)
    assert first["mountpoint"] == str(mounted.path) and first["pid"] == mounted.daemon_pid()
    assert first["config"]["source"] == str(tmp_path / "config0.toml")
    assert first["config"]["cache_dir"] == str(tmp_path / "cache0") and first["config"]["memory_cache_size"] == 64 * MiB
    platform = first["platforms"]["basespace"]
    assert platform["kind"] == "basespace" and platform["url"] == f"{fresh_emulator.url}/basespace"
    assert platform["requests"] >= 1, "the token was checked before mounting"
    assert (platform["errors"], platform["last_error"]) == (0, "")
    assert (first["cache"]["hits"], first["cache"]["misses"], first["cache"]["bytes_fetched"]) == (0, 0, 0)
    assert first["uploads"] == {"pending": [], "remembered": 0}
    assert 0 < first["cache"]["memory_resident"] and first["cache"]["memory_bound"] == 64 * MiB

    api_before = fresh_emulator.stats()["api_requests"]
    os.listdir(root / "Projects/Tumor-Normal WGS/AppResults")
    listed = status(mounted.path)
    asked = fresh_emulator.stats()["api_requests"] - api_before
    assert asked > 0 and listed["platforms"]["basespace"]["requests"] == platform["requests"] + asked, \
        "every API request the emulator answered is counted"

    assert dd_direct(root / BAM) == bam["Size"]
    cold = status(mounted.path)["cache"]
    assert cold["misses"] > 0, "a cold read waits for the network"
    assert (cold["bytes_fetched"], cold["bytes_served"]) == (bam["Size"] + index, bam["Size"])
    assert cold["disk_used"] >= bam["Size"]

    assert dd_direct(root / BAM) == bam["Size"]
    warm = status(mounted.path)
    assert warm["cache"]["misses"] == cold["misses"], "nothing waited: every block was cached"
    assert warm["cache"]["hits"] > cold["hits"]
    assert warm["cache"]["bytes_fetched"] == bam["Size"] + index and warm["cache"]["bytes_served"] == 2 * bam["Size"]
    assert warm["platforms"]["basespace"]["bytes_received"] >= bam["Size"]

    # For people: the same figures as a table.
    table = run_omicsfs("status", str(mounted.path)).stdout
    cache = warm["cache"]
    assert f"reads {cache['hits']} hits, {cache['misses']} misses" in table
    assert table.splitlines()[0].startswith(f"omicsfs {warm['version']} at {mounted.path}: up ")
    assert "basespace" in table and "of 10.0 GiB" in table


def test_status_watch_draws_again_until_interrupted(mount):
    mounted = mount()
    # SIGINT as a terminal's Ctrl-C sends it, which a process started in the background by a
    # shell would ignore (and its children with it): set back to the default for this one.
    watcher = subprocess.Popen([*OMICSFS, "status", str(mounted.path), "--json", "--watch", "0.2"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    snapshots = [json.loads(watcher.stdout.readline()) for _ in range(3)]
    watcher.send_signal(signal.SIGINT)
    assert watcher.wait(timeout=30) == 0, watcher.stderr.read()
    uptimes = [snapshot["uptime"] for snapshot in snapshots]
    assert uptimes == sorted(uptimes) and uptimes[-1] - uptimes[0] >= 0.4, "one line per snapshot, every 0.2 s"


def test_status_shows_an_upload_in_flight_and_its_progress(bs_mount, bs, tmp_path):
    mounted, root = bs_mount()
    files = new_place(root)
    source = tmp_path / "in-flight.bin"
    source.write_bytes(os.urandom(24 * MiB))
    bs.knobs(part_faults=[{"fault": "slow", "seconds": 1.5, "count": 1000}])  # every part takes 1.5 s
    copy = subprocess.Popen(["cp", str(source), str(files)], stderr=subprocess.PIPE, text=True)
    path = str((files / "in-flight.bin").relative_to(mounted.path))
    seen = []
    while copy.poll() is None:
        pending = status(mounted.path)["uploads"]["pending"]
        seen += [upload for upload in pending if upload["path"] == path]
        time.sleep(0.2)
    assert copy.returncode == 0, copy.stderr.read()
    assert seen, "the upload was seen while cp waited for it"
    assert {upload["platform"] for upload in seen} == {"basespace"} and {upload["size"] for upload in seen} == {24 * MiB}
    confirmed = [upload["bytes_confirmed"] for upload in seen]
    assert confirmed == sorted(confirmed), "progress only grows"
    assert any(0 < upload["bytes_confirmed"] < 24 * MiB and upload["sending"] for upload in seen), \
        "caught with some parts confirmed and more on their way"
    assert all(upload["progress"] == upload["bytes_confirmed"] / (24 * MiB) for upload in seen)
    assert all(upload["error"] == "" and upload["failures"] == 0 for upload in seen)
    done = status(mounted.path)
    assert done["uploads"]["pending"] == [] and bs.stats()["uploads_completed"] == 1
    assert md5sums([files / "in-flight.bin"]) == {files / "in-flight.bin": md5sums([source])[source]}


def test_status_says_why_an_upload_failed(bs_mount, bs, tmp_path):
    mounted, root = bs_mount()
    files = new_place(root)
    source = tmp_path / "refused.txt"
    source.write_bytes(b"refused\n" * 100)
    # BaseSpace refuses the file (a whole file is part 1) with a 400 and its own message.
    bs.knobs(part_faults=[{"part": 1, "fault": "status", "status": 400, "count": 100}])
    copy = subprocess.run(["cp", str(source), str(files)], capture_output=True, text=True)
    assert copy.returncode != 0 and "Input/output error" in copy.stderr
    now = status(mounted.path)
    (upload,) = now["uploads"]["pending"]
    assert upload["path"] == str((files / "refused.txt").relative_to(mounted.path)) and upload["failures"] >= 1
    for error in (upload["error"], now["platforms"]["basespace"]["last_error"]):
        assert "answered 400" in error and "injected failure of part 1" in error, error
    assert now["platforms"]["basespace"]["errors"] >= 1
    table = run_omicsfs("status", str(mounted.path)).stdout
    assert f"basespace: last error: {now['platforms']['basespace']['last_error']}" in table
    assert f"last: {upload['error']}" in table


# -- refresh -----------------------------------------------------------------------------------------


def test_refresh_shows_a_file_added_on_the_platform_before_the_ttl_and_recursive_reaches_below(bs_mount, bs):
    mounted, root = bs_mount()
    files = new_place(root)
    (files / "first.txt").write_text("first\n")
    (files / "sub").mkdir()
    (files / "sub" / "one.txt").write_text("one\n")
    appresult_id = (files.parent / ".id").read_text().strip()
    assert sorted(os.listdir(files)) == ["first.txt", "sub"] and os.listdir(files / "sub") == ["one.txt"]
    assert not (files / "late.txt").exists(), "the kernel now remembers the name as absent"

    add_on_the_platform(bs, appresult_id, "late.txt", b"added behind the mount's back\n")
    add_on_the_platform(bs, appresult_id, "deep.txt", b"deeper\n", directory="sub")
    assert sorted(os.listdir(files)) == ["first.txt", "sub"] and not (files / "late.txt").exists(), "the TTL holds"

    refreshed = run_omicsfs("refresh", str(files))
    assert f"refreshed {files}: " in refreshed.stdout and "  + late.txt\n" in refreshed.stdout
    # Opened by name before any listing: the kernel forgot that the name was absent.
    assert (files / "late.txt").read_bytes() == b"added behind the mount's back\n"
    assert sorted(os.listdir(files)) == ["first.txt", "late.txt", "sub"]
    assert os.listdir(files / "sub") == ["one.txt"], "without --recursive, the subdirectory's listing stays"

    assert not (files / "sub" / "deep.txt").exists()

    project = files.parent.parent.parent
    refreshed = run_omicsfs("refresh", str(project), "--recursive")
    assert f"refreshed {project}: " in refreshed.stdout and f"refreshed {files / 'sub'}: " in refreshed.stdout
    assert "  + deep.txt\n" in refreshed.stdout
    assert (files / "sub" / "deep.txt").read_bytes() == b"deeper\n"
    assert sorted(os.listdir(files / "sub")) == ["deep.txt", "one.txt"]


def test_refresh_refuses_what_it_cannot_refresh(mount, tmp_path):
    root = mount().path / "basespace"
    missing = run_omicsfs("refresh", str(root / "Projects/nothing here"), check=False)
    assert missing.returncode == 1 and "no such file or directory" in missing.stderr
    a_file = run_omicsfs("refresh", str(root / BAM), check=False)
    assert a_file.returncode == 1 and "not a directory (refresh the directory that holds it)" in a_file.stderr
    outside = run_omicsfs("refresh", str(tmp_path), check=False)
    assert outside.returncode == 1 and "is not inside an omicsfs mount" in outside.stderr


# -- who may ask -------------------------------------------------------------------------------------




def test_only_the_owner_may_ask_even_where_others_may_read(fresh_emulator, shared_dir, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(toml_config({"basespace": platform_table(fresh_emulator, "basespace")}))
    config.chmod(0o600)
    mountpoint, log = shared_dir / "omics", tmp_path / "omicsfs.log"
    mountpoint.mkdir()
    run_omicsfs("mount", str(mountpoint), "--config", str(config), "--cache-dir", str(tmp_path / "cache"), "--log-file", str(log),
                "--allow-other")
    try:
        # allow_other: another user reads the mount...
        listing = subprocess.run([*NOBODY, "ls", str(mountpoint / "basespace")], capture_output=True, text=True)
        assert listing.returncode == 0 and listing.stdout.split() == ["BioSamples", "Projects", "Runs"], listing.stderr
        # ...and may not ask its daemon anything.
        for command in (["status", str(mountpoint)], ["refresh", str(mountpoint / "basespace")]):
            refused = subprocess.run([*NOBODY, *OMICSFS, *command], capture_output=True, text=True, timeout=60)
            assert refused.returncode == 1, refused.stderr
            assert "cannot reach its daemon" in refused.stderr and "Permission denied" in refused.stderr, refused.stderr
        assert status(mountpoint)["config"]["allow_other"] is True, "the owner may"
    finally:
        run_omicsfs("unmount", str(mountpoint))
    assert_no_secrets(log, [fresh_emulator.token])
