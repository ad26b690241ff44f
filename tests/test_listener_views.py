"""The per-view cache: restrict and encode once per (accounts, types) view per change."""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import given
from hypothesis import strategies as st

from jmappushd.core.hub import Change, restrict
from jmappushd.core.views import MAX_TOKENS_PER_VIEW, MAX_VIEWS, ViewCache


class CountingEncoder:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, changed: Mapping[str, Mapping[str, str]], token: str) -> bytes:
        self.calls += 1
        return f"{token}:{sorted(changed)}".encode()


CHANGE = Change(1, {"A": {"Email": "e1", "Mailbox": "m1"}, "B": {"Email": "b1"}})
A = frozenset({"A"})
TOKEN = "ep-1"  # the views treat tokens as opaque strings


def test_same_view_shares_restriction_and_bytes() -> None:
    """ES-12: listeners with the same view get the same restricted map and, for the
    unmerged change, the very same bytes, encoded once."""
    encoder = CountingEncoder()
    views = ViewCache(encoder)
    first = views.restricted(CHANGE, A, frozenset({"Email"}))
    second = views.restricted(CHANGE, A, frozenset({"Email"}))
    assert first == {"A": {"Email": "e1"}} and first is second
    one = views.encode(first, TOKEN, A, frozenset({"Email"}))
    two = views.encode(second, TOKEN, A, frozenset({"Email"}))
    assert one is two and encoder.calls == 1


def test_merged_or_other_maps_are_encoded_afresh() -> None:
    """A merged map (not the view's own object) or another token is encoded for itself,
    so the cache never sends bytes for the wrong states."""
    encoder = CountingEncoder()
    views = ViewCache(encoder)
    own = views.restricted(CHANGE, A, None)
    assert views.encode(dict(own), TOKEN, A, None) == b"ep-1:['A']"
    assert views.encode(own, "ep-0", A, None) == b"ep-0:['A']"
    assert encoder.calls == 2


def test_a_new_change_forgets_the_old_views() -> None:
    """Only the newest change is remembered; an invisible change restricts to empty."""
    views = ViewCache(CountingEncoder())
    views.restricted(CHANGE, A, None)
    later = Change(2, {"B": {"Email": "b2"}})
    assert views.restricted(later, A, None) == {}
    assert views.restricted(later, frozenset({"B"}), None) == {"B": {"Email": "b2"}}


def test_distinct_views_are_bounded() -> None:
    """Beyond MAX_VIEWS distinct views of one change, each listener restricts alone
    (correct, just not cached), so the cache cannot grow without bound."""
    views = ViewCache(CountingEncoder())
    for i in range(MAX_VIEWS + 10):
        views.restricted(CHANGE, frozenset({"A", f"x{i}"}), None)
    assert len(views._entries) == MAX_VIEWS
    extra = frozenset({"A", "extra"})
    assert views.restricted(CHANGE, extra, None) == {"A": CHANGE.changed["A"]}


def test_encoding_another_view_after_a_restriction_uses_that_views_bytes() -> None:
    """The shortcut for the view restricted last never hands one view's bytes to another:
    encoding view 1's map right after restricting view 2 still gives view 1's event."""
    views = ViewCache(CountingEncoder())
    first = views.restricted(CHANGE, A, None)
    one = views.encode(first, TOKEN, A, None)
    views.restricted(CHANGE, frozenset({"B"}), None)
    assert views.encode(first, TOKEN, A, None) is one
    assert one == b"ep-1:['A']"


def test_one_view_keeps_bytes_per_token_bounded() -> None:
    """ES-9: listeners of different users on one view carry different tokens, so each
    gets bytes with its own token (encoded once per token); beyond MAX_TOKENS_PER_VIEW
    tokens each is encoded alone, so one view cannot grow without bound."""
    encoder = CountingEncoder()
    views = ViewCache(encoder)
    own = views.restricted(CHANGE, A, None)
    alice = views.encode(own, "t-alice", A, None)
    bob = views.encode(own, "t-bob", A, None)
    assert (alice, bob) == (b"t-alice:['A']", b"t-bob:['A']")
    assert views.encode(own, "t-alice", A, None) is alice and encoder.calls == 2
    for i in range(MAX_TOKENS_PER_VIEW + 10):
        views.encode(own, f"t{i}", A, None)
    assert len(views._singles["A"].encoded) == MAX_TOKENS_PER_VIEW
    assert views.encode(own, "t-late", A, None) == b"t-late:['A']"


def test_one_account_views_are_bounded_too() -> None:
    """The one-account, every-type views have their own table, bounded the same way."""
    many = Change(3, {f"a{i}": {"Email": str(i)} for i in range(MAX_VIEWS + 10)})
    views = ViewCache(CountingEncoder())
    for i in range(MAX_VIEWS + 10):
        assert views.restricted(many, frozenset({f"a{i}"}), None) == {f"a{i}": {"Email": str(i)}}
    assert len(views._singles) == MAX_VIEWS and not views._entries


_IDS = st.sampled_from(["A", "B", "C", "D"])
_TYPE = st.sampled_from(["Email", "Mailbox", "Thread"])


@given(changed=st.dictionaries(_IDS, st.dictionaries(_TYPE, st.just("s"), max_size=3),
                               max_size=4),
       views=st.lists(st.tuples(st.frozensets(_IDS, min_size=1, max_size=3),
                                st.none() | st.frozensets(_TYPE, max_size=3)), max_size=8))
def test_every_view_restricts_as_restrict_does(
        changed: dict[str, dict[str, str]],
        views: list[tuple[frozenset[str], frozenset[str] | None]]) -> None:
    """ES-12: whichever table a view is kept in (one account and every type, or any
    other), what it sees is what ``restrict`` gives, in any order of listeners, and its
    bytes are its own."""
    cache = ViewCache(CountingEncoder())
    change = Change(1, changed)
    for account_ids, types in [*views, *views]:
        seen = cache.restricted(change, account_ids, types)
        assert seen == restrict(changed, account_ids, types)
        if seen:
            assert cache.encode(seen, TOKEN, account_ids, types) == (
                f"{TOKEN}:{sorted(seen)}".encode())
