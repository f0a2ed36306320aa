"""What survives a full collection is frozen; garbage frozen with it is found in the end."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from mpi import heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def policy() -> Iterator[heap.HeapPolicy]:
    gc.collect()
    held = heap.hold_long_lived()
    try:
        yield held
    finally:
        heap.release()


def test_what_survives_a_full_collection_is_left_out_of_the_next(policy):
    kept = [Node() for _ in range(10_000)]
    gc.collect()
    assert policy.frozen_after == 1 and gc.get_freeze_count() >= len(kept)
    assert heap.hold_long_lived() is policy  # installed once
    # The next full collection walks only what arrived since: the frozen are not in any
    # generation.
    assert sum(gc.get_count()) < len(kept)
    assert all(not any(o is n for o in gc.get_objects(generation=2)) for n in kept[:3])


def test_a_frozen_object_is_still_freed_when_nothing_refers_to_it(policy):
    node = Node()
    gone = weakref.ref(node)
    gc.collect()
    assert gc.get_freeze_count() > 0
    del node
    assert gone() is None


def test_garbage_cycles_among_frozen_objects_are_reclaimed_once_the_frozen_double(
        policy, monkeypatch):
    """A cycle frozen while alive and dropped later is found by the complete collection
    that follows the frozen objects' doubling (and not before)."""
    monkeypatch.setattr(heap, "RECLAIM_FLOOR", 1000)
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    gc.collect()  # complete (the first): sets the baseline, freezes the cycle
    baseline = policy.baseline
    assert baseline is not None
    del a, b
    gc.collect()
    assert gone() is not None  # frozen: no collection sees it
    grown = [Node() for _ in range(int(baseline * heap.RECLAIM_FACTOR) + 2000)]
    for _ in range(3):  # survivors frozen (past twice the baseline), unfrozen, walked
        gc.collect()
    assert gone() is None
    assert policy.reclaims == 1
    assert policy.baseline is not None and policy.baseline >= len(grown)


def test_release_unfreezes_and_stops_freezing():
    gc.collect()
    heap.hold_long_lived()
    gc.collect()
    assert gc.get_freeze_count() > 0
    heap.release()
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert gc.get_freeze_count() == 0


def test_after_a_batch_garbage_is_collected_and_the_rest_left_out_of_collections():
    """``settle``: a cycle nothing refers to is collected; what is alive is frozen, so
    later full collections do not scan it again (an import's or an index build's
    growing heap); ``thaw`` gives it back to the collector."""
    cycle = Node()
    cycle.other = cycle
    gone = weakref.ref(cycle)
    kept = [Node() for _ in range(100)]
    del cycle
    try:
        heap.settle()
        assert gone() is None
        assert gc.get_freeze_count() >= len(kept)
        scanned = {id(o) for g in range(3) for o in gc.get_objects(generation=g)}
        assert not scanned & {id(k) for k in kept}
        heap.thaw()
        assert gc.get_freeze_count() == 0
        scanned = {id(o) for g in range(3) for o in gc.get_objects(generation=g)}
        assert {id(k) for k in kept} <= scanned
    finally:
        gc.unfreeze()


def test_between_settles_no_automatic_collection_runs_and_each_settle_collects_the_batch():
    """A bulk job's batch is walked once, by the settle at its end, not again and again by
    automatic collections as it grows; its cyclic garbage goes then. ``thaw`` turns the
    automatic collections back on."""
    assert gc.isenabled()
    try:
        heap.settle()
        assert not gc.isenabled()
        before = gc.get_count()[0]
        cycles = []
        for _ in range(5_000):  # far past generation 0's threshold
            cycle = Node()
            cycle.other = cycle
            cycles.append(weakref.ref(cycle))
            del cycle
        assert gc.get_count()[0] >= before + 5_000  # nothing collected meanwhile
        assert all(ref() is not None for ref in cycles)
        heap.settle()
        assert all(ref() is None for ref in cycles)
        assert not gc.isenabled()
        heap.thaw()
        assert gc.isenabled() and gc.get_freeze_count() == 0
    finally:
        gc.enable()
        gc.unfreeze()


def _collected(objects) -> bool:
    """Whether every one of ``objects`` is in a generation collections walk (not frozen)."""
    walked = {id(o) for g in range(3) for o in gc.get_objects(generation=g)}
    return {id(o) for o in objects} <= walked


def test_a_serving_process_heap_is_left_to_whoever_froze_it(policy):
    """A worker's policy freezes what survives its full collections: settling and
    thawing there change nothing (other frozen objects may be freed meanwhile)."""
    kept = [Node() for _ in range(1_000)]
    gc.collect()
    assert not _collected(kept[:1]) and gc.get_freeze_count() >= len(kept)
    gc.disable()  # no full collection of its own (the policy would freeze ``fresh``)
    try:
        fresh = [Node() for _ in range(100)]
        heap.settle()
        assert _collected(fresh)
        heap.thaw()
        assert not _collected(kept[:1]) and _collected(fresh)
    finally:
        gc.enable()
    heap.settle()  # its automatic collections are the policy's: never turned off
    assert gc.isenabled()


def test_a_heap_frozen_before_the_job_stays_frozen():
    """A process forked by a master that froze what it imported (the search indexer's)
    does not settle, so no thaw gives the master's objects back to its collector; a
    build's child, which exits when done, does."""
    inherited = [Node() for _ in range(100)]
    gc.collect()
    gc.freeze()
    try:
        assert not _collected(inherited)
        fresh = [Node() for _ in range(100)]
        heap.settle()
        assert _collected(fresh) and gc.isenabled()
        heap.thaw()
        assert not _collected(inherited) and _collected(fresh)
        heap.settle(process_exits=True)
        assert not _collected(fresh) and not gc.isenabled()
        heap.thaw()  # (a child never thaws; here it gives the collections back)
        assert not _collected(fresh) and not _collected(inherited) and gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()
