"""`mount.omicsfs SPEC DIR [-sfnv] [-o OPTIONS]`: the helper mount(8) runs for an fstab line of type `fuse.omicsfs`.

    /etc/omicsfs/lab.toml  /mnt/omics  fuse.omicsfs  _netdev,nofail,allow_other  0 0

For type `fuse.omicsfs`, mount(8) runs `/sbin/mount.fuse.omicsfs` (a link to this helper, made once
by the admin: mount(8) looks for helpers in /sbin only) as `mount.fuse.omicsfs SPEC DIR -o rw,
allow_other,_netdev,nofail`. SPEC is the configuration file; it is also the mount's source (see
`mount.mount_options`), so that `mount -a` finds the line mounted. The helper mounts as `omicsfs
mount` does in the background and returns once the mount is live or has failed, which is what
mount(8) and systemd's mount units wait for. `umount DIR` ends it.

Options: `allow_other` (everyone may read, as the mode bits allow), `default_permissions` (always
on: the kernel checks the mode bits), and `omicsfs mount`'s own options with underscores:
`cache_dir=`, `cache_size=`, `memory_cache_size=`, `metadata_ttl=`, `write_back=`, `log_file=`, `debug`. The
options mount(8) and systemd pass on for every file system are accepted and change nothing here;
any other is an error (with `-s`, mount's "sloppy", a warning), so that a typo does not pass
silently.
"""

from __future__ import annotations

import sys

#: mount options → `omicsfs mount` options taking a value.
VALUE_OPTIONS = {name: "--" + name.replace("_", "-") for name in ("cache_dir", "cache_size", "memory_cache_size", "metadata_ttl", "write_back", "log_file")}
#: mount options → `omicsfs mount` flags (None: always on, nothing to pass).
FLAG_OPTIONS = {"allow_other": "--allow-other", "debug": "--debug", "default_permissions": None}
#: What mount(8) and systemd pass on for any file system: none of it changes an omicsfs mount.
#: The mount is read-only (`rw` is mount's default, not a request); its files are never
#: executable or setuid and it has no devices (`exec`, `suid`, `dev` and their `no` forms);
#: `_netdev`, `nofail`, `auto`, `noauto` are for mount(8) and systemd, which act on them themselves.
IGNORED_OPTIONS = {"rw", "ro", "defaults", "_netdev", "nofail", "auto", "noauto", "exec", "noexec", "suid", "nosuid",
                   "dev", "nodev", "atime", "noatime", "relatime", "strictatime", "nodiratime", "diratime", "async", "sync"}
USAGE = "usage: mount.omicsfs CONFIG MOUNTPOINT [-sfnv] [-o OPTIONS]   (what mount(8) runs for an fstab line of type fuse.omicsfs)"


class UsageError(Exception):
    pass


def omicsfs_arguments(argv: list[str]) -> tuple[list[str], bool, list[str]]:
    """The `omicsfs` command line for a helper's arguments; whether mount(8) asked for a fake mount
    (`-f`: do everything but mount); and warnings for the person at the terminal."""
    positional: list[str] = []
    options: list[str] = []
    fake = sloppy = False
    arguments = iter(argv)
    for argument in arguments:
        if argument == "-o":
            options += next(arguments, "").split(",")
        elif argument.startswith("-o"):
            options += argument[2:].split(",")
        elif argument == "-t":
            next(arguments, None)  # the type mount(8) found us by: fuse.omicsfs
        elif argument.startswith("-") and len(argument) > 1 and set(argument[1:]) <= set("sfnv"):
            fake = fake or "f" in argument
            sloppy = sloppy or "s" in argument
        elif argument.startswith("-") and len(argument) > 1:
            raise UsageError(f"unknown argument {argument}\n{USAGE}")
        else:
            positional.append(argument)
    if len(positional) != 2:
        raise UsageError(USAGE)
    spec, mountpoint = positional
    if spec.startswith("omicsfs#"):
        # The older FUSE spelling (type fuse, program#source) would mount, but as a source that
        # is not the mount's: `mount -a` would not see it mounted and try again.
        raise UsageError(f"write the fstab source as the configuration file alone ({spec.removeprefix('omicsfs#')}): "
                         "the type fuse.omicsfs already says omicsfs")
    command = ["mount", mountpoint, "--config", spec]
    warnings = []
    for option in filter(None, options):
        name, has_value, value = option.partition("=")
        if name in VALUE_OPTIONS and has_value and value:
            command += [VALUE_OPTIONS[name], value]
        elif name in FLAG_OPTIONS and not has_value:
            if FLAG_OPTIONS[name]:
                command.append(FLAG_OPTIONS[name])
        elif name in IGNORED_OPTIONS and not has_value:
            pass
        else:
            known = sorted([*VALUE_OPTIONS, *FLAG_OPTIONS])
            message = f"unknown mount option {option!r} (omicsfs takes: {', '.join(known)}; see mount.omicsfs in the README)"
            if not sloppy:
                raise UsageError(message)
            warnings.append(message + "; ignored (-s)")
    return command, fake, warnings


def main(argv: list[str] | None = None) -> int:
    from omicsfs.cli import main as omicsfs

    try:
        command, fake, warnings = omicsfs_arguments(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"mount.omicsfs: {exc}", file=sys.stderr)
        return 1  # mount(8)'s "incorrect invocation or permissions"
    for warning in warnings:
        print(f"mount.omicsfs: {warning}", file=sys.stderr)
    if fake:
        return 0
    # `omicsfs mount` in the background: returns once the mount is live, or with the reason it is not.
    return 32 if omicsfs(command) else 0  # mount(8)'s "mount failure"
