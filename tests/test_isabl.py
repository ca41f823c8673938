"""Isabl through real mounts of the emulator: layout, bytes, genomics tools, paging and failures."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from omicsfs.emulator.isabl import Installation, rate_limit_failure, stream_prefix
from omicsfs.mount import is_mounted
from tests.conftest import platform_table, run_omicsfs, toml_config

PROJECT = "projects/BRCA-WGS-2023"
TUMOR = f"{PROJECT}/individuals/ISB_H000001/samples/ISB_H000001_T01/experiments/ISB_H000001_T01_01_WGS"
BWA = f"{TUMOR}/analyses/BWA-MEM-0.7.17-1201"
MUTECT = f"{TUMOR}/analyses/MUTECT2-4.1.0.0-1202"
BAM = f"{BWA}/ISB_H000001_T01_01_WGS.bam"
VCF = f"{MUTECT}/ISB_H000001_T01_01_WGS_vs_ISB_H000001_N01_01_WGS.somatic.vcf.gz"
REGIONS = ["chr1:100000-101000", "chr2:500000-520000", "chr3:1-5000"]


@pytest.fixture(scope="module")
def installation(emulator) -> Installation:
    return Installation(emulator.data_dir / "isabl")  # the emulator's own, already generated


def isabl(fresh_emulator, **overrides) -> dict:
    return {"isabl": platform_table(fresh_emulator, "isabl", **overrides)}


def source(installation: Installation, path: Path) -> Path:
    """The emulator's file behind a mounted result file, found by its attributes."""
    analysis = int(os.getxattr(path, "user.omicsfs.analysis"))
    key = os.getxattr(path, "user.omicsfs.result").decode()
    return installation.local_path(installation.tables["analyses"][analysis]["results"][key])


def expected_files(installation: Installation) -> dict[tuple[int, str], Path]:
    """(analysis pk, result key) → file, for every result the API can send."""
    files = {}
    for pk, analysis in installation.tables["analyses"].items():
        for key, value in analysis["results"].items():
            if isinstance(value, str) and installation.local_path(value).is_file():
                files[pk, key] = installation.local_path(value)
    return files


def walk(root: Path) -> list[Path]:
    return [Path(d, n) for d, _, names in os.walk(root) for n in names if n not in (".json", ".id")]


