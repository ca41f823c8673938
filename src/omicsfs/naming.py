"""Names in the mount: safe for every tool, unique among siblings, the same on every mount.

Platforms allow names a file system cannot show (`/`, NUL, `..`, 300 bytes, text UTF-8 cannot
encode) or a shell mangles (newlines, tabs, escapes), and let siblings share a name (two projects
called "RNA Pilot"). Every member of a group of same-named siblings gets its
id appended, so a name never depends on which sibling was listed first, and a sibling appearing
later never renames the others' ids.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TypeVar

MAX_NAME_BYTES = 255

T = TypeVar("T")

#: Control characters as their visible counterparts in the Control Pictures block (U+2400), as
#: rclone's encoder shows them: a newline, tab or escape in a name breaks shell tools and scripts.
_VISIBLE_CONTROLS = {code: 0x2400 + code for code in range(0x20)} | {0x7F: 0x2421}
_SURROGATE = re.compile("[\ud800-\udfff]")


def encodable(text: str) -> str:
    """`text` with what UTF-8 cannot encode (lone surrogates, which valid JSON may carry as
    `"\\ud800"`) replaced by U+FFFD; surrogate pairs become the character they stand for."""
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def safe_name(name: str) -> str:
    """A name the kernel accepts and shells handle: valid UTF-8, no `/`, no control characters,
    not `.` or `..`, not empty, at most 255 bytes."""
    name = encodable(name).translate(_VISIBLE_CONTROLS).replace("/", "∕")
    if name in ("", ".", ".."):
        name = f"_{name}_" if name else "_"
    return _truncate(name, MAX_NAME_BYTES)


def _truncate(name: str, limit: int) -> str:
    encoded = name.encode()
    if len(encoded) <= limit:
        return name
    return encoded[:limit].decode("utf-8", "ignore")


def _split_extension(name: str) -> tuple[str, str]:
    """`S1.bam.bai` → (`S1`, `.bam.bai`): the id goes before every extension so tools still see them."""
    dot = name.find(".", 1)
    if dot == -1 or len(name) - dot > 32:
        return name, ""
    return name[:dot], name[dot:]


def with_id(name: str, uid: str) -> str:
    stem, extension = _split_extension(name)
    # The suffix is made safe before it is measured (a `/` in an id grows to 3 bytes), and kept
    # to half the limit so that some of the name always remains.
    suffix = _truncate(safe_name(f" ({uid}){extension}"), MAX_NAME_BYTES // 2)
    return _truncate(stem, MAX_NAME_BYTES - len(suffix.encode())) + suffix


def unique_names(items: Sequence[T], name_of, uid_of, reserved: Iterable[str] = ()) -> list[tuple[str, T]]:
    """Give each item a safe name unique in the list (and not in `reserved`), deterministically."""
    groups: dict[str, list[T]] = defaultdict(list)
    for item in items:
        groups[safe_name(name_of(item))].append(item)
    reserved = set(reserved)
    # Plain names first, so that a sibling whose real name looks like a generated one
    # ("a (1)") keeps it whatever the listing order.
    plain = {name: group[0] for name, group in groups.items() if len(group) == 1 and name not in reserved}
    named: list[tuple[str, T]] = list(plain.items())
    taken = reserved | plain.keys()
    for name, group in sorted(groups.items()):
        if name in plain:
            continue
        # By id, then by the platform's own name (which `safe_name` may have made equal): an order
        # that depends on the siblings only, never on the listing.
        for item in sorted(group, key=lambda item: (uid_of(item) or "", name_of(item))):
            uid = uid_of(item) or "?"
            candidate = with_id(name, uid)
            counter = 2
            while candidate in taken:
                # Ids repeat (or are cut to the same prefix) only when a platform gives none or
                # very long ones: a counter first, so that cutting keeps it; still stable for an
                # unchanged listing.
                candidate = with_id(name, f"{counter}-{uid}")
                counter += 1
            named.append((candidate, item))
            taken.add(candidate)
    return named
