"""Unit tests for names in the mount (`naming.py`) and for the timestamps shown with them (`dates.py`)."""

from __future__ import annotations

import datetime as dt
import itertools
import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omicsfs.dates import parse_timestamp
from omicsfs.naming import MAX_NAME_BYTES, safe_name, unique_names, with_id

META_FILES = (".json", ".id")  # what fs.py reserves in every entity directory


@dataclass(eq=False)  # distinct items even with equal fields, as platforms' listings can hold
class Item:
    name: str
    uid: str


def names(items, reserved=META_FILES) -> dict[Item, str]:
    """Item → its name, after checking that every item got exactly one name, all distinct."""
    named = unique_names(items, lambda i: i.name, lambda i: i.uid, reserved=reserved)
    assert len(named) == len(items)
    assert len({name for name, _ in named}) == len(items), f"two siblings share a name: {sorted(n for n, _ in named)}"
    result = {item: name for name, item in named}
    assert len(result) == len(items)
    return result


def assert_valid(name: str) -> None:
    assert name not in ("", ".", "..")
    assert "/" not in name and "\0" not in name
    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES


# -- safe_name ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("sample.bam", "sample.bam"),
        ("a/b", "a∕b"),
        ("/", "∕"),
        ("a\0b", "a\u2400b"),
        ("", "_"),
        ("\0", "\u2400"),
        ("two\nlines\ttab\x1b[0m", "two\u240alines\u2409tab\u241b[0m"),
        ("del\x7f", "del\u2421"),
        ("unit\x1fsep", "unit\u241fsep"),  # the last of the C0 controls
        ("ab\ud800cd", "ab\ufffdcd"),
        ("\udc80", "\ufffd"),
        ("pair \ud83d\ude00", "pair \U0001f600"),
        ("emoji \U0001f600 and NFD e\u0301", "emoji \U0001f600 and NFD e\u0301"),
        (".", "_._"),
        ("..", "_.._"),
        ("...", "..."),
        (".hidden", ".hidden"),
        ("RNA Pilot (2)", "RNA Pilot (2)"),
    ],
)
def test_safe_name(raw, expected):
    assert safe_name(raw) == expected
    assert_valid(safe_name(raw))


@pytest.mark.parametrize("char", ["x", "é", "€", "𝔊", "日"])
def test_safe_name_truncates_to_255_bytes_on_a_character_boundary(char):
    raw = char * 300
    name = safe_name(raw)
    assert_valid(name)
    encoded = name.encode("utf-8")
    width = len(char.encode())
    assert len(encoded) > MAX_NAME_BYTES - width  # as long as fits, no shorter
    assert name == char * (len(encoded) // width)  # whole characters only


def test_safe_name_truncates_after_replacing():
    # The replacement for "/" is 3 bytes in UTF-8: the limit applies to the result.
    name = safe_name("/" * 200)
    assert_valid(name)
    assert name == "∕" * 85


def test_safe_name_keeps_short_multibyte_names():
    raw = "Échantillon-日本-𝔊" * 5
    assert len(raw.encode()) <= MAX_NAME_BYTES
    assert safe_name(raw) == raw


# -- with_id --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, uid, expected",
    [
        ("S1.bam.bai", "7", "S1 (7).bam.bai"),
        ("S1.bam", "7", "S1 (7).bam"),
        ("RNA Pilot", "123", "RNA Pilot (123)"),
        (".hidden", "4", ".hidden (4)"),
        ("reads.fastq.gz", "a-b", "reads (a-b).fastq.gz"),
        ("x." + "e" * 40, "1", "x." + "e" * 40 + " (1)"),  # not an extension: too long
    ],
)
def test_with_id_goes_before_extensions(name, uid, expected):
    assert with_id(name, uid) == expected


@pytest.mark.parametrize("char", ["x", "é", "日", "𝔊"])
def test_with_id_keeps_the_id_and_extension_within_255_bytes(char):
    named = with_id(char * 300 + ".vcf.gz", "12345")
    assert_valid(named)
    assert named.endswith(" (12345).vcf.gz")
    assert len(named.encode()) > MAX_NAME_BYTES - 4  # the stem was cut, not dropped
    assert named.startswith(char * 10)


def test_names_are_cut_at_255_bytes_exactly():
    assert MAX_NAME_BYTES == 255  # the kernel's NAME_MAX
    assert safe_name("x" * 300) == "x" * 255
    assert safe_name("x" * 255) == "x" * 255
    assert len(with_id("x" * 300 + ".bam", "7").encode()) == 255


