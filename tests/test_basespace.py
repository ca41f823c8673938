"""BaseSpace V1 through real mounts of the emulator: layout, bytes, genomics tools, quirks and failures."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from omicsfs.emulator import sampledata
from omicsfs.emulator.basespace import rate_limit_failure
from omicsfs.mount import is_mounted
from tests.conftest import md5sums, platform_table, run_omicsfs, toml_config

WGS = "Projects/Tumor-Normal WGS/AppResults/BWA Alignment S1/Files"
ARCHIVE = "Projects/Tumor-Normal WGS/AppResults/Archive/Files/Archive/reportarchive.bin"
REGIONS = ["chr1:100000-101000", "chr2:500000-520000", "chr3:1-5000"]


@pytest.fixture(scope="module")
def account(emulator) -> dict:
    return sampledata.load(emulator.data_dir / "basespace")


def source_path(emulator, file_id: str) -> Path:
    return sampledata.object_path(emulator.data_dir / "basespace", file_id)


def mounted_files(root: Path) -> dict[str, list[Path]]:
    """Platform file id → its paths in the mount, for every file but the hidden entity metadata."""
    files: dict[str, list[Path]] = {}
    for directory, _, names in os.walk(root):
        for name in names:
            if name in (".json", ".id"):
                continue
            path = Path(directory, name)
            files.setdefault(os.getxattr(path, "user.omicsfs.id").decode(), []).append(path)
    return files


def tool(*command: str) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def test_layout_as_basemount_users_know_it(mount, account):
    root = mount().path / "basespace"
    assert sorted(os.listdir(root)) == ["BioSamples", "Projects", "Runs"]
    projects = sorted(os.listdir(root / "Projects"))
    assert projects == ["Exome 2024∕Q3", "RNA Pilot (1863987)", "RNA Pilot (1864263)", "Tumor-Normal WGS"], (
        "same-named projects both appear, told apart by id; a slash is made safe"
    )
    entities = ["AppResults", "AppSessions", "Datasets", "Samples"]
    assert sorted(os.listdir(root / "Projects/Tumor-Normal WGS")) == [".id", ".json", *entities]
    assert tool("ls", str(root / "Projects/Tumor-Normal WGS")).split() == entities
    assert ".json" in tool("ls", "-a", str(root / "Projects/Tumor-Normal WGS")).split()
    project = next(p for p in account["projects"] if p["Name"] == "Tumor-Normal WGS")
    answer = json.loads((root / "Projects/Tumor-Normal WGS/.json").read_text())
    assert answer["Id"] == project["Id"] and answer["Href"] == f"v1pre3/projects/{project['Id']}"
    assert (root / "Projects/Tumor-Normal WGS/.id").read_text().strip() == project["Id"]
    sample = project["samples"][0]
    assert sorted(os.listdir(root / f"Projects/Tumor-Normal WGS/Samples/{sample['Name']}/Files")) == sorted(
        f["Name"] for f in sample["files"]
    )
    bam = root / WGS / "Alignment/S1.bam"
    bam_item = next(f for _, _, f in sampledata.iter_files(account) if f["Path"] == "Alignment/S1.bam")
    assert os.getxattr(bam, "user.omicsfs.id").decode() == bam_item["Id"]
    assert os.getxattr(bam, "user.omicsfs.href").decode() == f"v1pre3/files/{bam_item['Id']}"
    # Runs: the list items carry no Name, the run's real name is shown.
    (run,) = account["runs"]
    assert os.listdir(root / "Runs") == [run["Name"]]
    basecalls = root / "Runs" / run["Name"] / "Files/Data/Intensities/BaseCalls/L001"
    assert len(os.listdir(basecalls)) == 151
    assert sorted(os.listdir(basecalls / "C1.1")) == sorted(os.listdir(basecalls / "C151.1"))
    # Dates with 7 fractional digits are read to the microsecond; without a zone, as UTC.
    assert bam_item["DateCreated"] == "2023-06-02T23:36:40.0521944Z"
    assert bam.stat().st_mtime == pytest.approx(1685749000.052194, abs=1e-6)
    run_info = root / "Runs" / run["Name"] / "Files/RunInfo.xml"
    assert run["files"][0]["DateCreated"] == "2022-11-03T00:33:25.0000000"
    assert run_info.stat().st_mtime == 1667435605


def test_ls_l_makes_no_request_per_file(mount, fresh_emulator):
    root = mount().path / "basespace"
    run_files = next((root / "Runs").iterdir()) / "Files/Data/Intensities/BaseCalls/L001/C7.1"
    os.listdir(run_files.parent.parent)  # list the run's files once
    before = fresh_emulator.stats()["api_requests"]
    listing = tool("ls", "-l", str(run_files))
    assert len(listing.splitlines()) == 9  # "total" and 8 tiles, each with its size
    assert fresh_emulator.stats()["api_requests"] == before


def test_every_file_has_the_source_size_and_md5(mount, emulator, account):
    root = mount(None, "--memory-cache-size", "16M").path
    files = mounted_files(root / "basespace")
    expected = {f["Id"]: f for _, _, f in sampledata.iter_files(account)}
    assert files.keys() == expected.keys()
    paths = [path for places in files.values() for path in places]
    for file_id, places in files.items():
        for path in places:
            assert path.stat().st_size == expected[file_id]["Size"], path
    sums = md5sums(paths)
    mismatched = [str(path) for file_id, places in files.items() for path in places if sums[path] != expected[file_id]["Md5"]]
    assert not mismatched
    large = root / "basespace" / ARCHIVE
    assert hashlib.md5(source_path(emulator, os.getxattr(large, "user.omicsfs.id").decode()).read_bytes()).hexdigest() == sums[large]
    # V2 shows V1's files again (datasets are samples and app results): every file in both places.
    fastq = next(f for _, _, f in sampledata.iter_files(account) if f["Name"].endswith(".fastq.gz"))
    assert len(files[fastq["Id"]]) >= 3, "Samples/…/Files, Datasets/…, BioSamples/…"


@pytest.fixture(scope="module")
def local_copies(emulator, account, tmp_path_factory) -> Path:
    """The BAM/VCF and their indexes, copied out of the emulator's store under their real names."""
    directory = tmp_path_factory.mktemp("local")
    for _, _, item in sampledata.iter_files(account):
        if item["Path"].startswith(("Alignment/", "Variants/")):
            shutil.copy(source_path(emulator, item["Id"]), directory / item["Name"])
    return directory


