"""`omicsfs login` against the emulators: BaseSpace's device flow, a hidden prompt, Isabl's username and password.

Each login runs the real command; the person is played by the test: it approves or denies the
code on the emulator's verification page, or types into a pseudo-terminal, which shows whether
the terminal echoed what was typed.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import stat
import subprocess
import termios
import time
from pathlib import Path

import httpx
import pytest

from omicsfs.emulator.basespace import CLIENT_ID, CLIENT_SECRET
from omicsfs.emulator.isabl import PASSWORD
from omicsfs.errors import ConfigError
from omicsfs.login import with_token_file
from omicsfs.mount import is_mounted
from tests.conftest import OMICSFS, run_omicsfs, toml_config

POLL = 0.2  # the device flow's poll interval in these tests, in seconds


def basespace_table(emulator, **extra) -> dict:
    """A table as a site writes it before anyone logged in: its BaseSpace app, no token."""
    return {"kind": "basespace", "url": f"{emulator.url}/basespace", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **extra}


def write_config(directory: Path, platforms: dict[str, dict]) -> tuple[Path, str]:
    directory.mkdir(exist_ok=True)
    config = directory / "config.toml"
    text = "# the lab's accounts\n" + toml_config(platforms)
    config.write_text(text)
    config.chmod(0o600)
    return config, text


def start_login(config: Path, name: str) -> subprocess.Popen:
    return subprocess.Popen([*OMICSFS, "login", name, "--config", str(config)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def shown_code(login: subprocess.Popen) -> str:
    """The user code, from the lines the login shows the person."""
    shown = []
    while True:
        line = login.stdout.readline()
        assert line, f"the login ended before showing a code: {''.join(shown)}{login.stderr.read()}"
        shown.append(line)
        found = re.search(r"enter the code (\w+)\.", line)
        if found:
            return found.group(1)


def wait_for_poll(emulator, answer: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while answer not in emulator.stats()["token_polls"]:
        assert time.monotonic() < deadline, f"no poll was answered {answer}: {emulator.stats()['token_polls']}"
        time.sleep(0.05)


def decide(emulator, user_code: str, action: str) -> None:
    """What the person's click on the verification page does."""
    httpx.post(f"{emulator.url}/basespace/oauth/device", data={"user_code": user_code, "action": action}, timeout=10).raise_for_status()


def test_device_flow_pending_then_approved_writes_a_private_token_that_mounts(fresh_emulator, tmp_path):
    fresh_emulator.knobs(device_poll_interval=POLL)
    config_dir = tmp_path / "omicsfs config"
    config, text = write_config(config_dir, {"basespace": basespace_table(fresh_emulator)})
    login = start_login(config, "basespace")
    code = shown_code(login)
    wait_for_poll(fresh_emulator, "authorization_pending")
    decide(fresh_emulator, code, "approve")
    out, err = login.communicate(timeout=60)
    assert login.returncode == 0, err
    polls = fresh_emulator.stats()["token_polls"]
    assert polls[-1] == "access_token" and set(polls[:-1]) == {"authorization_pending"}, polls

    token_file = config_dir / "basespace.token"
    assert token_file.read_text() == fresh_emulator.token + "\n"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    # The table names the file now; the rest of the configuration is as it was, comments included.
    assert config.read_text() == text.replace('[platforms."basespace"]\n', f'[platforms."basespace"]\ntoken_file = "{token_file}"\n')
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert fresh_emulator.token not in out + err
    assert f"the token was accepted and is saved in {token_file}" in out

    mountpoint = tmp_path / "omics"
    mountpoint.mkdir()
    run_omicsfs("mount", str(mountpoint), "--config", str(config), "--cache-dir", str(tmp_path / "cache"),
                "--log-file", str(tmp_path / "omicsfs.log"))
    try:
        assert sorted(os.listdir(mountpoint / "basespace")) == ["BioSamples", "Projects", "Runs"]
    finally:
        run_omicsfs("unmount", str(mountpoint))
    assert not is_mounted(mountpoint)