def test_a_long_id_is_cut_to_half_the_limit_so_the_name_stays():
    # The suffix " (id).ext" keeps at most 127 bytes: the rest of the 255 is the name's.
    assert with_id("report.txt", "x" * 300) == "report (" + "x" * 125
    assert with_id("report.txt", "x" * 100) == "report (" + "x" * 100 + ").txt"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("x." + "e" * 31, "x (1)." + "e" * 31),  # an extension of 32 characters, dot included
        ("x." + "e" * 32, "x." + "e" * 32 + " (1)"),  # 33: not an extension
    ],
)
def test_extensions_are_at_most_32_characters(name, expected):
    assert with_id(name, "1") == expected


# -- unique_names ---------------------------------------------------------------------------------


def test_unique_names_leave_unique_names_alone():
    items = [Item("a.bam", "1"), Item("a.bam.bai", "2"), Item("b", "3")]
    assert names(items) == {items[0]: "a.bam", items[1]: "a.bam.bai", items[2]: "b"}


def test_duplicates_all_get_their_ids_before_the_extension():
    items = [Item("S1.bam.bai", "7"), Item("S1.bam.bai", "3"), Item("RNA Pilot", "10"), Item("RNA Pilot", "9")]
    assert names(items) == {
        items[0]: "S1 (7).bam.bai",
        items[1]: "S1 (3).bam.bai",
        items[2]: "RNA Pilot (10)",
        items[3]: "RNA Pilot (9)",
    }


def test_names_that_become_equal_when_made_safe_are_duplicates():
    items = [Item("a/b", "1"), Item("a∕b", "2"), Item("a\0/b", "3"), Item("x\ud800", "4"), Item("x\udfff", "5")]
    result = names(items)
    assert result == {items[0]: "a∕b (1)", items[1]: "a∕b (2)", items[2]: "a\u2400∕b", items[3]: "x\ufffd (4)",
                      items[4]: "x\ufffd (5)"}


def test_unsafe_names_are_made_safe():
    items = [Item("", "1"), Item(".", "2"), Item("..", "3"), Item("x" * 400, "4"), Item("a/b", "5")]
    result = names(items)
    for name in result.values():
        assert_valid(name)
    assert result[items[4]] == "a∕b"


def test_reserved_names_are_avoided():
    items = [Item(".json", "5"), Item(".id", "6"), Item("data.json", "7")]
    result = names(items)
    assert result == {items[0]: ".json (5)", items[1]: ".id (6)", items[2]: "data.json"}
    assert not set(result.values()) & set(META_FILES)


def test_ids_that_repeat_fall_back_to_a_counter():
    items = [Item("x.txt", ""), Item("x.txt", ""), Item("x.txt", "")]
    result = names(items)
    # The names a user sees, written out: the first keeps the id ("?" for none), then 2, 3...
    assert sorted(result.values()) == ["x (2-?).txt", "x (3-?).txt", "x (?).txt"]
    for name in result.values():
        assert_valid(name)


def test_siblings_with_and_without_an_id_are_named_by_the_id():
    with_uid, without = Item("a.vcf", "7"), Item("a.vcf", "")
    assert names([without, with_uid]) == {without: "a (?).vcf", with_uid: "a (7).vcf"}


def test_long_duplicates_stay_unique_and_within_the_limit():
    long = "é" * 125 + ".bam"  # 254 bytes: fits alone, but not with an id
    assert safe_name(long) == long
    items = [Item(long, "1001"), Item(long, "1002")]
    result = names(items)
    assert len(set(result.values())) == 2
    for item, name in result.items():
        assert_valid(name)
        assert name.endswith(f" ({item.uid}).bam")


def test_names_do_not_depend_on_listing_order():
    items = [
        Item("S1.bam", "20"), Item("S1.bam", "3"), Item("S1.bam.bai", "20"), Item("S1.bam.bai", "3"),
        Item("RNA Pilot", "100"), Item("RNA Pilot", "11"), Item("RNA Pilot", "2"),
        Item("notes.txt", "5"), Item(".json", "8"), Item("a/b", "9"), Item("a∕b", "10"),
    ]
    expected = names(items)
    rng = random.Random(3)
    for _ in range(200):
        shuffled = items[:]
        rng.shuffle(shuffled)
        assert names(shuffled) == expected
    for permutation in itertools.permutations(items[:5]):
        assert names(list(permutation)) == names(items[:5])


def test_a_plain_name_that_looks_generated_keeps_every_sibling():
    # `a (1)` is what the sibling `a` with id 1 would be called: all three must keep a name.
    items = [Item("a (1)", "9"), Item("a", "1"), Item("a", "2")]
    for permutation in itertools.permutations(items):
        result = names(list(permutation))
        assert result[items[0]] == "a (1)"
        assert result[items[2]] == "a (2)"
        assert result[items[1]] not in ("a", "a (1)", "a (2)")