def test_samtools_and_tabix_answer_as_on_local_copies(mount, local_copies):
    root = mount().path / "basespace" / WGS
    bam, vcf = root / "Alignment/S1.bam", root / "Variants/S1.vcf.gz"
    assert tool("samtools", "view", "-c", str(bam)) == tool("samtools", "view", "-c", str(local_copies / "S1.bam"))
    for region in REGIONS:
        mounted = tool("samtools", "view", str(bam), region)
        assert mounted and mounted == tool("samtools", "view", str(local_copies / "S1.bam"), region)
    mounted = tool("tabix", str(vcf), "chr2:1-200000")
    assert mounted and mounted == tool("tabix", str(local_copies / "S1.vcf.gz"), "chr2:1-200000")


def test_region_query_fetches_a_small_part_of_the_bam(mount, fresh_emulator, account):
    root = mount().path / "basespace" / WGS
    bam_size = (root / "Alignment/S1.bam").stat().st_size
    fresh_emulator.reset_stats()
    tool("samtools", "view", "-c", str(root / "Alignment/S1.bam"), "chr2:500000-501000")
    fetched = fresh_emulator.stats()["store_bytes"]
    assert 0 < fetched < bam_size / 4, f"{fetched} bytes fetched of a {bam_size}-byte BAM for one region"


def test_paging_past_1000_files_with_capped_pages(mount, fresh_emulator, account):
    fresh_emulator.knobs(page_cap=7)
    root = mount().path / "basespace"
    (run,) = account["runs"]
    found = [Path(d, n) for d, _, names in os.walk(root / "Runs" / run["Name"] / "Files") for n in names if n != ".json"]
    assert len(run["files"]) > 1000
    assert len(found) == len(run["files"])
    assert len(os.listdir(root / "Projects")) == len(account["projects"])
    assert fresh_emulator.stats()["api_requests"] >= len(run["files"]) // 7


def test_names_do_not_depend_on_the_order_of_listings(mount, fresh_emulator):
    def names(root: Path) -> list[str]:
        projects = root / "basespace/Projects"
        return sorted(str(Path(d, n).relative_to(projects)) for d, _, files in os.walk(projects) for n in files)

    first = names(mount().path)
    fresh_emulator.knobs(reverse_lists=True)  # every list, V1 and V2, comes the other way round
    second = names(mount().path)
    assert first == second
    assert "RNA Pilot (1863987)/Samples/S1/Files/S1_L001_R1_001.fastq.gz" in first
    assert "RNA Pilot (1864263)/Samples/S1/Files/S1_L001_R1_001.fastq.gz" in first


def test_url_that_expires_in_the_middle_of_a_read(mount, fresh_emulator, emulator):
    # URLs die after 2 s although BaseSpace says they live 10 minutes longer: the store's 403
    # must make the client resolve a new URL, mid-read, without failing the read.
    fresh_emulator.knobs(url_lifetime=2, url_expiry_skew=600)
    mounted = mount(None, "--memory-cache-size", "8M")
    large = mounted.path / "basespace" / ARCHIVE
    digest = hashlib.md5()
    with open(large, "rb") as file:
        digest.update(file.read(8 << 20))
        time.sleep(3)
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    expected = source_path(emulator, os.getxattr(large, "user.omicsfs.id").decode()).read_bytes()
    assert digest.hexdigest() == hashlib.md5(expected).hexdigest()
    assert "refused the download URL (403)" in mounted.log.read_text()


