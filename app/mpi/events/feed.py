"""The change feed: every committed change, in commit order; reading it is audited."""

from __future__ import annotations

from mpi.domain.audit import Actor, AuditTag
from mpi.domain.events import ChangeEventOut, EventPage
from mpi.storage.changes import ChangeRepository
from mpi.storage.work import UnitOfWork


class ChangeFeed:
    def __init__(self, work: UnitOfWork, changes: ChangeRepository):
        self._work = work
        self._changes = changes

    def read(self, actor: Actor, *, after: int, limit: int) -> EventPage:
        """Events after the cursor ``after``; an empty page keeps the same cursor."""
        with self._work.begin(actor) as tx:
            events = self._changes.read(after=after, limit=limit)
            # The feed carries record content: reading it is audited like reading a record.
            tx.audit(AuditTag.EVENTS_FEED_READ, None,
                     new={"after": after, "returned": len(events)})
        return EventPage(events=[ChangeEventOut(**e.to_dict()) for e in events],
                         next_cursor=str(events[-1].id if events else after))
