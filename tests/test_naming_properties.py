"""Properties of the naming rules over random Unicode (hypothesis): whatever a platform sends, the
names are valid, unique among siblings and the same on every run and in every order."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from omicsfs.naming import MAX_NAME_BYTES, unique_names


@dataclass(frozen=True)
class Item:
    name: str
    uid: str


#: Any code point, lone surrogates and control characters included, plus the shapes that collide:
#: names equal but for what `safe_name` changes, long names, and ids that repeat or are long.
any_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=300)
awkward = st.sampled_from(["", ".", "..", "/", "a/b", "a∕b", "a\0b", "a\u2400b", "x\ud800", "x\udfff", "x\ufffd",
                           "a (1)", "a (2)", "a", "S1.bam", "S1 (7).bam", "\t", "\u2409", "é", "e\u0301", "😀" * 70])
names = st.one_of(any_text, awkward)
uids = st.one_of(st.sampled_from(["", "1", "2", "7", "1-2"]), st.text(max_size=200))
siblings = st.lists(st.builds(Item, names, uids), max_size=40)


def named(items: list[Item]) -> list[tuple[str, Item]]:
    return unique_names(items, lambda item: item.name, lambda item: item.uid, reserved=(".json", ".id"))


@settings(max_examples=400, deadline=None)
@given(siblings)
def test_every_name_is_valid_unique_and_complete(items):
    result = named(items)
    assert len(result) == len(items), "no sibling is dropped"
    assert sorted(map(id, (item for _, item in result))) == sorted(map(id, items))
    names = [name for name, _ in result]
    assert len(set(names)) == len(names), "unique among siblings"
    for name in names:
        encoded = name.encode("utf-8")  # valid UTF-8: raises otherwise
        assert 0 < len(encoded) <= MAX_NAME_BYTES
        assert "/" not in name and "\0" not in name and name not in (".", "..")
        assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in name), "no control characters"
        assert name not in (".json", ".id")


@settings(max_examples=200, deadline=None)
@given(siblings, st.randoms(use_true_random=False))
def test_names_do_not_depend_on_the_listing_order(items, shuffler):
    """Each sibling keeps its name whatever the order (siblings equal in name and id too are
    indistinguishable: among them, only the set of names is fixed)."""
    shuffled = list(items)
    shuffler.shuffle(shuffled)
    assert sorted((item.name, item.uid, name) for name, item in named(shuffled)) == sorted(
        (item.name, item.uid, name) for name, item in named(items))


@settings(max_examples=200, deadline=None)
@given(siblings)
def test_names_are_the_same_on_every_run(items):
    """A fresh copy of the same listing (as a remount gets it) is named the same."""
    copies = [Item(item.name, item.uid) for item in items]
    assert [name for name, _ in named(copies)] == [name for name, _ in named(items)]
