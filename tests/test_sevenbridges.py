"""Seven Bridges through real mounts: layout, bytes, indexed tools, paging, bad token, 429, URL expiry."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from omicsfs.emulator import sevenbridges as sbg
from omicsfs.mount import is_mounted
from tests.conftest import md5sums, platform_table, run_omicsfs, toml_config

pytestmark = pytest.mark.mount

NAME = "sevenbridges"
WGS = "alice/wgs-cohort"
META = {".json", ".id"}


@pytest.fixture(scope="module")
def account(emulator) -> dict:
    """The emulator's data, as it generated it (reused, not regenerated)."""
    return sbg.generate(emulator.data_dir / "sevenbridges")


def table(emulator, **overrides) -> dict:
    return platform_table(emulator, "sevenbridges", **overrides)


def projects_dir(mounted) -> Path:
    return mounted.path / NAME / "Projects"


def files_of(account: dict, kind: str = "file") -> list[dict]:
    return [item for item in account["files"] if item["type"] == kind]


def by_path(account: dict, path: str) -> dict:
    return next(item for item in account["files"] if item["_path"] == path)


def completed_task(account: dict) -> dict:
    return next(task for task in account["tasks"] if task["status"] == "COMPLETED")


#: The tasks of alice/wgs-cohort as the mount names them: two share a name, so both carry their id.
COMPLETED_TASK = "Germline WGS HG002 (427f8818-0074-4b71-ae34-7a6883e8728b)"
FAILED_TASK = "Germline WGS HG002 (d10c541f-c7ea-41e0-8033-8b263b20873b)"
DRAFT_TASK = "Germline WGS HG003"


def task_dir(mounted, account: dict) -> Path:
    return projects_dir(mounted) / WGS / ".tasks" / COMPLETED_TASK


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def mounted_files(root: Path) -> list[tuple[str, Path]]:
    """(platform file id, path) for every file in the mount but the hidden entity metadata."""
    found = []
    for directory, _, names in os.walk(root):
        for name in names:
            if name not in META:
                path = Path(directory, name)
                found.append((os.getxattr(path, "user.omicsfs.id").decode(), path))
    return found


def test_layout(fresh_emulator, mount, account):
    mounted = mount({NAME: table(fresh_emulator, public_files=True)})
    top = projects_dir(mounted)
    assert os.listdir(mounted.path / NAME) == ["Projects"]
    assert sorted(os.listdir(top)) == ["admin", "alice", "bob"]
    assert sorted(os.listdir(top / "alice")) == ["rna-pilot", "wgs-cohort"]
    assert sorted(os.listdir(top / "admin" / "sbg-public-data")) == sorted(
        META | {"synthetic_reference.fasta", "synthetic_reference.fasta.fai"}
    )

    project = top / WGS
    assert set(os.listdir(project)) == META | {
        ".tasks", "README.md", "samplesheet.csv", "fastq", "intervals", "alignments", "variants"
    }
    shown = subprocess.run(["ls", project], capture_output=True, text=True, check=True).stdout.split()
    assert ".tasks" not in shown and ".json" not in shown and "alignments" in shown
    assert (project / ".id").read_text() == f"{WGS}\n"
    info = json.loads((project / ".json").read_text())
    assert info["id"] == WGS and info["name"] == "WGS Cohort 2024" and "root_folder" in info

    alignments = by_path(account, f"{WGS}/alignments")
    assert set(os.listdir(project / "alignments")) == META | {"HG002.bam", "HG002.bam.bai", "stats"}
    assert (project / "alignments" / ".id").read_text() == f"{alignments['id']}\n"
    assert json.loads((project / "alignments" / ".json").read_text())["type"] == "folder"
    assert set(os.listdir(project / "alignments" / "stats")) == META | {"HG002.flagstat.txt"}
    assert set(os.listdir(top / "bob" / "shared-controls" / "truth-sets")) == META  # an empty folder

    bam = by_path(account, f"{WGS}/alignments/HG002.bam")
    stat = (project / "alignments" / "HG002.bam").stat()
    assert stat.st_size == bam["size"]
    assert bam["modified_on"] == "2024-03-10T22:29:40Z" and stat.st_mtime == 1710109780
    assert os.getxattr(project / "alignments" / "HG002.bam", "user.omicsfs.id").decode() == bam["id"]

    # Two tasks share a name: both get their id; the completed one holds the outputs, indexes beside them.
    assert set(os.listdir(project / ".tasks")) == {COMPLETED_TASK, FAILED_TASK, DRAFT_TASK}
    done = task_dir(mounted, account)
    assert set(os.listdir(done)) == META | {
        "HG002.bam", "HG002.bam.bai", "HG002.vcf.gz", "HG002.vcf.gz.tbi", "HG002.flagstat.txt"
    }
    assert json.loads((done / ".json").read_text())["status"] == "COMPLETED"
    assert (done / ".id").read_text() == f"{completed_task(account)['id']}\n"
    assert json.loads((project / ".tasks" / FAILED_TASK / ".json").read_text())["status"] == "FAILED"
    assert set(os.listdir(project / ".tasks" / FAILED_TASK)) == META


def test_public_project_only_when_configured(fresh_emulator, mount):
    # The url as users know it, with /v2: the same as without.
    mounted = mount({NAME: table(fresh_emulator, url=f"{fresh_emulator.url}/sevenbridges/v2")})
    assert sorted(os.listdir(projects_dir(mounted))) == ["alice", "bob"]
    assert set(os.listdir(projects_dir(mounted) / "bob" / "shared-controls")) == META | {".tasks", "controls.tsv", "truth-sets"}


