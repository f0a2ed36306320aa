"""Test data builders."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from toolkit.procs import free_port as free_port  # re-exported for the tests

SSN = "urn:oid:2.16.840.1.113883.4.1"
MRN = "urn:oid:1.2.36.146.595.217.0.1"

JOHN: dict[str, Any] = {
    "source": "st-marys-ehr",
    "source_id": "A-1001",
    "names": [{"use": "official", "family": "Smith", "given": ["John", "Paul"]}],
    "gender": "male",
    "birth_date": "1980-05-17",
    "identifiers": [{"system": SSN, "value": "123-45-6789", "type": "SS"}],
    "addresses": [{"line": ["12 High St"], "city": "Springfield", "state": "IL",
                   "postal_code": "62701", "country": "US"}],
    "telecom": [{"system": "phone", "value": "+1-217-555-0100", "use": "home"}],
}


def patient(**changes: Any) -> dict[str, Any]:
    """JOHN with top-level fields replaced (None removes a field)."""
    body = copy.deepcopy(JOHN)
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def http_json(port: int, method: str, path: str, body: object = None,
              headers: dict[str, str] | None = None,
              timeout: float = 10) -> tuple[int, dict[str, str], Any]:
    """One request to 127.0.0.1:port: (status, lower-cased headers, parsed JSON body or None)."""
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        sent = {**({"Content-Type": "application/json"} if data else {}), **(headers or {})}
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    return (response.status, {k.lower(): v for k, v in response.getheaders()},
            json.loads(raw) if raw else None)


def stop_process(proc: Any, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    import signal
    import subprocess

    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def plan_as_run(db: Any, name: str, sql: str, params: Sequence[Any], *,
                explain: str = "EXPLAIN") -> list[Any]:
    """The plan PostgreSQL runs ``sql`` (psycopg's ``%s`` placeholders) with on ``db``'s
    connection, as the service sends it: prepared as ``name``, so with the connection's
    ``plan_cache_mode`` (the service's: generic plans). A plain EXPLAIN of a statement with
    parameters plans for the values instead, which hides what runs. The rows of
    ``{explain} EXECUTE``."""
    import psycopg

    parts = sql.split("%s")  # psycopg's placeholders, numbered as PREPARE wants
    db.execute_sql(f"PREPARE {name} AS " + "".join(
        f"{part}${n}" for n, part in enumerate(parts[:-1], 1)) + parts[-1])
    marks = ", ".join(["%s"] * len(params))
    statement = psycopg.ClientCursor(db.connection()).mogrify(
        f"{explain} EXECUTE {name} ({marks})", params)
    return [row[0] for row in db.execute_sql(statement).fetchall()]


def rows_read(node: dict[str, Any], table: str) -> int:
    """Rows (or index entries) the scans of ``table`` in a plan (a node of ``EXPLAIN
    (ANALYZE, FORMAT JSON)``) read in all, kept or filtered out."""
    read = 0
    if "Scan" in node["Node Type"] and node.get("Relation Name") == table:
        read = (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * node["Actual Loops"]
    return read + sum(rows_read(child, table) for child in node.get("Plans", ()))