def test_a_reserved_name_is_never_given():
    items = [Item(".json", "1"), Item(".json (1)", "2"), Item(".id", "")]
    result = names(items)
    assert not set(result.values()) & set(META_FILES)
    assert result[items[1]] == ".json (1)"


# Any listing, whatever its names and ids: every sibling gets one valid name of its own, never a
# reserved one, and the same names in any order. Ids stay short, as platforms' are (a long id
# repeated among same-named siblings is a known hang: tests/test_pending_naming.py).
_NAMES = st.sampled_from(["a", "a (1)", "a (2)", "a (1-2)", "S1.bam", "S1 (7).bam", ".json", ".id", "", ".", "..", "x/y", "x∕y"])
_ITEMS = st.lists(st.tuples(_NAMES | st.text(max_size=12), st.sampled_from(["", "1", "2", "7", "9", "1-2"]) | st.text(max_size=8)), max_size=12)


@settings(max_examples=300, deadline=None)
@given(_ITEMS, st.randoms(use_true_random=False))
def test_any_listing_gets_distinct_valid_names_in_any_order(pairs, rng):
    items = [Item(name, uid) for name, uid in pairs]
    result = names(items)
    for name in result.values():
        assert_valid(name)
        assert name not in META_FILES
    shuffled = items[:]
    rng.shuffle(shuffled)
    again = names(shuffled)
    # Siblings the namer cannot tell apart (the same safe name and the same id: a platform that
    # gives no ids) may trade names; nothing else may change.
    assert sorted(again.values()) == sorted(result.values())
    keys = [(safe_name(i.name), i.uid) for i in items]
    told_apart = [i for i, key in zip(items, keys) if keys.count(key) == 1]
    assert {i: again[i] for i in told_apart} == {i: result[i] for i in told_apart}


def test_a_new_sibling_does_not_rename_the_others():
    group = [Item("RNA Pilot", "11"), Item("RNA Pilot", "2")]
    before = names(group)
    newcomer = Item("RNA Pilot", "5")
    after = names([*group, newcomer])
    assert {item: after[item] for item in group} == before
    assert after[newcomer] == "RNA Pilot (5)"


# -- dates.parse_timestamp ------------------------------------------------------------------------

EPOCH_2012 = dt.datetime(2012, 2, 14, 7, 1, 6, tzinfo=dt.timezone.utc).timestamp()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2012-02-14T07:01:06.0000000", EPOCH_2012),  # BaseSpace: 7 digits, no zone means UTC
        ("2012-02-14T07:01:06.1234567", EPOCH_2012 + 0.123456),
        ("2012-02-14T07:01:06.1234567Z", EPOCH_2012 + 0.123456),
        ("2012-02-14T07:01:06Z", EPOCH_2012),
        ("2012-02-14T07:01:06z", EPOCH_2012),
        ("2012-02-14T07:01:06", EPOCH_2012),
        ("2012-02-14T07:01:06.5", EPOCH_2012 + 0.5),
        ("2012-02-14 07:01:06", EPOCH_2012),
        ("2012-02-14T09:01:06.0000000+02:00", EPOCH_2012),
        ("2012-02-14T02:01:06.1234567-05:00", EPOCH_2012 + 0.123456),
        ("  2012-02-14T07:01:06Z  ", EPOCH_2012),
    ],
)
def test_parse_timestamp(text, expected):
    assert parse_timestamp(text) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("text", [None, "", "not a date", "2012-13-45T99:99:99", "yesterday"])
def test_parse_timestamp_unreadable_is_zero(text):
    assert parse_timestamp(text) == 0.0


def test_same_named_siblings_sharing_a_long_id_get_names():
    """The counter that separates them goes before the id, so cutting a long id keeps it (a
    counter after the id was cut away with it, and the naming loop never ended)."""
    uid = "x" * 200
    named = unique_names([("report.txt", uid), ("report.txt", uid)], lambda i: i[0], lambda i: i[1])
    names = [name for name, _ in named]
    assert len(set(names)) == 2 and all(len(name.encode()) <= 255 for name in names)


def test_siblings_whose_long_ids_are_cut_alike_keep_their_names_in_any_order():
    """Ids cut to the same prefix fall back to the counter; which sibling gets it is decided by
    the ids, never by the listing's order."""
    first, second = Item("r.bam", "X" * 200 + "1"), Item("r.bam", "X" * 200 + "2")
    one_way, other_way = names([first, second]), names([second, first])
    assert one_way == other_way
    assert not one_way[first].startswith("r (2-") and one_way[second].startswith("r (2-")