def test_sizes_and_md5_equal_the_emulators_bytes(fresh_emulator, mount, account):
    mounted = mount({NAME: table(fresh_emulator, public_files=True)})
    objects = fresh_emulator.data_dir / "sevenbridges"
    expected = {item["id"]: item for item in files_of(account)}
    found = mounted_files(mounted.path / NAME)
    # Every file once in the project tree, and the task's outputs once more under .tasks.
    in_tasks = [file_id for file_id, path in found if "/.tasks/" in str(path)]
    assert sorted(file_id for file_id, path in found if "/.tasks/" not in str(path)) == sorted(expected)
    assert len(in_tasks) == 5 and set(in_tasks) <= expected.keys()
    for file_id, path in found:
        assert path.stat().st_size == expected[file_id]["size"] == sbg.object_path(objects, file_id).stat().st_size, path
    sums = md5sums([path for _, path in found])
    for file_id, path in found:
        assert sums[path] == expected[file_id]["_md5"] == md5_of(sbg.object_path(objects, file_id)), path


def test_region_queries_equal_local_copies(fresh_emulator, mount, account, tmp_path):
    mounted = mount({NAME: table(fresh_emulator)})
    objects = fresh_emulator.data_dir / "sevenbridges"
    local = tmp_path / "local"
    local.mkdir()
    for name in ("HG002.bam", "HG002.bam.bai", "HG002.vcf.gz", "HG002.vcf.gz.tbi"):
        folder = "alignments" if ".bam" in name else "variants"
        shutil.copy(sbg.object_path(objects, by_path(account, f"{WGS}/{folder}/{name}")["id"]), local / name)
    done = task_dir(mounted, account)

    def run(*args):
        return subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout

    region = run("samtools", "view", done / "HG002.bam", "chr1:100000-200000")
    assert region and region == run("samtools", "view", local / "HG002.bam", "chr1:100000-200000")
    count = run("samtools", "view", "-c", projects_dir(mounted) / WGS / "alignments" / "HG002.bam", "chr2:500000-600000")
    assert int(count) > 0 and count == run("samtools", "view", "-c", local / "HG002.bam", "chr2:500000-600000")
    variants = run("tabix", done / "HG002.vcf.gz", "chr2:1-500000")
    assert variants and variants == run("tabix", local / "HG002.vcf.gz", "chr2:1-500000")


@pytest.mark.parametrize(("page_cap", "pages"), [(250, 2), (30, 5)])
def test_paging_past_the_100_item_cap(fresh_emulator, mount, account, page_cap, pages):
    fresh_emulator.knobs(page_cap=page_cap)
    mounted = mount({NAME: table(fresh_emulator)})
    intervals = projects_dir(mounted) / WGS / "intervals"
    os.listdir(intervals.parent)
    fresh_emulator.reset_stats()
    names = set(os.listdir(intervals)) - META
    expected = {item["name"] for item in files_of(account) if item["_path"].startswith(f"{WGS}/intervals/")}
    assert len(expected) == sbg.SCATTER_COUNT > 100
    assert names == expected
    assert fresh_emulator.stats()["api_requests"] == pages


def test_bad_token_refuses_the_mount(emulator, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(toml_config({NAME: table(emulator, token="not-the-token")}))
    config.chmod(0o600)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = run_omicsfs(
        "mount", str(mountpoint), "--config", str(config), "--cache-dir", str(tmp_path / "cache"),
        "--log-file", str(tmp_path / "omicsfs.log"), check=False,
    )
    assert result.returncode != 0
    assert "Seven Bridges" in result.stderr and "rejected the authentication token" in result.stderr
    assert f"[platforms.{NAME}]" in result.stderr
    assert not is_mounted(mountpoint)
    assert "not-the-token" not in (tmp_path / "omicsfs.log").read_text()


def test_rate_limited_requests_recover(fresh_emulator, mount, account):
    mounted = mount({NAME: table(fresh_emulator)})
    fresh_emulator.knobs(failures=[sbg.rate_limit_failure(count=3)])
    started = time.monotonic()
    names = set(os.listdir(projects_dir(mounted) / WGS / "fastq")) - META
    assert names == {item["name"] for item in files_of(account) if item["_path"].startswith(f"{WGS}/fastq/")}
    assert time.monotonic() - started > 0.5  # waited for X-RateLimit-Reset
    stats = fresh_emulator.stats()
    assert stats["injected_failures"] == 3
    times = stats["injected_at"]  # the second try waited for the reset, a second or two away (the others need not)
    assert times[1] - times[0] >= 0.5, times
    assert "429" in mounted.log.read_text()


def test_download_url_expiring_mid_read(fresh_emulator, mount, account):
    fresh_emulator.knobs(url_lifetime=2, url_expiry_skew=600)
    mounted = mount({NAME: table(fresh_emulator)}, "--memory-cache-size", "8M")
    bam = by_path(account, f"{WGS}/alignments/HG002.bam")
    digest = hashlib.md5()
    with open(projects_dir(mounted) / bam["_path"], "rb") as file:
        digest.update(file.read(256 * 1024))
        requests_before = fresh_emulator.stats()["api_requests"]
        time.sleep(3)
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == bam["_md5"]
    assert fresh_emulator.stats()["api_requests"] > requests_before  # download_info asked again
    assert "refused the download URL" in mounted.log.read_text()