def tool(*command: str) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_layout_down_to_result_files(mount, fresh_emulator, installation):
    root = mount(isabl(fresh_emulator)).path / "isabl"
    assert os.listdir(root) == ["projects"]
    assert sorted(os.listdir(root / "projects")) == ["BRCA-WGS-2023", "PANEL-PILOT-2022"]
    assert sorted(os.listdir(root / PROJECT)) == [".id", ".json", "analyses", "individuals"]
    assert tool("ls", str(root / PROJECT)).split() == ["analyses", "individuals"]
    project = json.loads((root / PROJECT / ".json").read_text())
    assert project["short_title"] == "BRCA-WGS-2023" and (root / PROJECT / ".id").read_text() == f"{project['pk']}\n"
    # Only this project's individuals, though the installation holds others.
    assert sorted(os.listdir(root / PROJECT / "individuals")) == ["ISB_H000001", "ISB_H000002"]
    assert sorted(os.listdir(root / f"{PROJECT}/individuals/ISB_H000001/samples")) == ["ISB_H000001_N01", "ISB_H000001_T01"]
    sample = json.loads((root / f"{PROJECT}/individuals/ISB_H000001/samples/ISB_H000001_T01/.json").read_text())
    assert sample["category"] == "TUMOR" and sample["individual"]["system_id"] == "ISB_H000001"
    assert os.listdir(root / TUMOR / "..") == ["ISB_H000001_T01_01_WGS"]
    assert sorted(os.listdir(root / TUMOR / "analyses")) == ["BWA-MEM-0.7.17-1201", "MUTECT2-4.1.0.0-1202"]
    # Result files: paths that are files, by basename; numbers and MD5 strings are not files.
    assert sorted(os.listdir(root / BWA)) == sorted(
        [".id", ".json", "ISB_H000001_T01_01_WGS.bam", "ISB_H000001_T01_01_WGS.bam.bai", "head_job.err", "head_job.log", "head_job.sh"]
    )
    analysis = json.loads((root / BWA / ".json").read_text())
    assert analysis["results"]["mapped_reads"] == 72000 and analysis["application"]["name"] == "BWA-MEM"
    assert (root / BWA / ".id").read_text() == "1201\n"
    assert os.getxattr(root / BAM, "user.omicsfs.path").decode() == analysis["results"]["bam"]
    assert os.getxattr(root / BWA, "user.omicsfs.status").decode() == "SUCCEEDED"
    assert (root / BWA / "head_job.err").stat().st_size == 0 and (root / BWA / "head_job.err").read_bytes() == b""
    assert int((root / BAM).stat().st_mtime) == 1681218000  # `finished`: 2023-04-11T09:00:00-04:00
    # The project-level analysis: same basenames told apart by result key; a directory and a
    # file that was never written are not shown.
    assert os.listdir(root / PROJECT / "analyses") == ["COHORT-QC-1.2.0-1205"]
    assert sorted(os.listdir(root / PROJECT / "analyses/COHORT-QC-1.2.0-1205")) == sorted(
        [".id", ".json", "cohort_qc.html", "head_job.err", "head_job.log", "head_job.sh",
         "summary (coverage_summary).tsv", "summary (qc_summary).tsv"]
    )
    # The other project: a failed analysis shows its logs.
    panel = root / "projects/PANEL-PILOT-2022/individuals/ISB_H000003/samples/ISB_H000003_T01/experiments/ISB_H000003_T01_01_TD"
    failed = panel / "analyses/BWA-MEM-0.7.17-1206"
    assert os.getxattr(failed, "user.omicsfs.status").decode() == "FAILED"
    assert "fail to locate the index" in (failed / "head_job.err").read_text()


def test_every_result_file_has_the_source_size_and_md5(mount, fresh_emulator, installation):
    root = mount(isabl(fresh_emulator), "--memory-cache-size", "16M").path / "isabl"
    found = walk(root)
    expected = expected_files(installation)
    keys = {(int(os.getxattr(p, "user.omicsfs.analysis")), os.getxattr(p, "user.omicsfs.result").decode()) for p in found}
    assert keys == set(expected)
    output = tool("md5sum", "--", *map(str, found)).splitlines()
    for path, line in zip(found, output):
        local = source(installation, path)
        assert path.stat().st_size == local.stat().st_size, path
        assert line.split()[0] == md5(local), path
    assert fresh_emulator.stats()["store_bytes"] >= sum(p.stat().st_size for p in expected.values())


@pytest.fixture(scope="module")
def local_copies(installation, tmp_path_factory) -> Path:
    """The BAM/VCF and their indexes, copied out of the emulator's storage under their names."""
    directory = tmp_path_factory.mktemp("isabl-local")
    for path in expected_files(installation).values():
        if path.name.endswith((".bam", ".bai", ".vcf.gz", ".tbi")):
            shutil.copy(path, directory / path.name)
    return directory


def test_samtools_and_tabix_answer_as_on_local_copies(mount, fresh_emulator, local_copies):
    root = mount(isabl(fresh_emulator)).path / "isabl"
    bam, vcf = root / BAM, root / VCF
    local_bam, local_vcf = local_copies / bam.name, local_copies / vcf.name
    fresh_emulator.reset_stats()
    assert tool("samtools", "view", "-c", str(bam), "chr2:500000-501000") == tool("samtools", "view", "-c", str(local_bam), "chr2:500000-501000")
    # Ranged reads through the stream endpoint: one region moves a small part of the BAM.
    assert 0 < fresh_emulator.stats()["store_bytes"] < bam.stat().st_size / 4
    assert f"isabl:1201:bam:0-{bam.stat().st_size - 1}" not in fresh_emulator.stats()["store_ranges"]
    for region in REGIONS:
        mounted = tool("samtools", "view", str(bam), region)
        assert mounted and mounted == tool("samtools", "view", str(local_bam), region)
    mounted = tool("tabix", str(vcf), "chr2:1-200000")
    assert mounted and mounted == tool("tabix", str(local_vcf), "chr2:1-200000")


