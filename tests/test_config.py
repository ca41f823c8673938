"""Unit tests for the configuration file (`config.py`): parsing, every error message, the token and its file's mode."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from omicsfs.config import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_MEMORY_CACHE_SIZE,
    DEFAULT_METADATA_TTL,
    default_config_path,
    load,
    parse,
    parse_size,
)
from omicsfs.errors import ConfigError
from omicsfs.platforms import kinds

TOKEN = "s3cr3t-token-0123456789"
PLATFORM = f"""
[platforms.bs]
kind = "basespace"
url = "https://api.basespace.example"
token = "{TOKEN}"
"""


def write(tmp_path: Path, text: str, mode: int = 0o600, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


def load_error(tmp_path: Path, text: str) -> tuple[Path, str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    return path, str(info.value)


def table(**overrides) -> dict:
    base = {"kind": "basespace", "url": "https://api.basespace.example", "token": TOKEN}
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def parse_error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse(data, "/etc/omicsfs.toml")
    message = str(info.value)
    assert message.startswith("/etc/omicsfs.toml: ")  # every error names the file
    return message


# -- parse_size -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("10G", 10 * 1024**3),
        ("512M", 512 * 1024**2),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("2 KB", 2048),
        ("4kib", 4096),
        ("1t", 1024**4),
        ("100", 100),
        ("0", 0),
        (" 10 g ", 10 * 1024**3),
        (12345, 12345),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["10X", "", "G", "-5", "1.5.5", "1e3", "ten gigabytes", "10 GG"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


# -- a good configuration -------------------------------------------------------------------------


def test_minimal_config_gets_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    path = write(tmp_path, PLATFORM)
    config = load(path)
    assert config.source == str(path)
    assert [(p.name, p.kind) for p in config.platforms] == [("bs", "basespace")]
    assert config.platforms[0].settings == {"url": "https://api.basespace.example", "token": TOKEN, "token_source": None}
    assert config.cache_dir == tmp_path / "xdg-cache" / "omicsfs"
    assert config.cache_size == DEFAULT_CACHE_SIZE
    assert config.memory_cache_size == DEFAULT_MEMORY_CACHE_SIZE
    assert config.metadata_ttl == DEFAULT_METADATA_TTL
    assert config.secrets() == [TOKEN]


def test_full_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = write(
        tmp_path,
        PLATFORM
        + """
[platforms."second account"]
kind = "basespace"
url = "https://other.example"
token = "  other-token  "

[cache]
dir = "~/blocks"
size = "20G"
memory = 1048576