def test_429_storm_is_ridden_out(mount, fresh_emulator, account):
    root = mount().path / "basespace"
    # After the mount, whose token checks go out together: the listing is then the one request.
    fresh_emulator.knobs(failures=[rate_limit_failure(retry_after=1, count=3)])
    assert len(os.listdir(root / "Projects")) == len(account["projects"])
    stats = fresh_emulator.stats()
    assert stats["injected_failures"] == 3
    # X-Retry-After: 1 was honoured: the server saw each try at least a second after the last.
    times = stats["injected_at"]
    assert all(later - earlier >= 0.99 for earlier, later in zip(times, times[1:])), times


def test_store_5xx_storm_is_ridden_out(mount, fresh_emulator, emulator):
    root = mount().path / "basespace" / WGS
    fresh_emulator.knobs(failures=[{"prefix": "/store", "status": 503, "count": 3}])
    # The index, not the VCF: opening a file with an index beside it sends several requests at
    # once (its end, the index), and the storm would be spread over them; here one request retries.
    data = (root / "Variants/S1.vcf.gz.tbi").read_bytes()
    expected = source_path(emulator, os.getxattr(root / "Variants/S1.vcf.gz.tbi", "user.omicsfs.id").decode()).read_bytes()
    assert data == expected
    stats = fresh_emulator.stats()
    assert stats["injected_failures"] == 3
    # Backed off between tries: at least half of 0.2 s, 0.4 s (SEMANTICS), then 0.8 s before the try that worked.
    times = stats["injected_at"]
    assert [later - earlier >= least for earlier, later, least in zip(times, times[1:], (0.1, 0.2))] == [True, True], times


def test_missing_file_is_enoent_and_platform_errors_are_logged(mount, fresh_emulator):
    mounted = mount()
    root = mounted.path / "basespace"
    with pytest.raises(FileNotFoundError):
        (root / "Projects/No such project").stat()
    vcf = root / WGS / "Variants/S1.vcf.gz"
    os.listdir(vcf.parent)
    # The kernel retries a failed readahead with a plain read: fail more often than that.
    fresh_emulator.knobs(failures=[{"prefix": "/basespace", "status": 404, "count": 20}])
    with pytest.raises(FileNotFoundError):
        vcf.read_bytes()
    fresh_emulator.knobs(failures=[{"prefix": "/store", "status": 403, "count": 20}])
    with pytest.raises(PermissionError):
        (root / WGS / "Variants/S1.vcf.gz.tbi").read_bytes()
    log = mounted.log.read_text()
    # Each failure logged with the path in the mount and the platform's answer.
    assert re.search(r"BWA Alignment S1/Files/Variants/S1\.vcf\.gz: read of \d+ bytes at 0 failed: .* answered 404 Not Found", log)
    assert re.search(r"BWA Alignment S1/Files/Variants/S1\.vcf\.gz\.tbi: read of \d+ bytes at 0 failed: .* answered 403 Forbidden", log)


def test_wrong_token_fails_the_mount_clearly_and_leaves_nothing_mounted(fresh_emulator, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(toml_config({"basespace": platform_table(fresh_emulator, "basespace", token="not-the-token")}))
    config.chmod(0o600)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = run_omicsfs("mount", str(mountpoint), "--config", str(config), "--log-file", str(tmp_path / "log"), check=False)
    assert result.returncode != 0
    assert "rejected the access token" in result.stderr and "401" in result.stderr
    assert "not-the-token" not in result.stderr
    assert not is_mounted(mountpoint)
    assert os.listdir(mountpoint) == []


def test_daemon_memory_stays_within_the_cache_size(mount, emulator):
    mounted = mount(None, "--memory-cache-size", "16M")
    large = mounted.path / "basespace" / ARCHIVE
    pid = mounted.daemon_pid()

    def resident_kib() -> int:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))

    os.listdir(large.parent)
    baseline = resident_kib()
    subprocess.run(["cat", str(large)], stdout=subprocess.DEVNULL, check=True)
    grown = resident_kib() - baseline
    # The 16 MiB memory cache, plus at most a few blocks in flight per request and allocator slack.
    assert grown < 16 * 1024 + 24 * 1024, f"the daemon grew by {grown} KiB reading a 64 MiB file"
    assert large.stat().st_size > 3 * 16 * 1024 * 1024


