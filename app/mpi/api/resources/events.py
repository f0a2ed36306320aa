"""The change feed: every committed change, in commit order."""

from __future__ import annotations

import falcon

from mpi.api.access import actor_for, requires
from mpi.api.openapi import Param, operation
from mpi.api.resources.common import Query, send
from mpi.domain.access import FEED
from mpi.domain.events import EventPage
from mpi.events.feed import ChangeFeed


class EventFeed:
    def __init__(self, feed: ChangeFeed):
        self._feed = feed

    @requires(FEED)
    @operation("The change feed", tags=["events"],
               params=(Param("after", "query", "Cursor: events after this one (0 = from the "
                                               "start); pass back next_cursor",
                             {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}),
                       Param("limit", "query", "Page size (1-1000, default 100)",
                             {"type": "integer", "minimum": 1, "maximum": 1000})),
               responses={200: ("Events in commit order", EventPage),
                          400: ("A query parameter is invalid", None)})
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Poll with the returned next_cursor; an empty page keeps the same cursor."""
        q = Query(req)
        after = q.integer("after", default=0, minimum=0) or 0
        limit = q.integer("limit", default=100, minimum=1, maximum=1000) or 100
        q.check()
        send(resp, self._feed.read(actor_for(req), after=after, limit=limit), omit_nulls=False)
