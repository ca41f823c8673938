"""PENDING (fails today, so `make test` leaves it out; see conftest.py): an API answer whose body is
cut off is not retried, and the error it raises kills the daemon.

`Http.stream` retries a connection error only while it waits for the headers; the body is read
after it has yielded (`Http.request` → `response.aread()`), so an `httpx.RemoteProtocolError`
there escapes every platform call, `fs.listing` lets it through (it catches `PlatformError` only),
and pyfuse3's main loop ends on it: `ls` gets ECONNABORTED and the mount is gone.
Run it alone: `.venv/bin/python -m pytest tests/test_pending_cut_api_body.py`.
"""

from __future__ import annotations

import os

from omicsfs.mount import is_mounted


def test_a_cut_api_answer_is_retried_and_the_mount_lives_on(mount, fresh_emulator, emulator):
    mounted = mount()
    projects = mounted.path / "basespace" / "Projects"
    # The listing of projects is cut 100 bytes into its body, once: a retry gets all of it.
    fresh_emulator.knobs(cuts=[{"prefix": "/basespace/v1pre3/users/current/projects", "after_bytes": 100, "count": 1}])
    assert sorted(os.listdir(projects)) == [
        "Exome 2024∕Q3", "RNA Pilot (1863987)", "RNA Pilot (1864263)", "Tumor-Normal WGS",
    ]
    assert fresh_emulator.stats()["cut_bodies"] == 1
    assert is_mounted(mounted.path)
