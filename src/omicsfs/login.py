"""`omicsfs login NAME`: get a token for the platform table NAME, check it, keep it where only its owner reads it.

How a token is got is the platform's (`Platform.login`): BaseSpace's OAuth device flow, Isabl's
username and password, a hidden prompt otherwise. What every platform shares lives here:
- The table is read from the configuration without its token: there is none yet, or a bad one,
  which is why one logs in.
- The token is checked as `omicsfs mount` checks it (`Platform.verify`) before anything is
  written, so a refused token never replaces a good one; a denied, expired or refused login
  writes nothing at all.
- It goes to the table's `token_file`, written whole (a temporary file renamed over it) with mode
  0600, in a directory made 0700 if login creates it.
- A table with no token source gets `token_file = "<the config's directory>/NAME.token"` under its
  header, the rest of the file untouched. A table whose token is in the configuration (`token`) or
  in the environment (`token_env`) is not rewritten: login says why and writes nothing.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import sys
import tempfile
import tomllib
from pathlib import Path

import trio

from omicsfs.config import TOKEN_KEYS, PlatformConfig, default_config_path, parse
from omicsfs.errors import ConfigError, OmicsfsError, PlatformError
from omicsfs.http import Http, new_client
from omicsfs.platforms import platform_class

class Prompt:
    """The person at the terminal: messages, questions, and secrets read without echo.

    From a pipe (`omicsfs login sbg < token.txt`, a provisioning script) each answer is a line of
    stdin, so that login can be scripted without a terminal.
    """

    def say(self, text: str) -> None:
        print(text, flush=True)

    def ask(self, question: str) -> str:
        if sys.stdin.isatty():
            return input(question).strip()
        return self._line(question)

    def secret(self, question: str) -> str:
        if sys.stdin.isatty():
            return getpass.getpass(question).strip()
        return self._line(question)

    @staticmethod
    def _line(question: str) -> str:
        line = sys.stdin.readline()
        if not line:
            raise OmicsfsError(f"{question.strip().rstrip(':')}: stdin ended before an answer")
        return line.strip()


# -- the table, the token file and the configuration ----------------------------------------------


def read_table(path: Path, name: str) -> tuple[dict, PlatformConfig]:
    """The raw table NAME, and its settings checked as `omicsfs mount` checks them (but the token)."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no configuration file: write one with a [platforms.{name}] table first "
                          "(see docs/CONFIGURATION.md)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    tables = data.get("platforms")
    table = tables.get(name) if isinstance(tables, dict) else None
    if not isinstance(table, dict):
        known = ", ".join(tables) if isinstance(tables, dict) and tables else "none"
        raise ConfigError(f"{path}: no [platforms.{name}] table (tables there: {known})")
    # The table as mount reads it, with a stand-in token: every other key is checked the same way.
    without_token = {key: value for key, value in table.items() if key not in TOKEN_KEYS}
    checked = parse({"platforms": {name: {**without_token, "token": "-"}}}, str(path)).platforms[0]
    checked.settings.pop("token", None)
    return table, checked


