"""Every store backend against IStateLog and the ordering guarantees of
jmappushd.store.interface: (a) call order, (b) read your writes, (c) reads see
every earlier call (see tests/store_backends.py for the backends)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList

from jmappushd.store import IStore, MemoryStore
from tests.store_backends import (  # noqa: F401 - fixtures
    Backend,
    backend_fixture,
    fired,
    store_fixture,
)

ID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,254}$")


@pytest_twisted.ensureDeferred
async def test_record_changes(store: IStore) -> None:
    """Each publish gets the next seq and upserts the newest state per (account, type)."""
    epoch, seq = await store.position()
    assert ID.match(epoch) and seq == 0
    assert await store.record_changes({"A": {"Email": "s1", "Mailbox": "m1"}}) == 1
    assert await store.record_changes({"A": {"Email": "s2"}, "B": {"Email": "b1"}}) == 2
    assert await store.position() == (epoch, 2)
    assert await store.current_states(["A", "B", "C"]) == {
        "A": {"Email": "s2", "Mailbox": "m1"},
        "B": {"Email": "b1"},
    }
    assert await store.current_states(["C"]) == {}
    assert await store.current_states([]) == {}


@pytest_twisted.ensureDeferred
async def test_record_changes_rejects_empty_and_non_strings(store: IStore) -> None:
    """A publish naming no state is a ValueError, a non-string a TypeError; a batch with one
    bad publish records nothing; seq stays put."""
    with pytest.raises(ValueError):
        await store.record_changes({})
    with pytest.raises(ValueError):
        await store.record_changes({"A": {}})
    with pytest.raises(TypeError):
        await store.record_changes({"A": {"Email": 5}})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        await store.record_changes_batch([{"A": {"Email": "s"}}, {}])
    assert (await store.position())[1] == 0
    assert await store.current_states(["A"]) == {}


@pytest_twisted.ensureDeferred
async def test_record_changes_copies_its_input(store: IStore) -> None:
    """The caller may reuse its dicts once the call returns: the store took a copy."""
    changed = {"A": {"Email": "s1"}}
    recorded = store.record_changes(changed)
    changed["A"]["Email"] = "changed later"
    await recorded
    assert await store.current_states(["A"]) == {"A": {"Email": "s1"}}


@pytest_twisted.ensureDeferred
async def test_record_changes_batch(store: IStore) -> None:
    """A batch gets consecutive seqs; the later state wins; an empty batch records nothing."""
    await store.record_changes({"A": {"Email": "s0"}})
    seqs = await store.record_changes_batch(
        [{"A": {"Email": "s1"}}, {"B": {"Email": "b1"}}, {"A": {"Email": "s2"}}]
    )
    assert seqs == [2, 3, 4]
    assert await store.record_changes_batch([]) == []
    assert (await store.position())[1] == 4
    assert await store.changes_since(2, ["A", "B"]) == {"A": {"Email": "s2"}, "B": {"Email": "b1"}}
    assert await store.changes_since(3, ["A", "B"]) == {"A": {"Email": "s2"}}


@pytest_twisted.ensureDeferred
async def test_states_round_trip_exactly_in_large_batches(store: IStore) -> None:
    """Ids and states come back as given, whatever their characters, however many rows
    one batch holds (SQLite hands a batch's rows over as one JSON array)."""
    odd = ["caf\u00e9 \U0001f4e7", 'q"uote\\back', "[1, 2]", "{\"a\": 1}", "tab\tnl\n", "x" * 2000]
    batch = [{f"acct-{n}-{text[:8]}": {"Email": f"{text}-{n}", "Mailbox": text}
              for text in odd} for n in range(3)]
    batch.append({f"many-{i}": {"Email": f"s{i}"} for i in range(1500)})
    seqs = await store.record_changes_batch(batch)
    assert len(seqs) == 4
    wanted = {a: t for changed in batch for a, t in changed.items()}
    assert await store.current_states(sorted(wanted)) == wanted
    assert await store.changes_since(seqs[2], sorted(wanted)) == batch[3]


@pytest_twisted.ensureDeferred
async def test_changes_since_filters_by_seq_and_account(store: IStore) -> None:
    """changes_since returns only the given accounts' states changed after the seq."""
    await store.record_changes({"A": {"Email": "a1", "Mailbox": "m1"}, "B": {"Email": "b1"}})
    await store.record_changes({"A": {"Email": "a2"}})
    await store.record_changes({"B": {"Mailbox": "bm"}, "C": {"Email": "c1"}})
    assert await store.changes_since(0, ["A"]) == {"A": {"Email": "a2", "Mailbox": "m1"}}
    assert await store.changes_since(1, ["A", "B"]) == {
        "A": {"Email": "a2"},
        "B": {"Mailbox": "bm"},
    }
    assert await store.changes_since(2, ["A"]) == {}
    assert await store.changes_since(3, ["A", "B", "C"]) == {}
    assert await store.changes_since(0, []) == {}
    assert await store.changes_since(0, {"C"}) == {"C": {"Email": "c1"}}


@pytest_twisted.ensureDeferred
async def test_many_accounts_are_all_answered(store: IStore) -> None:
    """Account lists longer than SQLite's IN-list chunk still return every match."""
    changed = {f"A{i}": {"Email": f"s{i}"} for i in range(1200)}
    await store.record_changes(changed)
    states = await store.changes_since(0, [*changed, "Aother"])
    assert states == {account: dict(types) for account, types in changed.items()}
    assert await store.current_states(list(changed)) == states


@pytest_twisted.ensureDeferred
async def test_sequence_and_epoch_survive_reopen(backend: Backend) -> None:
    """After reopening a persistent store, the epoch is the same, seq continues, and
    states are kept."""
    if not backend.persists:
        pytest.skip(f"the {backend.name} store keeps nothing after close")
    store = backend.make(None)
    await store.open()
    epoch, _ = await store.position()
    await store.record_changes({"A": {"Email": "s1"}})
    await store.record_changes({"A": {"Email": "s2"}})
    await store.close()
    store = backend.make(None)
    await store.open()
    try:
        assert await store.position() == (epoch, 2)
        assert await store.record_changes({"A": {"Email": "s3"}}) == 3
        assert await store.changes_since(2, ["A"]) == {"A": {"Email": "s3"}}
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_new_store_gets_new_epoch(backend: Backend, store: IStore) -> None:
    """A store on new data has a different epoch, so old resumption tokens are not trusted."""
    other = backend.fresh(None)
    await other.open()
    try:
        assert (await other.position())[0] != (await store.position())[0]
    finally:
        await other.close()


# -- ordering guarantees --


class Tracker:
    """Notes the order in which Deferreds fire, success or failure."""

    def __init__(self) -> None:
        self.issued: list[str] = []
        self.fired: list[str] = []
        self.calls: list[Deferred[Any]] = []

    def __call__(self, label: str, d: Deferred[Any]) -> None:
        self.issued.append(label)
        self.calls.append(d)

        def note(result: object) -> object:
            self.fired.append(label)
            return result

        d.addBoth(note)

    def all(self) -> Deferred[Any]:
        return DeferredList(self.calls, consumeErrors=True)


@pytest_twisted.ensureDeferred
async def test_batches_fire_in_call_order_with_contiguous_seqs(store: IStore) -> None:
    """(a) Batches issued back to back fire in call order; seqs are contiguous and
    increasing in commit order, continuing from position()."""
    await store.record_changes({"X": {"Email": "x"}})
    fired: list[int] = []
    calls = [store.record_changes_batch([{"A": {"Email": f"s{i}.{j}"}} for j in range(i % 3 + 1)])
             for i in range(30)]

    def note(seqs: list[int]) -> list[int]:
        fired.extend(seqs)
        return seqs

    for d in calls:
        d.addCallback(note)
    results = await DeferredList(calls, fireOnOneErrback=True)
    assert fired == list(range(2, 2 + len(fired)))
    assert [seqs for _, seqs in results][:3] == [[2], [3, 4], [5, 6, 7]]
    assert (await store.position())[1] == 1 + len(fired)
    assert await store.current_states(["A"]) == {"A": {"Email": "s29.2"}}


@pytest_twisted.ensureDeferred
async def test_every_call_fires_in_call_order(store: IStore) -> None:
    """(a) Deferreds fire in call order across methods, including calls refused for a bad
    argument and calls with nothing to do (an empty batch or account list)."""
    alice = await store.add_user("alice", "h")
    track = Tracker()
    track("write", store.record_changes({"A": {"Email": "s1"}}))
    track("bad publish", store.record_changes({}))
    track("empty batch", store.record_changes_batch([]))
    track("no accounts", store.current_states([]))
    track("none since", store.changes_since(0, []))
    track("bad digest", store.create_token("alice", b"short"))
    track("bad update", store.update_push_subscription("S", {"url": "x"}))
    track("no keys", store.delete_push_subscriptions_except_keys([]))
    track("read", store.accounts_for_user(alice.id))
    track("last write", store.set_meta("k", "v"))
    await track.all()
    assert track.fired == track.issued


@pytest_twisted.ensureDeferred
async def test_read_after_fired_write_sees_it(store: IStore) -> None:
    """(b) A call made after a write's Deferred fired sees that write."""
    for i in range(20):
        seq = await store.record_changes({"A": {"Email": f"s{i}"}})
        assert await store.changes_since(seq - 1, ["A"]) == {"A": {"Email": f"s{i}"}}
        assert await store.position() == ((await store.position())[0], seq)


@pytest_twisted.ensureDeferred
async def test_read_issued_before_write_fired_sees_it_and_fires_after(store: IStore) -> None:
    """(c) A read made after a write was called, before it fired, sees the write and fires
    after it: what the hub and Web Push catch-up rely on."""
    track = Tracker()
    seen: list[object] = []
    track("write", store.record_changes_batch([{"A": {"Email": "s1"}}, {"B": {"Email": "b"}}]))
    since = store.changes_since(0, ["A", "B"])
    since.addCallback(seen.append)
    track("since", since)
    position = store.position()
    position.addCallback(lambda p: seen.append(p[1]))
    track("position", position)
    track("meta write", store.set_meta("k", "v"))
    meta = store.get_meta("k")
    meta.addCallback(seen.append)
    track("meta read", meta)
    await track.all()
    assert track.fired == track.issued
    assert seen == [{"A": {"Email": "s1"}, "B": {"Email": "b"}}, 2, "v"]


def test_memory_store_holds_answers_in_call_order() -> None:
    """The memory store's hold() keeps answers back and release() fires them in call order,
    each answer as of its call: the same guarantees with the gap under the test's control."""
    store = MemoryStore()
    store.open()
    store.hold()
    track = Tracker()
    track("write", store.record_changes({"A": {"Email": "s1"}}))
    track("bad", store.record_changes({}))
    read = store.current_states(["A"])
    track("read", read)
    assert track.fired == []
    store.release()
    assert track.fired == track.issued
    assert fired(read) == {"A": {"Email": "s1"}}
    assert fired(store.position())[1] == 1
    track.all()


def test_memory_store_fail_next() -> None:
    """fail_next makes exactly the next call fail, without doing its work."""
    store = MemoryStore()
    store.open()
    store.fail_next(OSError("disk gone"))
    with pytest.raises(OSError, match="disk gone"):
        fired(store.record_changes({"A": {"Email": "s1"}}))
    assert fired(store.position())[1] == 0