[mount]
metadata_ttl = 2.5
""",
    )
    config = load(path)
    assert [p.name for p in config.platforms] == ["bs", "second account"]
    assert config.platforms[1].settings["token"] == "other-token"  # stripped
    assert config.cache_dir == tmp_path / "blocks"
    assert config.cache_size == 20 * 1024**3
    assert config.memory_cache_size == 1024 * 1024
    assert config.metadata_ttl == 2.5
    assert sorted(config.secrets()) == sorted([TOKEN, "other-token"])


def test_metadata_ttl_zero_is_allowed():
    config = parse({"platforms": {"bs": table()}, "mount": {"metadata_ttl": 0}}, "f")
    assert config.metadata_ttl == 0.0


def test_default_config_path(monkeypatch, tmp_path):
    monkeypatch.setenv("OMICSFS_CONFIG", str(tmp_path / "elsewhere.toml"))
    assert default_config_path() == tmp_path / "elsewhere.toml"
    monkeypatch.delenv("OMICSFS_CONFIG")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_config_path() == tmp_path / "xdg" / "omicsfs" / "config.toml"


def test_load_without_a_path_uses_omicsfs_config(monkeypatch, tmp_path):
    path = write(tmp_path, PLATFORM)
    monkeypatch.setenv("OMICSFS_CONFIG", str(path))
    assert load().source == str(path)


# -- the file itself ------------------------------------------------------------------------------


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="no configuration file") as info:
        load(path)
    assert str(path) in str(info.value)


def test_unreadable_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="cannot read") as info:
        load(tmp_path)  # a directory
    assert str(tmp_path) in str(info.value)


def test_invalid_toml_is_named(tmp_path):
    path, message = load_error(tmp_path, '[platforms.bs\nkind = "basespace"\n')
    assert message.startswith(f"{path}: not valid TOML")


# -- errors name the file, the table and the key --------------------------------------------------


def test_unknown_top_level_key(tmp_path):
    path, message = load_error(tmp_path, PLATFORM + '\ncolour = "blue"\n')
    assert message.startswith(str(path)) and "'colour'" in message


@pytest.mark.parametrize("data", [{}, {"platforms": {}}, {"platforms": 5}, {"cache": {}}])
def test_nothing_to_mount(data):
    assert "[platforms.NAME]" in parse_error(data)


def test_platform_that_is_not_a_table():
    message = parse_error({"platforms": {"bs": "basespace"}})
    assert "[platforms.bs] must be a table" in message


@pytest.mark.parametrize("name", [".", "..", "a/b"])
def test_platform_name_must_be_a_directory_name(name):
    message = parse_error({"platforms": {name: table()}})
    assert f"[platforms.{name}]" in message and "directory name" in message


def test_missing_kind(tmp_path):
    path, message = load_error(tmp_path, '[platforms.bs]\nurl = "https://x"\ntoken = "t"\n')
    assert message.startswith(f"{path}: [platforms.bs]")
    assert "missing key 'kind'" in message


def test_kind_that_is_not_a_string():
    message = parse_error({"platforms": {"bs": table(kind=3)}})
    assert "[platforms.bs]" in message and "'kind'" in message


def test_unknown_kind_lists_known_kinds(tmp_path):
    path, message = load_error(tmp_path, PLATFORM.replace('kind = "basespace"', 'kind = "dropbox"'))
    assert message.startswith(f"{path}: [platforms.bs]")
    assert "kind" in message and "'dropbox'" in message
    assert "basespace" in kinds()
    assert f"known: {', '.join(kinds())}" in message


def test_missing_required_key(tmp_path):
    path, message = load_error(tmp_path, f'[platforms.bs]\nkind = "basespace"\ntoken = "{TOKEN}"\n')
    assert message == f"{path}: [platforms.bs]: missing key 'url'"


def test_key_of_the_wrong_type():
    message = parse_error({"platforms": {"bs": table(url=443)}})
    assert "[platforms.bs]" in message and "url must be a str" in message and "443" in message


def test_unknown_platform_key():
    message = parse_error({"platforms": {"bs": table(colour="blue")}})
    assert "[platforms.bs]" in message and "unknown key 'colour'" in message


def test_error_names_the_failing_platform_table():
    message = parse_error({"platforms": {"good": table(), "bad": table(url=None)}})
    assert "[platforms.bad]" in message and "'url'" in message


def test_cache_that_is_not_a_table(tmp_path):
    path, message = load_error(tmp_path, 'cache = "big"\n' + PLATFORM)
    assert message.startswith(str(path)) and "cache must be a table" in message


@pytest.mark.parametrize("section", ["cache", "mount"])
def test_unknown_key_in_cache_or_mount(tmp_path, section):
    path, message = load_error(tmp_path, PLATFORM + f"\n[{section}]\ncolour = 1\n")
    assert message == f"{path}: [{section}] has an unknown key 'colour'"


@pytest.mark.parametrize("key", ["size", "memory"])
def test_malformed_cache_size(tmp_path, key):
    path, message = load_error(tmp_path, PLATFORM + f'\n[cache]\n{key} = "lots"\n')
    assert message.startswith(f"{path}: [cache] {key}: not a size")
    assert "'lots'" in message


@pytest.mark.parametrize("ttl", ['"soon"', "-1", "[1]"])
def test_malformed_metadata_ttl(tmp_path, ttl):
    path, message = load_error(tmp_path, PLATFORM + f"\n[mount]\nmetadata_ttl = {ttl}\n")
    assert message.startswith(f"{path}: [mount] metadata_ttl")


# -- the token ------------------------------------------------------------------------------------


def test_no_token():
    message = parse_error({"platforms": {"bs": table(token=None)}})
    assert "[platforms.bs]" in message and "exactly one of token, token_file, token_env (found 0)" in message


@pytest.mark.parametrize(
    "keys", [("token", "token_file"), ("token", "token_env"), ("token_file", "token_env"), ("token", "token_file", "token_env")]
)
def test_more_than_one_token_key(keys):
    values = {"token": TOKEN, "token_file": "/dev/null", "token_env": "HOME"}
    data = table(**{"token": None, **{key: values[key] for key in keys}})
    message = parse_error({"platforms": {"bs": data}})
    assert f"(found {len(keys)})" in message


@pytest.mark.parametrize("key, value", [("token", ""), ("token", 5), ("token_file", ""), ("token_env", ["A"])])
def test_token_key_of_the_wrong_type_or_empty(key, value):
    message = parse_error({"platforms": {"bs": table(**{"token": None, key: value})}})
    assert "[platforms.bs]" in message and f"{key} must be a non-empty string" in message


def test_blank_token():
    message = parse_error({"platforms": {"bs": table(token="   ")}})
    assert "[platforms.bs]" in message and "token gives an empty token" in message


def test_token_file(tmp_path):
    (tmp_path / "token").write_text(f"  {TOKEN}\n")
    config = parse({"platforms": {"bs": table(token=None, token_file=str(tmp_path / "token"))}}, "f")
    assert config.platforms[0].settings["token"] == TOKEN
    assert "token_file" not in config.platforms[0].settings
    assert config.platforms[0].settings["token_source"] == ("token_file", str(tmp_path / "token"))
    assert config.secrets() == [TOKEN]


def test_token_file_with_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".bs-token").write_text(TOKEN)
    config = parse({"platforms": {"bs": table(token=None, token_file="~/.bs-token")}}, "f")
    assert config.platforms[0].settings["token"] == TOKEN
    assert config.platforms[0].settings["token_source"] == ("token_file", f"{tmp_path}/.bs-token")


def test_missing_token_file(tmp_path):
    missing = str(tmp_path / "no-token")
    message = parse_error({"platforms": {"bs": table(token=None, token_file=missing)}})
    assert "[platforms.bs]" in message and "token_file" in message and missing in message


def test_empty_token_file(tmp_path):
    (tmp_path / "token").write_text("\n")
    message = parse_error({"platforms": {"bs": table(token=None, token_file=str(tmp_path / "token"))}})
    assert "[platforms.bs]" in message and "token_file gives an empty token" in message


def test_token_env(monkeypatch):
    monkeypatch.setenv("OMICSFS_TEST_TOKEN", f"{TOKEN}\n")
    config = parse({"platforms": {"bs": table(token=None, token_env="OMICSFS_TEST_TOKEN")}}, "f")
    assert config.platforms[0].settings["token"] == TOKEN
    assert "token_env" not in config.platforms[0].settings
    assert config.platforms[0].settings["token_source"] == ("token_env", "OMICSFS_TEST_TOKEN")


@pytest.mark.parametrize("value", [None, "", "  "])
def test_token_env_not_set(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("OMICSFS_TEST_TOKEN", raising=False)
    else:
        monkeypatch.setenv("OMICSFS_TEST_TOKEN", value)
    message = parse_error({"platforms": {"bs": table(token=None, token_env="OMICSFS_TEST_TOKEN")}})
    assert "[platforms.bs]" in message and "token_env" in message and "OMICSFS_TEST_TOKEN" in message


def test_error_messages_do_not_show_the_token():
    message = parse_error({"platforms": {"bs": table(token=TOKEN, token_file="/x")}})
    assert TOKEN not in message


# -- a token in a file others can read ------------------------------------------------------------


def warnings_for(caplog, path: Path) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="omicsfs.config"):
        load(path)
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o666])
def test_token_in_a_file_others_can_read_is_warned_about(tmp_path, caplog, mode):
    path = write(tmp_path, PLATFORM, mode=mode)
    messages = warnings_for(caplog, path)
    assert len(messages) == 1
    assert str(path) in messages[0] and "chmod 600" in messages[0]
    assert TOKEN not in messages[0]


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_file_is_not_warned_about(tmp_path, caplog, mode):
    path = write(tmp_path, PLATFORM, mode=mode)
    assert warnings_for(caplog, path) == []


def test_readable_file_without_a_token_is_not_warned_about(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("OMICSFS_TEST_TOKEN", TOKEN)
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "token").chmod(0o600)
    text = f"""
[platforms.a]
kind = "basespace"
url = "https://x"
token_env = "OMICSFS_TEST_TOKEN"

[platforms.b]
kind = "basespace"
url = "https://y"
token_file = "{tmp_path / 'token'}"
"""
    path = write(tmp_path, text, mode=0o644)
    assert warnings_for(caplog, path) == []