def test_v2_datasets_appsessions_biosamples_and_quota(mount, fresh_emulator, account, local_copies):
    fresh_emulator.knobs(page_cap=1)  # every V2 list, and every directory's files, come one per page
    root = mount().path / "basespace"
    project = root / "Projects/Tumor-Normal WGS"
    wgs = next(p for p in account["projects"] if p["Name"] == "Tumor-Normal WGS")
    expected = sorted([s["Name"] for s in wgs["samples"]] + [a["Name"] for a in wgs["appresults"]])
    assert sorted(os.listdir(project / "Datasets")) == expected
    dataset = project / "Datasets/BWA Alignment S1"
    assert sorted(os.listdir(dataset)) == [".id", ".json", "Alignment", "Variants"]
    assert json.loads((dataset / ".json").read_text())["DatasetType"]["Id"] == "common.files"
    region = "chr1:100000-101000"
    assert tool("samtools", "view", str(dataset / "Alignment/S1.bam"), region) == tool(
        "samtools", "view", str(local_copies / "S1.bam"), region
    )
    sessions = sorted(os.listdir(project / "AppSessions"))
    assert sessions == ["Archive 06∕02∕2023 11:58:02", "BWA Alignment S1 06∕01∕2023 22:07:22"]  # slashes made safe
    logs = project / "AppSessions" / sessions[0] / "Logs"
    assert sorted(os.listdir(logs)) == ["Workflow", "stderr.txt", "stdout.txt"]
    assert "started for" in (logs / "stdout.txt").read_text()
    # A biosample per sample name; its datasets come from every project that sequenced it.
    sample_names = {s["Name"] for p in account["projects"] for s in p["samples"]}
    assert sorted(os.listdir(root / "BioSamples")) == sorted(sample_names)
    s1_datasets = os.listdir(root / "BioSamples/S1")
    assert len([n for n in s1_datasets if n.startswith("S1")]) == sum(
        1 for p in account["projects"] for s in p["samples"] if s["Name"] == "S1"
    )
    # df shows the account's quota and usage (StorageStatistics).
    statistics = account["user"]["StorageStatistics"]
    usage = os.statvfs(root)
    assert usage.f_blocks * usage.f_frsize == statistics["Quota"] // usage.f_frsize * usage.f_frsize
    assert (usage.f_blocks - usage.f_bfree) * usage.f_frsize == pytest.approx(statistics["TotalSize"], rel=1e-3)


@pytest.mark.mount  # runs `omicsfs mount`, which tries the platform 8 times
def test_unreachable_platform_fails_the_mount_clearly(tmp_path):
    from omicsfs.emulator.server import free_port

    config = tmp_path / "config.toml"
    url = f"http://127.0.0.1:{free_port()}/basespace"  # nothing listens there
    config.write_text(toml_config({"basespace": {"kind": "basespace", "url": url, "token": "t"}}))
    config.chmod(0o600)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = run_omicsfs("mount", str(mountpoint), "--config", str(config), "--log-file", str(tmp_path / "log"), check=False)
    assert result.returncode != 0
    assert f"BaseSpace at {url} did not answer" in result.stderr and "[platforms.basespace]" in result.stderr
    assert not is_mounted(mountpoint)


def test_the_daemon_forgets_what_the_kernel_forgets(mount, account):
    mounted = mount()
    runs = mounted.path / "basespace" / "Runs"
    walk = [Path(d, n) for d, _, names in os.walk(runs) for n in names]
    assert len(walk) > 1000
    assert os.statvfs(mounted.path).f_files > 1000  # an inode for every name the walk met
    # The kernel drops its dentry and inode caches (as under memory pressure) and tells the
    # daemon, which drops its nodes too: its memory follows the kernel's caches, not the tree.
    Path("/proc/sys/vm/drop_caches").write_text("2")
    deadline = time.monotonic() + 30
    while os.statvfs(mounted.path).f_files > 100 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert os.statvfs(mounted.path).f_files <= 100
    # Nothing is lost: the same walk finds the same files, and their bytes.
    assert sorted(Path(d, n) for d, _, names in os.walk(runs) for n in names) == sorted(walk)
    # Names the kernel looked up one by one (not listed) are forgotten as well.
    Path("/proc/sys/vm/drop_caches").write_text("2")
    for path in walk[::3]:
        path.stat()
    assert os.statvfs(mounted.path).f_files > 300
    Path("/proc/sys/vm/drop_caches").write_text("2")
    deadline = time.monotonic() + 30
    while os.statvfs(mounted.path).f_files > 100 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert os.statvfs(mounted.path).f_files <= 100
    (run,) = account["runs"]
    info = next(f for f in run["files"] if f["Name"] == "RunInfo.xml")
    assert hashlib.md5((runs / run["Name"] / "Files/RunInfo.xml").read_bytes()).hexdigest() == info["Md5"]
