"""The configuration file: which platforms to mount, with which credentials, and the cache.

```toml
[platforms.basespace]            # the table's name is the top-level directory in the mount
kind = "basespace"
url = "https://api.basespace.illumina.com"
token = "..."                    # or token_file = "PATH", or token_env = "VAR"

[cache]                          # all optional
dir = "~/.cache/omicsfs"
size = "10G"                     # on disk
memory = "256M"

[mount]
metadata_ttl = 60                # seconds
write_back = "sync"              # close() waits for the upload; "async": it goes on in the background
```

Every error names the file, the table and the key. See docs/CONFIGURATION.md.
"""

from __future__ import annotations

import logging
import math
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from omicsfs.errors import ConfigError
from omicsfs.platforms import platform_class

log = logging.getLogger(__name__)

DEFAULT_CACHE_SIZE = 10 * 1024**3
DEFAULT_MEMORY_CACHE_SIZE = 256 * 1024**2
DEFAULT_METADATA_TTL = 60.0
#: When `close()` returns for a written file: once the platform confirmed it ("sync"), or at once,
#: the upload going on in the background ("async", rclone's mode).
WRITE_BACK_MODES = ("sync", "async")
TOKEN_KEYS = ("token", "token_file", "token_env")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """`"10G"`, `"512M"`, `"1.5GiB"` or a number of bytes."""
    if isinstance(text, bool) or not isinstance(text, (int, str)):
        raise ValueError(f"not a size: {text!r} (use e.g. 512M, 10G)")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"a size cannot be negative: {text}")
        return text
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (use e.g. 512M, 10G)")
    number, unit = match.groups()
    return int(float(number) * 1024 ** "_KMGT".index(unit.upper() or "_"))


def xdg_dir(variable: str, fallback: str) -> Path:
    return Path(os.environ.get(variable) or Path.home() / fallback)


def default_config_path() -> Path:
    return Path(os.environ.get("OMICSFS_CONFIG") or xdg_dir("XDG_CONFIG_HOME", ".config") / "omicsfs" / "config.toml")


@dataclass
class PlatformConfig:
    name: str
    kind: str
    settings: dict  # the table's keys, `token` resolved from token / token_file / token_env


@dataclass
class Config:
    platforms: list[PlatformConfig]
    cache_dir: Path = field(default_factory=lambda: xdg_dir("XDG_CACHE_HOME", ".cache") / "omicsfs")
    cache_size: int = DEFAULT_CACHE_SIZE
    memory_cache_size: int = DEFAULT_MEMORY_CACHE_SIZE
    metadata_ttl: float = DEFAULT_METADATA_TTL
    write_back: str = "sync"
    #: Let other users than the mount's owner in (FUSE's allow_other; the mode bits still apply).
    allow_other: bool = False
    source: str = "<defaults>"

    def secrets(self) -> list[str]:
        """Every token, for the log filter that keeps them out of log lines."""
        return [p.settings["token"] for p in self.platforms if p.settings.get("token")]


def load(path: Path | None = None) -> Config:
    path = Path(path) if path else default_config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no configuration file (see docs/CONFIGURATION.md)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    config = parse(data, str(path))
    if any("token" in p for p in data.get("platforms", {}).values() if isinstance(p, dict)):
        mode = path.stat().st_mode
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning("%s holds a token and is readable by other users: chmod 600 %s", path, path)
    return config


def parse(data: dict, source: str) -> Config:
    """Build a `Config` from parsed TOML; `source` names the file in error messages."""
    unknown = set(data) - {"platforms", "cache", "mount"}
    if unknown:
        raise ConfigError(f"{source}: unknown table or key {sorted(unknown)[0]!r}")
    tables = data.get("platforms")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"{source}: no [platforms.NAME] table: nothing to mount")
    platforms = [_platform(source, name, table) for name, table in tables.items()]
    config = Config(platforms, source=source)
    cache = _table(source, data, "cache")
    mount = _table(source, data, "mount")
    for table_name, table, allowed in (("cache", cache, {"dir", "size", "memory"}), ("mount", mount, {"metadata_ttl", "write_back"})):
        for key in set(table) - allowed:
            raise ConfigError(f"{source}: [{table_name}] has an unknown key {key!r}")
    if "dir" in cache:
        if not isinstance(cache["dir"], str) or not cache["dir"]:
            raise ConfigError(f"{source}: [cache] dir must be a path, not {cache['dir']!r}")
        config.cache_dir = Path(cache["dir"]).expanduser()
    for key, attribute in (("size", "cache_size"), ("memory", "memory_cache_size")):
        if key in cache:
            try:
                setattr(config, attribute, parse_size(cache[key]))
            except ValueError as exc:
                raise ConfigError(f"{source}: [cache] {key}: {exc}") from None
    if "metadata_ttl" in mount:
        ttl = mount["metadata_ttl"]
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 <= ttl < math.inf:
            raise ConfigError(f"{source}: [mount] metadata_ttl must be a number of seconds, not {ttl!r}")
        config.metadata_ttl = float(ttl)
    if "write_back" in mount:
        if mount["write_back"] not in WRITE_BACK_MODES:
            raise ConfigError(f"{source}: [mount] write_back must be one of {', '.join(map(repr, WRITE_BACK_MODES))}, "
                              f"not {mount['write_back']!r}")
        config.write_back = mount["write_back"]
    return config


def _table(source: str, data: dict, name: str) -> dict:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: {name} must be a table ([{name}])")
    return table


def _platform(source: str, name: str, table: object) -> PlatformConfig:
    where = f"{source}: [platforms.{name}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    if not name or "/" in name or "\0" in name or name in (".", "..") or len(name.encode()) > 255:
        raise ConfigError(f"{where}: the name must be usable as a directory name")
    kind = table.get("kind")
    if not isinstance(kind, str):
        raise ConfigError(f"{where}: missing key 'kind' (e.g. kind = \"basespace\")")
    try:
        cls = platform_class(kind)
    except LookupError as exc:
        raise ConfigError(f"{where}: kind: {exc}") from None
    settings = {key: value for key, value in table.items() if key != "kind" and key not in TOKEN_KEYS}
    for key in cls.required_settings:
        if key not in settings:
            raise ConfigError(f"{where}: missing key {key!r}")
    for key, value in settings.items():
        expected = cls.required_settings.get(key) or cls.optional_settings.get(key)
        if expected is None:
            raise ConfigError(f"{where}: unknown key {key!r}")
        if not isinstance(value, expected):
            raise ConfigError(f"{where}: {key} must be a {expected.__name__}, not {value!r}")
    if cls.needs_token:
        settings["token"], settings["token_source"] = _token(where, table)
    return PlatformConfig(name, kind, settings)


def _token(where: str, table: dict) -> tuple[str, tuple[str, str] | None]:
    """The token, and where to read it again when the platform refuses it (None: given inline)."""
    given = [key for key in TOKEN_KEYS if key in table]
    if len(given) != 1:
        raise ConfigError(f"{where}: give exactly one of token, token_file, token_env (found {len(given)})")
    key = given[0]
    value = table[key]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key} must be a non-empty string")
    source: tuple[str, str] | None = None
    if key == "token_file":
        source = (key, str(Path(value).expanduser()))
        try:
            token = Path(source[1]).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{where}: token_file {value!r}: {exc.strerror}") from None
    elif key == "token_env":
        source = (key, value)
        token = os.environ.get(value, "").strip()
        if not token:
            raise ConfigError(f"{where}: token_env: the environment variable {value} is not set")
    else:
        token = value.strip()
    if not token:
        raise ConfigError(f"{where}: {key} gives an empty token")
    return token, source