def token_destination(path: Path, name: str, table: dict) -> tuple[Path, bool]:
    """Where the token goes, and whether the configuration must be told (it named no token source)."""
    where = f"{path}: [platforms.{name}]"
    default = path.parent / f"{name}.token"
    if "token_file" in table:
        value = table["token_file"]
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: token_file must be a non-empty string")
        return Path(value).expanduser(), False
    if "token" in table:
        raise ConfigError(f"{where} holds its token in the configuration (token = ...): remove that line and log in "
                          f"again to keep the token in {default}, or replace it there yourself")
    if "token_env" in table:
        raise ConfigError(f"{where} takes its token from the environment variable {table['token_env']}: set it yourself, "
                          f"or replace token_env with token_file = \"{default}\" to have login keep the token there")
    if default.exists():
        raise ConfigError(f"{default} exists and [platforms.{name}] does not name it: set token_file in the table "
                          "to say where the token goes")
    return default, True


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def with_token_file(text: str, source: str, name: str, token_file: Path) -> str:
    """The configuration's text with `token_file = "..."` added under the table's header; checked by
    parsing it again, so that the file is never left saying something else than before."""
    quoted = [re.escape(json.dumps(name, ensure_ascii=False)), re.escape(f"'{name}'")]
    if _BARE_KEY.match(name):
        quoted.append(re.escape(name))
    header = re.compile(rf"^[ \t]*\[[ \t]*platforms[ \t]*\.[ \t]*(?:{'|'.join(quoted)})[ \t]*\][ \t]*(?:#.*)?$", re.MULTILINE)
    match = header.search(text)
    home = Path.home()
    shown = f"~/{token_file.relative_to(home)}" if token_file.is_relative_to(home) else str(token_file)
    line = f"token_file = {json.dumps(shown, ensure_ascii=False)}"
    if match is None:
        raise ConfigError(f"{source}: cannot find the header [platforms.{name}] to add {line} under it: add it yourself, "
                          "then log in again")
    updated = text[: match.end()] + "\n" + line + text[match.end() :]
    before = tomllib.loads(text)
    try:
        after = tomllib.loads(updated)
    except tomllib.TOMLDecodeError:
        after = {}
    if after.get("platforms", {}).get(name, {}).pop("token_file", None) != shown or after != before:
        raise ConfigError(f"{source}: adding {line} under [platforms.{name}] would change more than that: add it yourself, "
                          "then log in again")
    return updated


def write_private(path: Path, content: str, mode: int = 0o600) -> None:
    """Replace `path` whole with `content`, readable by its owner only (or `mode`); its directory
    is made 0700 if it did not exist. A file that was there keeps its owner (root logging in for a
    user's configuration leaves it the user's)."""
    directory = path.parent
    if not directory.is_dir():
        directory.mkdir(mode=0o700, parents=True)
        directory.chmod(0o700)  # mkdir's mode passes through the umask
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(content)
            file.flush()
            os.fchmod(file.fileno(), mode)
            if os.geteuid() == 0 and path.exists():
                os.fchown(file.fileno(), path.stat().st_uid, path.stat().st_gid)
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


async def obtain_token(platform: PlatformConfig, prompt: Prompt) -> str:
    """A token from the platform's own login, accepted by the platform as `mount` checks it."""
    cls = platform_class(platform.kind)
    async with new_client() as client:
        http = Http(client)
        token = (await cls(platform.name, {**platform.settings, "token": ""}, http).login(prompt)).strip()
        if not token:
            raise OmicsfsError(f"{platform.name}: no token given; nothing was saved")
        try:
            await cls(platform.name, {**platform.settings, "token": token}, http).verify()
        except PlatformError as exc:
            raise OmicsfsError(f"{exc}; nothing was saved") from None
    return token


def login(config_path: Path | None, name: str, prompt: Prompt | None = None) -> int:
    # Absolute: the token_file it may add is read by a daemon whose working directory is elsewhere.
    path = (Path(config_path) if config_path else default_config_path()).absolute()
    prompt = prompt or Prompt()
    try:
        table, platform = read_table(path, name)
        if not platform_class(platform.kind).needs_token:
            prompt.say(f"omicsfs: [platforms.{name}] ({platform.kind}) needs no token")
            return 0
        token_file, tell_config = token_destination(path, name, table)
        config_text = with_token_file(path.read_text(), str(path), name, token_file) if tell_config else None
        token = trio.run(obtain_token, platform, prompt)
        write_private(token_file, token + "\n")
        if config_text is not None:
            target = path.resolve()  # a symlinked configuration keeps its link
            write_private(target, config_text, mode=target.stat().st_mode & 0o777)
    except OmicsfsError as exc:
        print(f"omicsfs: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nomicsfs: login cancelled; nothing was saved", file=sys.stderr)
        return 130
    told = f"; {path} now names it in [platforms.{name}]" if config_text is not None else ""
    prompt.say(f"omicsfs: {name}: the token was accepted and is saved in {token_file}{told}")
    return 0