def test_paging_past_capped_pages(mount, fresh_emulator, installation):
    fresh_emulator.knobs(page_cap=1)
    root = mount(isabl(fresh_emulator)).path / "isabl"
    assert sorted(os.listdir(root / PROJECT / "individuals")) == ["ISB_H000001", "ISB_H000002"]
    assert sorted(os.listdir(root / f"{PROJECT}/individuals/ISB_H000002/samples")) == ["ISB_H000002_N01", "ISB_H000002_T01"]
    assert len(os.listdir(root / "projects")) == 2
    assert len(walk(root)) == len(expected_files(installation))


def test_api_base_url_works_as_well(mount, fresh_emulator):
    # `url` may be ISABL_API_URL, as isabl_cli users have it, rather than the host root.
    root = mount(isabl(fresh_emulator, url=f"{fresh_emulator.url}/isabl/api/v1/")).path / "isabl"
    assert sorted(os.listdir(root / "projects")) == ["BRCA-WGS-2023", "PANEL-PILOT-2022"]


def test_wrong_token_fails_the_mount_clearly_and_leaves_nothing_mounted(fresh_emulator, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(toml_config(isabl(fresh_emulator, token="not-the-token")))
    config.chmod(0o600)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = run_omicsfs("mount", str(mountpoint), "--config", str(config), "--log-file", str(tmp_path / "log"), check=False)
    assert result.returncode != 0
    assert "Isabl" in result.stderr and "rejected the API token" in result.stderr and "401" in result.stderr
    assert "[platforms.isabl]" in result.stderr
    assert "not-the-token" not in result.stderr
    assert not is_mounted(mountpoint)
    assert os.listdir(mountpoint) == []


def test_429_storm_is_ridden_out(mount, fresh_emulator):
    fresh_emulator.knobs(failures=[rate_limit_failure(retry_after=1, count=3)])
    root = mount(isabl(fresh_emulator)).path / "isabl"
    assert len(os.listdir(root / PROJECT / "individuals")) == 2
    stats = fresh_emulator.stats()
    assert stats["injected_failures"] == 3
    times = stats["injected_at"]  # Retry-After: 1, honoured
    assert all(later - earlier >= 0.99 for earlier, later in zip(times, times[1:])), times


def test_503_storm_in_the_middle_of_a_read_is_ridden_out(mount, fresh_emulator, installation):
    mounted = mount(isabl(fresh_emulator), "--memory-cache-size", "8M")
    bam = mounted.path / "isabl" / BAM
    digest = hashlib.md5()
    with open(bam, "rb") as file:
        digest.update(file.read(1 << 20))
        fresh_emulator.knobs(failures=[{"prefix": stream_prefix(1201), "status": 503, "count": 4}])
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == md5(source(installation, bam))
    assert fresh_emulator.stats()["injected_failures"] == 4
    assert "answered 503" in mounted.log.read_text()


def test_stream_answers_are_read_whatever_status_the_server_uses():
    # The seed does not say whether `stream` answers 206 with Content-Range: every answer works.
    from omicsfs.http import _body_offset

    def skip(status: int, headers: dict) -> int:
        return 100 - _body_offset(httpx.Response(status, headers=headers), 100, 200, by_header=False)

    assert skip(206, {"Content-Range": "bytes 100-199/1000", "Content-Length": "100"}) == 0
    assert skip(200, {"Content-Range": "bytes 100-199/1000"}) == 0
    assert skip(200, {"Content-Range": "bytes 0-999/1000"}) == 100
    assert skip(200, {"Content-Length": "1000"}) == 100, "the range was ignored: the whole file came"
    assert skip(200, {"Content-Length": "100"}) == 0, "the range was honoured without saying so"
    assert skip(200, {}) == 0