@pytest.mark.parametrize("ending", ["denied", "expired"])
def test_a_denied_or_expired_code_fails_with_a_clear_message_and_writes_nothing(fresh_emulator, tmp_path, ending):
    fresh_emulator.knobs(device_poll_interval=POLL, **({"device_code_lifetime": 1.5} if ending == "expired" else {}))
    config_dir = tmp_path / "config"
    config, text = write_config(config_dir, {"basespace": basespace_table(fresh_emulator)})
    login = start_login(config, "basespace")
    code = shown_code(login)
    if ending == "denied":
        wait_for_poll(fresh_emulator, "authorization_pending")
        decide(fresh_emulator, code, "deny")
    out, err = login.communicate(timeout=60)
    assert login.returncode == 1
    expected = ("the request was denied at" if ending == "denied" else f"the code {code} expired before it was approved")
    assert f"omicsfs: basespace: BaseSpace login: {expected}" in err and "nothing was saved" in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in config_dir.iterdir()) == ["config.toml"], "no token file, no temporary file"
    assert config.read_text() == text


def test_slow_down_lengthens_the_interval_for_good(fresh_emulator, tmp_path):
    # The emulator says slow_down once, then wants polls 5 s further apart: a client that kept
    # polling at the old interval would be told slow_down again.
    fresh_emulator.knobs(device_poll_interval=POLL, device_slow_down=1)
    config, _ = write_config(tmp_path / "config", {"basespace": basespace_table(fresh_emulator)})
    login = start_login(config, "basespace")
    code = shown_code(login)
    wait_for_poll(fresh_emulator, "slow_down")
    decide(fresh_emulator, code, "approve")
    _, err = login.communicate(timeout=60)
    assert login.returncode == 0, err
    assert fresh_emulator.stats()["token_polls"] == ["slow_down", "access_token"]


def test_a_table_without_the_sites_app_is_told_what_to_add(fresh_emulator, tmp_path):
    config, text = write_config(tmp_path / "config", {"basespace": {"kind": "basespace", "url": f"{fresh_emulator.url}/basespace"}})
    result = run_omicsfs("login", "basespace", "--config", str(config), check=False)
    assert result.returncode == 1
    assert "omicsfs login signs in through your site's BaseSpace app: set client_id and client_secret" in result.stderr
    assert config.read_text() == text


