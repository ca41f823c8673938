"""PENDING (fails today, so `make test` leaves it out; see conftest.py): a seek backwards by less
than the prefetch window is not taken for a seek, so reading on from there prefetches nothing.

`ReadAhead.advance` counts a read as sequential when it lands within `slack = window` of where the
last one ended, backwards as well as forwards. The slack is there for the kernel's parallel
readahead, whose requests arrive a little out of order; but with a window of 8 MiB (up to 64 MiB)
a seek back by 4 MiB is "sequential": the window is kept, `fetched_to` stays far ahead, and every
read from the new place fetches only its own blocks (one request per kernel read) until it nears
where the prefetch had got to. SEMANTICS says a seek resets the window.
"""

from __future__ import annotations

from omicsfs.reader import FIRST_WINDOW, ReadAhead

MiB = 1024 * 1024
READ = 128 * 1024


def test_reading_on_after_a_near_seek_back_is_sequential_again():
    readahead = ReadAhead(8 * MiB)
    for n in range(32):  # 4 MiB read in order: the window is 8 MiB
        readahead.advance(n * READ, READ)
    readahead.advance(0, READ)  # back to the start, 4 MiB behind: a seek
    assert readahead.advance(READ, READ) == (2 * READ, 2 * READ + FIRST_WINDOW)  # reading on prefetches again
