"""``GET /metrics``: the Prometheus metrics of every process of this instance."""

from __future__ import annotations

from typing import Any

import falcon

from mpi import build_commit, metrics, version
from mpi.api.access import actor_for, requires
from mpi.api.openapi import operation
from mpi.domain.access import METRICS
from mpi.domain.audit import AuditTag
from mpi.identity.engine import Engine
from mpi.identity.stewardship import StewardService
from mpi.search.service import SearchService
from mpi.storage.work import UnitOfWork


class MetricsResource:
    """What the processes counted (requests, link decisions, the pool, the indexer, HL7)
    and what the database says now (the review queue, the search index's lag, the model),
    in the Prometheus text format (OpenMetrics when the scraper asks for it)."""

    def __init__(self, work: UnitOfWork, stewards: StewardService, search: SearchService,
                 engine: Engine, *, link_threshold: float, review_threshold: float):
        self._work = work
        self._stewards = stewards
        self._search = search
        self._engine = engine
        self._thresholds = link_threshold, review_threshold
        self._build = metrics.build_info(version(), build_commit())

    @requires(METRICS)
    @operation("Prometheus metrics (counts and timings; no patient data)", tags=["meta"],
               responses={200: ("The metrics, in the Prometheus text format", None)},
               content_type="text/plain")
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        state = self._work.read(actor_for(req), self._state)
        body, content_type = metrics.exposition(
            [self._build, metrics.StateCollector(lambda: state)], req.get_header("Accept"))
        resp.content_type = content_type
        resp.data = body
        resp.cache_control = ["no-store"]

    def _state(self, tx: Any) -> metrics.State:
        tx.audit(AuditTag.METRICS_READ, None)
        queue = [metrics.QueueDepth(kind, n, age)
                 for kind, n, age in self._stewards.queue_summary()]
        fresh = self._search.freshness()
        available = fresh.state != "unavailable"
        link, review = self._thresholds
        return metrics.State(
            queue=queue,
            index_behind_events=fresh.behind_events if available else None,
            index_behind_seconds=fresh.behind_seconds or 0.0,
            index_applied_event=fresh.applied, log_last_event=fresh.newest,
            model_version=self._engine.model_version, link_threshold=link,
            review_threshold=review)