def run_in_terminal(command: list[str], answers: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run `command` with a pseudo-terminal as its controlling terminal, as a person's shell would,
    typing each answer once a prompt (a line ending in ": ") shows; returns the exit status and
    everything the terminal showed, echoes included."""
    controller, terminal = pty.openpty()

    def take_the_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    process = subprocess.Popen(command, stdin=terminal, stdout=terminal, stderr=terminal, start_new_session=True,
                               preexec_fn=take_the_terminal)
    os.close(terminal)
    shown = bytearray()
    deadline = time.monotonic() + timeout

    def read_more() -> bool:
        ready, _, _ = select.select([controller], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"the command showed nothing more: {bytes(shown)!r}"
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the command closed the terminal
            return False
        shown.extend(chunk)
        return bool(chunk)

    try:
        answered = 0
        for answer in answers:
            while not shown[answered:].rstrip(b" ").endswith(b":"):
                assert read_more(), f"the command ended before asking: {bytes(shown)!r}"
            os.write(controller, answer.encode() + b"\n")
            answered = len(shown)
        while read_more():
            pass
        return process.wait(timeout=timeout), shown.decode(errors="replace")
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_hidden_prompt_takes_the_token_without_echo(fresh_emulator, tmp_path):
    token_dir = tmp_path / "new secrets"  # login makes it, 0700
    config, text = write_config(tmp_path / "config", {"sbg": {"kind": "sevenbridges", "url": f"{fresh_emulator.url}/sevenbridges",
                                                              "token_file": str(token_dir / "sbg.token")}})
    code, shown = run_in_terminal([*OMICSFS, "login", "sbg", "--config", str(config)], [fresh_emulator.token])
    assert code == 0, shown
    assert "Seven Bridges authentication token for [platforms.sbg] (typing is not shown):" in shown
    assert fresh_emulator.token not in shown, "the terminal echoed the token"
    assert (token_dir / "sbg.token").read_text() == fresh_emulator.token + "\n"
    assert stat.S_IMODE((token_dir / "sbg.token").stat().st_mode) == 0o600
    assert stat.S_IMODE(token_dir.stat().st_mode) == 0o700
    assert config.read_text() == text, "the table named its token_file: the configuration is left as it was"


def test_a_refused_token_is_not_saved(fresh_emulator, tmp_path):
    previous = "the token that was there before"
    token_file = tmp_path / "sbg.token"
    token_file.write_text(previous)
    config, _ = write_config(tmp_path / "config", {"sbg": {"kind": "sevenbridges", "url": f"{fresh_emulator.url}/sevenbridges",
                                                           "token_file": str(token_file)}})
    # From a pipe rather than a terminal: a script's way to log in.
    login = subprocess.run([*OMICSFS, "login", "sbg", "--config", str(config)], input="not-a-valid-token\n",
                           capture_output=True, text=True, timeout=120)
    assert login.returncode == 1
    assert "sbg: Seven Bridges at" in login.stderr and "rejected the authentication token (HTTP 401)" in login.stderr
    assert "nothing was saved" in login.stderr
    assert token_file.read_text() == previous


def test_isabl_logs_in_with_username_and_password(fresh_emulator, tmp_path):
    config, text = write_config(tmp_path / "config", {"isabl": {"kind": "isabl", "url": f"{fresh_emulator.url}/isabl"}})
    command = [*OMICSFS, "login", "isabl", "--config", str(config)]
    code, shown = run_in_terminal(command, ["analyst", "wrong password"])
    assert code == 1
    assert "Isabl at" in shown and "refused the login of analyst: Unable to log in with provided credentials." in shown
    assert not (config.parent / "isabl.token").exists()

    code, shown = run_in_terminal(command, ["analyst", PASSWORD])
    assert code == 0, shown
    assert "Isabl username for [platforms.isabl]" in shown and "analyst" in shown, "the username is shown as typed"
    assert PASSWORD not in shown and fresh_emulator.token not in shown
    assert (config.parent / "isabl.token").read_text() == fresh_emulator.token + "\n"
    assert config.read_text() == text.replace('[platforms."isabl"]\n', f'[platforms."isabl"]\ntoken_file = "{config.parent / "isabl.token"}"\n')


def test_login_says_why_it_cannot_keep_a_token_from_the_environment(fresh_emulator, tmp_path):
    config, text = write_config(tmp_path / "config", {"sbg": {"kind": "sevenbridges", "url": f"{fresh_emulator.url}/sevenbridges",
                                                              "token_env": "SB_AUTH_TOKEN"}})
    result = run_omicsfs("login", "sbg", "--config", str(config), check=False)
    assert result.returncode == 1
    assert "takes its token from the environment variable SB_AUTH_TOKEN" in result.stderr
    absent = run_omicsfs("login", "nope", "--config", str(config), check=False)
    assert absent.returncode == 1 and "no [platforms.nope] table (tables there: sbg)" in absent.stderr
    assert config.read_text() == text


def test_the_token_file_line_goes_under_the_tables_header_however_it_is_written():
    text = '# lab\n[ platforms . "bs" ]   # BaseSpace\nkind = "basespace"\n\n[platforms.other]\nkind = "isabl"\n'
    assert with_token_file(text, "c.toml", "bs", Path("/srv/bs.token")) == (
        '# lab\n[ platforms . "bs" ]   # BaseSpace\ntoken_file = "/srv/bs.token"\nkind = "basespace"\n\n[platforms.other]\nkind = "isabl"\n'
    )
    with pytest.raises(ConfigError, match=r"cannot find the header \[platforms.bs\].*add it yourself"):
        with_token_file('platforms.bs.kind = "basespace"\n', "c.toml", "bs", Path("/srv/bs.token"))
