"""Prometheus metrics: every collector the service exposes, in this one module.

Label values never carry patient data: routes are Falcon's templates (``/api/v1/patients/
{patient_id:uuid}``, never the path), outcomes and kinds are fixed vocabularies, and the
one free-text label, an HL7 message type, is checked against a pattern and its count
capped.

**Several processes, one scrape.** ``mpi serve`` runs gunicorn's workers, the indexer
process and the MLLP listener. :func:`start_multiprocess` (called by the master before it
forks any of them) gives them a per-start directory under a tmpfs (``/dev/shm``; the
system's temporary directory where there is none), where
each process keeps its counters in memory-mapped files (prometheus_client's multiprocess
mode); a scrape of ``GET /metrics`` on any worker reads them all. A dead worker's live
gauges are removed (:func:`process_died`, from gunicorn's ``child_exit``); its counters
stay, as counters must. The directory is removed when the master exits.

What the database knows (the review queue, the search index's lag, the model) is read at
scrape time by :class:`StateCollector` rather than counted: it is right after a restart
and agrees across workers.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import prometheus_client
from prometheus_client import values as _values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from mpi.domain.audit import AuditTag
from mpi.lifecycle import process_alive

# No ``_created`` series: multiprocess mode has none, so one process alone shows none either.
prometheus_client.disable_created_metrics()

ENV = "PROMETHEUS_MULTIPROC_DIR"
NAMESPACE = "mpi"
#: Request latency buckets (seconds): a read takes milliseconds, a $match tens of them,
#: a rebuild-bound search or a large import batch seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)
WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)

# --- what the processes count -----------------------------------------------------------------

HTTP_REQUESTS = prometheus_client.Counter(
    "http_requests", "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"], namespace=NAMESPACE)
HTTP_DURATION = prometheus_client.Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request, by route template and method (reads, search, match "
    "and $match are routes of their own)",
    ["route", "method"], namespace=NAMESPACE, buckets=LATENCY_BUCKETS)
LINK_DECISIONS = prometheus_client.Counter(
    "link_decisions", "Where records went, by outcome: auto_link, review, new_person, "
    "auto_merge (the engine); manual_link, unlink, merge, merge_undone, review_resolved (stewards)",
    ["outcome"], namespace=NAMESPACE)
RECORDS_WRITTEN = prometheus_client.Counter(
    "records_written", "Patient records written, by operation (create, import, update, "
    "delete)", ["operation"], namespace=NAMESPACE)
POOL_IN_USE = prometheus_client.Gauge(
    "db_pool_connections_in_use", "Pooled database connections lent out now (all "
    "processes)", namespace=NAMESPACE, multiprocess_mode="livesum")
POOL_SIZE = prometheus_client.Gauge(
    "db_pool_connections_max", "Database connections the processes may open in all "
    "(DATABASE_MAX_CONNECTIONS per process)", namespace=NAMESPACE,
    multiprocess_mode="livesum")
POOL_WAIT = prometheus_client.Histogram(
    "db_pool_wait_seconds", "Time a request waited for a pooled database connection",
    namespace=NAMESPACE, buckets=WAIT_BUCKETS)
POOL_EXHAUSTED = prometheus_client.Counter(
    "db_pool_exhausted", "Requests refused because no pooled connection came free within "
    "DATABASE_TIMEOUT", namespace=NAMESPACE)
INDEX_APPLIED = prometheus_client.Counter(
    "search_index_events_applied", "Change-log events the search indexer applied",
    namespace=NAMESPACE)
INDEX_REBUILDS = prometheus_client.Counter(
    "search_index_rebuilds", "Search index rebuilds from the database, by reason "
    "(missing, damaged, requested)", ["reason"], namespace=NAMESPACE)
IMPORTED = prometheus_client.Counter(
    "import_records", "Records mpi import handled, by outcome (created, skipped, rejected)",
    ["outcome"], namespace=NAMESPACE)
HL7_MESSAGES = prometheus_client.Counter(
    "hl7_messages", "HL7 v2 messages answered, by message type (MSH-9, e.g. ADT^A01) and "
    "acknowledgement code (AA, AE, AR)", ["message_type", "ack"], namespace=NAMESPACE)
HL7_DURATION = prometheus_client.Histogram(
    "hl7_message_duration_seconds", "Time from an HL7 message read to its acknowledgement "
    "written, by message type", ["message_type"], namespace=NAMESPACE,
    buckets=LATENCY_BUCKETS)

_HL7_TYPE_RE = re.compile(r"^[A-Z0-9]{3}(\^[A-Z0-9]{3}){0,2}$")
_HL7_TYPES_SEEN: set[str] = set()
_HL7_TYPES_MAX = 64


def hl7_type(raw: str | None) -> str:
    """The label for an HL7 message type: ``ADT^A01``, or ``other`` for anything that does
    not look like one (or past the first 64 distinct types: a label set must stay small)."""
    if not raw:
        return "other"
    value = "^".join(raw.split("^")[:2]).upper()
    if not _HL7_TYPE_RE.match(value):
        return "other"
    if value not in _HL7_TYPES_SEEN:
        if len(_HL7_TYPES_SEEN) >= _HL7_TYPES_MAX:
            return "other"
        _HL7_TYPES_SEEN.add(value)
    return value


#: What a committed unit of work's audit rows say happened, as (counter, label).
_COUNTED_TAGS: dict[str, tuple[Any, str]] = {
    AuditTag.LINK_AUTO: (LINK_DECISIONS, "auto_link"),
    AuditTag.LINK_NEW: (LINK_DECISIONS, "new_person"),
    AuditTag.REVIEW_OPEN: (LINK_DECISIONS, "review"),
    AuditTag.LINK_MANUAL: (LINK_DECISIONS, "manual_link"),
    AuditTag.UNLINK_MANUAL: (LINK_DECISIONS, "unlink"),
    AuditTag.MERGE_CREATE: (LINK_DECISIONS, "merge"),
    AuditTag.MERGE_AUTO: (LINK_DECISIONS, "auto_merge"),
    AuditTag.MERGE_UNDO: (LINK_DECISIONS, "merge_undone"),
    AuditTag.REVIEW_RESOLVE: (LINK_DECISIONS, "review_resolved"),
    AuditTag.PATIENT_CREATE: (RECORDS_WRITTEN, "create"),
    AuditTag.PATIENT_UPDATE: (RECORDS_WRITTEN, "update"),
    AuditTag.PATIENT_DELETE: (RECORDS_WRITTEN, "delete"),
}


def committed(tags: Iterable[str]) -> None:
    """Count what a unit of work did, once it committed (called by the unit of work with
    its audit rows' tags: the audit trail and the counters cannot disagree)."""
    for tag in tags:
        counted = _COUNTED_TAGS.get(tag)
        if counted is not None:
            counter, label = counted
            counter.labels(label).inc()


# --- the pool ---------------------------------------------------------------------------------


@contextmanager
def pool_wait() -> Iterator[None]:
    """Time a connection borrowed from the pool (see :func:`pool_in_use`)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        POOL_WAIT.observe(time.perf_counter() - started)


def pool_in_use(db: Any) -> None:
    """Record how many connections ``db``'s pool (peewee's ``playhouse.pool``) lends now."""
    in_use = getattr(db, "_in_use", None)
    if in_use is not None:
        POOL_IN_USE.set(len(in_use))


def pool_size(max_connections: int) -> None:
    """This process's share of the pool's capacity."""
    POOL_SIZE.set(max_connections)


# --- several processes ------------------------------------------------------------------------


def start_multiprocess(base: str | None) -> str:
    """For ``mpi serve``'s master, before it forks: a fresh directory under ``base`` (a tmpfs;
    None: the system's temporary directory) for every process's metrics, named in
    ``PROMETHEUS_MULTIPROC_DIR`` (the children inherit it); metrics counted from now on in
    this process and its children are kept there."""
    base = base or tempfile.gettempdir()
    _remove_orphans(base)
    directory = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=base)
    os.environ[ENV] = directory
    # prometheus_client chose its value class when it was imported (this module imports it):
    # switch it, so every metric child made from now on is backed by the directory.
    _values.ValueClass = _values.MultiProcessValue()
    _reset_children()
    return directory


def _reset_children() -> None:
    """Drop children made before :func:`start_multiprocess` (kept in process memory); the
    unlabelled metrics get a value backed by the directory."""
    for metric in _ALL:
        if metric._labelnames:
            with metric._lock:
                metric._metrics.clear()
        else:
            metric._metric_init()


_PREFIX = "mpi-metrics-"


def _remove_orphans(base: str) -> None:
    """Remove the directories of earlier starts whose master is gone (killed outright, it
    could not remove its own)."""
    for name in os.listdir(base):
        if not name.startswith(_PREFIX):
            continue
        pid = name[len(_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)


def stop_multiprocess(directory: str) -> None:
    """The master is leaving: remove the directory."""
    shutil.rmtree(directory, ignore_errors=True)
    if os.environ.get(ENV) == directory:
        del os.environ[ENV]


def process_died(pid: int) -> None:
    """A worker or child of the master exited: its live gauges no longer count."""
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def multiprocess_directory() -> str | None:
    return os.environ.get(ENV) or None


# --- the scrape -------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueDepth:
    kind: str
    open: int
    oldest_age_seconds: float


@dataclass(frozen=True)
class State:
    """What the database says at scrape time."""

    queue: list[QueueDepth]
    index_behind_events: int | None  # None: the index is unavailable
    index_behind_seconds: float
    index_applied_event: int | None
    log_last_event: int | None
    model_version: str
    link_threshold: float
    review_threshold: float


class StateCollector(Collector):
    """Gauges read from the database when scraped (one ``State`` per scrape)."""

    def __init__(self, read: Callable[[], State]):
        self._read = read

    def collect(self) -> Iterable[Any]:
        state = self._read()
        depth = GaugeMetricFamily(f"{NAMESPACE}_review_queue_depth",
                                  "Open reviews, by kind", labels=["kind"])
        oldest = GaugeMetricFamily(f"{NAMESPACE}_review_queue_oldest_age_seconds",
                                   "Age of the oldest open review, by kind (0: none open)",
                                   labels=["kind"])
        for q in state.queue:
            depth.add_metric([q.kind], q.open)
            oldest.add_metric([q.kind], q.oldest_age_seconds)
        yield depth
        yield oldest
        up = GaugeMetricFamily(f"{NAMESPACE}_search_index_available",
                               "1 when the search index can be read, else 0")
        up.add_metric([], 0 if state.index_behind_events is None else 1)
        yield up
        lag = GaugeMetricFamily(f"{NAMESPACE}_search_index_lag_events",
                                "Change-log events committed but not yet in the search index")
        lag.add_metric([], state.index_behind_events or 0)
        yield lag
        lag_s = GaugeMetricFamily(f"{NAMESPACE}_search_index_lag_seconds",
                                  "Age of the oldest change not yet in the search index "
                                  "(0: none waiting)")
        lag_s.add_metric([], state.index_behind_seconds)
        yield lag_s
        if state.index_applied_event is not None:
            applied = GaugeMetricFamily(f"{NAMESPACE}_search_index_applied_event_id",
                                        "Newest change-log event id the search index holds")
            applied.add_metric([], state.index_applied_event)
            yield applied
        if state.log_last_event is not None:
            newest = CounterMetricFamily(f"{NAMESPACE}_change_log_events",
                                         "Newest change-log event id (every change to a "
                                         "record or a link; its rate is the write rate)")
            newest.add_metric([], state.log_last_event)
            yield newest
        model = InfoMetricFamily(f"{NAMESPACE}_model", "The matching model in use")
        model.add_metric([], {"version": state.model_version,
                              "link_threshold": f"{state.link_threshold:g}",
                              "review_threshold": f"{state.review_threshold:g}"})
        yield model


def build_info(version: str, commit: str | None) -> Collector:
    class BuildInfo(Collector):
        def collect(self) -> Iterable[Any]:
            info = InfoMetricFamily(f"{NAMESPACE}_build", "The running release")
            info.add_metric([], {"version": version, "commit": commit or "unknown"})
            yield info
    return BuildInfo()


def exposition(extra: Iterable[Collector], accept: str | None) -> tuple[bytes, str]:
    """One scrape: every process's metrics (or this process's, outside ``mpi serve``) and
    ``extra`` collectors, in the format ``accept`` asks for (Prometheus text by default,
    OpenMetrics when asked)."""
    from prometheus_client.exposition import choose_encoder

    registry = CollectorRegistry()
    directory = multiprocess_directory()
    if directory is not None:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry, path=directory)
    else:
        registry.register(_ThisProcess())
    for collector in extra:
        registry.register(collector)
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


class _ThisProcess(Collector):
    """This process's own metrics of this module (a single process: tests, commands)."""

    def collect(self) -> Iterable[Any]:
        for metric in _ALL:
            yield from metric.collect()


_ALL: list[Any] = [HTTP_REQUESTS, HTTP_DURATION, LINK_DECISIONS, RECORDS_WRITTEN, POOL_IN_USE,
                   POOL_SIZE, POOL_WAIT, POOL_EXHAUSTED, INDEX_APPLIED, INDEX_REBUILDS,
                   IMPORTED, HL7_MESSAGES, HL7_DURATION]
