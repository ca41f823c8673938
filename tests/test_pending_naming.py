"""PENDING (fails today, so `make test` leaves it out; see conftest.py): `naming.unique_names`
never returns when two same-named siblings share an id longer than about 125 bytes.

`with_id` keeps the ` (id)` suffix to half the 255-byte limit, so the fallback `id-2`, `id-3`...
is cut off the same way as the id itself: every candidate is the one already taken, and the
`while candidate in taken` loop spins forever (a listing that never answers, a daemon at 100% CPU).
Run in a subprocess so that the hang is a failure, not a stuck test run.
"""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
from omicsfs.naming import unique_names
uid = "x" * 200
named = unique_names([("report.txt", uid), ("report.txt", uid)], lambda i: i[0], lambda i: i[1])
assert len({name for name, _ in named}) == 2, named
print("ok")
"""


def test_same_named_siblings_sharing_a_long_id_get_names():
    try:
        result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        raise AssertionError("unique_names did not return within 20 s") from None
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
