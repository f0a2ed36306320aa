"""Keeping a serving process's long-lived objects out of Python's full collections.

A worker keeps up to 200,000 prepared records (the matching engine's cache, about four
objects each that the cyclic garbage collector tracks) besides the ~135,000 objects of
its loaded modules. Python's full (generation 2) collection walks every tracked object,
and it runs whenever the objects that survived younger collections since the last one
reach a quarter of those that survived it: at 1,300,000 records, under a stream of
matches, each worker ran one every ten seconds or so, and each stopped every thread of
that worker for 160 to 820 ms (a request's latency, whatever it was doing).

:func:`hold_long_lived` lets a full collection walk only what arrived since the last
one: right after each, everything that survived it is frozen (``gc.freeze``: moved to a
generation no collection visits). Frozen objects are still freed as soon as nothing
refers to them (a record dropped from the cache goes as before); what a collection would
have found is garbage in reference cycles among objects frozen while they were alive.
So that this cannot grow without bound, once the frozen objects are more than twice as
many as after the last complete collection (and at least ``RECLAIM_FLOOR`` more), they
are unfrozen, and the next full collection walks everything once and finds it.

The master freezes what it imported before forking (:func:`freeze_imported`): as the
``gc`` documentation advises for processes forked without exec, so that no child's
collections walk (and copy, by writing their reference counts' pages) what they share.
"""

from __future__ import annotations

import gc
from typing import Any

#: Unfreeze when the frozen objects are this many times as many as after the last
#: complete collection ...
RECLAIM_FACTOR = 2.0
#: ... and at least this many more (a small heap doubles as a cache fills).
RECLAIM_FLOOR = 500_000


class HeapPolicy:
    """The ``gc`` callback; its counts say what it did (tests, a debugger)."""

    def __init__(self) -> None:
        # Frozen objects after the last collection that walked everything (None: the
        # next full collection is one such).
        self.baseline: int | None = None
        self.frozen_after = 0  # full collections whose survivors were frozen
        self.reclaims = 0  # times everything was unfrozen for a complete collection

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "stop" or info.get("generation") != 2:
            return
        frozen = gc.get_freeze_count()
        if self.baseline is not None and frozen > max(self.baseline * RECLAIM_FACTOR,
                                                      self.baseline + RECLAIM_FLOOR):
            gc.unfreeze()  # the next full collection walks everything, once
            self.baseline = None
            self.reclaims += 1
            return
        complete = self.baseline is None
        gc.freeze()
        self.frozen_after += 1
        if complete:
            self.baseline = gc.get_freeze_count()


_policy: HeapPolicy | None = None
_settling = False  # settle() froze this heap for a job that thaw() has not ended
_paused = False  # settle() turned automatic collection off; thaw() turns it back on


def hold_long_lived() -> HeapPolicy:
    """In a serving process (a worker, an MLLP listener): freeze what survives each full
    collection from now on. Idempotent; the policy in force."""
    global _policy
    if _policy is None:
        _policy = HeapPolicy()
        gc.callbacks.append(_policy)
    return _policy


def release() -> None:
    """Back to Python's own collections (everything unfrozen): tests, and a process that
    goes on to other work."""
    global _policy
    if _policy is not None:
        gc.callbacks.remove(_policy)
        _policy = None
    gc.unfreeze()


def settle(*, process_exits: bool = False) -> None:
    """After each batch of a bulk job (an import, a search index build): collect the
    young generations' cyclic garbage, then leave everything alive out of later
    collections (``gc.freeze``).

    Such a job keeps a large, growing heap: an import, the engine's cache of prepared
    records and what each batch leaves behind; an index build, the postings of the
    segment it writes (millions). Python's full collections scan all of it, and each
    batch's survivors set the next one off: in a 100,000-record import, 116 full
    collections took 36 of its 116 s; a one-process build of 45,800 records spent 12 to
    15 % of its time in them. Frozen objects are still freed when their last reference
    goes. Until :func:`thaw`, Python's automatic collections are off as well: the next
    settle walks the batch's objects once, where the automatic ones walked them again
    and again as the batch grew (gen0 and gen1 collections every few hundred new
    objects, a full one each time a quarter more survived): in a 30,000-record import
    into a 100,000-record registry they took 2.1 s of its 16 s of CPU. Cyclic garbage
    made during a batch waits for the batch's end (a batch's worth, at most).

    Not a full collection: after a thaw (an indexer's backlog step is one job) it would
    walk the whole heap again, and an indexer catching up in a process holding 3,000,000
    other objects took 7.6 s instead of 5.3 s. A cycle that reached the oldest generation
    during the batch is frozen with the rest and found after the thaw.

    Only where this process's freezing is the job's own: not in a worker (its policy
    freezes, :func:`hold_long_lived`), nor in a process that started with a frozen heap
    (forked by a master that froze what it imported: thawing would give the master's
    objects back to the collector, whose walks then copy the pages the processes share),
    unless ``process_exits`` (a build's child: it never thaws)."""
    global _settling, _paused
    if not process_exits and not _settling and (_policy is not None
                                                or gc.get_freeze_count()):
        return
    _settling = not process_exits
    gc.collect(1)
    gc.freeze()
    if gc.isenabled():
        gc.disable()
        _paused = True


def thaw() -> None:
    """A bulk job done in a process that goes on: what :func:`settle` froze is the
    collector's again, and its automatic collections run again."""
    global _settling, _paused
    if _paused:
        _paused = False
        gc.enable()
    if _settling:
        _settling = False
        gc.unfreeze()


def freeze_imported() -> None:
    """In the master, before it forks: collect, then freeze everything it holds."""
    gc.collect()
    gc.freeze()
