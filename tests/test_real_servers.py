"""Where the platforms' real servers differ from a kind emulator: Django's slash redirects, endpoints
an installation lacks, tokens that change while mounted. Real mounts, the emulator made as strict."""

from __future__ import annotations

import errno
import os
import subprocess

import httpx
import pytest

from omicsfs.mount import is_mounted
from tests.conftest import assert_no_secrets, platform_table, run_omicsfs, toml_config

ISABL_PROJECTS = ["BRCA-WGS-2023", "PANEL-PILOT-2022"]
BAM = "Projects/Tumor-Normal WGS/AppResults/BWA Alignment S1/Files/Alignment/S1.bam"


def isabl(emulator) -> dict:
    return {"isabl": platform_table(emulator, "isabl")}


# -- Isabl behind Django ----------------------------------------------------------------------------


def test_isabl_emulator_answers_unslashed_paths_as_django_does(fresh_emulator):
    answer = httpx.get(f"{fresh_emulator.url}/isabl/api/v1/projects", params={"limit": 1},
                       headers={"Authorization": f"Token {fresh_emulator.token}"})
    assert answer.status_code == 301
    assert answer.headers["location"] == "/isabl/api/v1/projects/?limit=1"
    assert answer.content == b""


def test_isabl_mounts_behind_django_without_a_redirect_per_request(mount, fresh_emulator):
    root = mount(isabl(fresh_emulator)).path / "isabl"
    found = subprocess.run(["find", str(root / "projects" / "BRCA-WGS-2023")], capture_output=True, text=True)
    assert found.returncode == 0 and found.stderr == ""
    assert sorted(os.listdir(root / "projects")) == ISABL_PROJECTS
    assert len(found.stdout.splitlines()) > 20
    # The canonical paths are asked: no listing costs a redirect. (The emulator counts a 301 as an
    # API request; the slashed requests alone account for all of them when none was redirected.)
    stats = fresh_emulator.stats()
    assert stats["redirects"] == 0


def test_isabl_without_rest_auth_user_checks_the_token_with_projects(mount, fresh_emulator, tmp_path):
    fresh_emulator.knobs(absent_prefixes=["/isabl/api/v1/rest-auth/user"])
    mounted = mount(isabl(fresh_emulator))
    assert sorted(os.listdir(mounted.path / "isabl" / "projects")) == ISABL_PROJECTS
    assert "checking the token with projects/ instead" in mounted.log.read_text()
    # A wrong token is still a refused token, with the clear message.
    config = tmp_path / "wrong.toml"
    config.write_text(toml_config({"isabl": platform_table(fresh_emulator, "isabl", token="not-the-token")}))
    config.chmod(0o600)
    mountpoint = tmp_path / "wrong"
    mountpoint.mkdir()
    result = run_omicsfs("mount", str(mountpoint), "--config", str(config), "--log-file", str(tmp_path / "wrong.log"), check=False)
    assert result.returncode != 0
    assert "rejected the API token (HTTP 401)" in result.stderr and "[platforms.isabl]" in result.stderr
    assert not is_mounted(mountpoint)


# -- BaseSpace without V2 ---------------------------------------------------------------------------


def test_basespace_without_v2_shows_only_what_it_can_list(mount, fresh_emulator):
    fresh_emulator.knobs(absent_prefixes=["/basespace/v2/"])
    mounted = mount()
    root = mounted.path / "basespace"
    assert sorted(os.listdir(root)) == ["Projects", "Runs"]
    assert sorted(os.listdir(root / "Projects" / "Tumor-Normal WGS")) == [".id", ".json", "AppResults", "Samples"]
    found = subprocess.run(["find", str(mounted.path)], capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert found.stderr == ""
    assert len(found.stdout.splitlines()) > 1000
    assert "no V2 API" in mounted.log.read_text()


def test_basespace_with_v2_shows_its_parts(mount, fresh_emulator):
    root = mount().path / "basespace"
    assert sorted(os.listdir(root)) == ["BioSamples", "Projects", "Runs"]
    assert sorted(os.listdir(root / "Projects" / "Tumor-Normal WGS")) == [".id", ".json", "AppResults", "AppSessions", "Datasets", "Samples"]


# -- tokens that change while mounted ---------------------------------------------------------------


def test_a_token_file_replaced_while_mounted_is_read_again(mount, fresh_emulator, tmp_path):
    token_file = tmp_path / "basespace.token"
    token_file.write_text(fresh_emulator.token + "\n")
    token_file.chmod(0o600)
    table = {"kind": "basespace", "url": f"{fresh_emulator.url}/basespace", "token_file": str(token_file)}
    mounted = mount({"basespace": table})
    root = mounted.path / "basespace"
    assert "Tumor-Normal WGS" in os.listdir(root / "Projects")

    # The platform rotates the token: the old one is refused from now on.
    fresh_emulator.knobs(token="rotated-token-7f3a")
    with pytest.raises(PermissionError) as refused:
        os.listdir(root / "Runs")
    assert refused.value.errno == errno.EACCES

    # The user puts the new token in the file: the next ls and cat succeed, without a remount.
    token_file.write_text("rotated-token-7f3a\n")
    runs = os.listdir(root / "Runs")
    assert len(runs) == 1
    with open(root / BAM, "rb") as bam:
        assert bam.read(4) == b"\x1f\x8b\x08\x04"  # BGZF
    log = mounted.log.read_text()
    assert f"read it again from token_file {token_file}" in log and "it changed, retrying" in log
    assert_no_secrets(mounted.log, [fresh_emulator.token, "rotated-token-7f3a"])
