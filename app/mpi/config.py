"""Settings from the environment: one frozen object, validated at start-up.

Every variable the service reads is declared once in ``SETTINGS`` below, with
its default and meaning; the environment templates in ``envs/`` and the
reference in DEPLOY.md list the same names. Any variable can instead be read
from a file named by ``NAME_FILE`` (container secrets). All problems are
collected and reported together, so a bad deployment shows every mistake in
one start attempt.

This module imports only the standard library: ``mpi healthcheck`` uses it
and must start fast.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit, urlunsplit

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("json", "text")


class ConfigError(Exception):
    """The environment does not describe a valid configuration."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


# --- parsers: take the raw string, return the value or raise ValueError ------------------


def _positive_int(raw: str) -> int:
    value = int(raw.strip())
    if value < 1:
        raise ValueError("must be a whole number >= 1")
    return value


def _processes(auto_at_most: int, at_most: int) -> Callable[[str], int]:
    """A parser for a number of processes: ``auto`` = one per CPU core, at most
    ``auto_at_most``; otherwise 1 to ``at_most``."""

    def parse(raw: str) -> int:
        if raw.strip().lower() == "auto":
            return min(os.cpu_count() or 1, auto_at_most)
        value = _positive_int(raw)
        if value > at_most:
            raise ValueError(f"must be at most {at_most}, or auto")
        return value

    return parse


def _port(raw: str) -> int:
    value = int(raw.strip())
    if not 1 <= value <= 65535:
        raise ValueError("must be a TCP port between 1 and 65535")
    return value


def _optional_port(raw: str) -> int | None:
    return _port(raw) if raw.strip() else None


def _optional_host(raw: str) -> str | None:
    return _host(raw) if raw.strip() else None


def _hd(raw: str) -> str:
    """An HL7 v2 namespace id (HD-1), as written into the service's own MSH-3/MSH-4."""
    value = raw.strip()
    if not value or len(value) > 64 or any(c in value for c in "|^~\\&\r\n"):
        raise ValueError("must be 1-64 characters, none of | ^ ~ \\ &")
    return value


def _workers(raw: str) -> int:
    if raw.strip().lower() == "auto":
        return min(2 * (os.cpu_count() or 1) + 1, 8)
    return _positive_int(raw)


def _read_audit_window(raw: str) -> float:
    value = float(raw.strip())
    if not (math.isfinite(value) and 0 <= value <= 5):
        raise ValueError("must be a number of seconds between 0 and 5")
    return value


def _timeout(raw: str) -> float:
    value = float(raw.strip())
    if not (math.isfinite(value) and 0.1 <= value <= 3600):
        raise ValueError("must be a number of seconds between 0.1 and 3600")
    return value


def _probability(raw: str) -> float:
    value = float(raw.strip())
    if not 0.0 < value <= 1.0:
        raise ValueError("must be a probability in (0, 1]")
    return value


def _choice(options: tuple[str, ...], *, upper: bool = False) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().upper() if upper else raw.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def _host(raw: str) -> str:
    value = raw.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError("must be a host name or IP address")
    return value


def _path(raw: str) -> Path:
    if not raw.strip():
        raise ValueError("must not be empty")
    return Path(raw.strip())


def _fuzzy_distance(raw: str) -> int:
    value = int(raw.strip())
    if not 0 <= value <= 2:
        raise ValueError("must be 0, 1 or 2")
    return value


def _seconds(low: float, high: float, *, off: bool = False) -> Callable[[str], float]:
    """A parser for a number of seconds from ``low`` to ``high`` (or 0, meaning off, when
    ``off``)."""
    words = f"between {low:g} and {high:g}" + (", or 0 (off)" if off else "")

    def parse(raw: str) -> float:
        value = float(raw.strip())
        if not (math.isfinite(value) and (low <= value <= high or (off and value == 0))):
            raise ValueError(f"must be a number of seconds {words}")
        return value

    return parse


_poll_interval = _seconds(0.05, 10)
_commit_interval = _seconds(0.05, 30)
_refresh = _seconds(10, 86400, off=True)
_ready_lag = _seconds(0, 86400)  # 0: readiness only reports the lag


def _switch(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("true", "on", "yes", "1"):
        return True
    if value in ("false", "off", "no", "0"):
        return False
    raise ValueError("must be true or false")


def _niceness(raw: str) -> int:
    value = int(raw.strip())
    if not 0 <= value <= 19:
        raise ValueError("must be a whole number between 0 and 19")
    return value


def _loadable_file(load: Callable[[Path], object], file_kind: str,
                   valid_kind: str) -> Callable[[str], Path | None]:
    """A parser for an optional file setting: empty = what the package ships; otherwise
    a file that ``load`` (imported only when a file is named) reads without error."""

    def parse(raw: str) -> Path | None:
        if not raw.strip():
            return None
        path = Path(raw.strip())
        try:
            load(path)
        except OSError as exc:
            raise ValueError(f"cannot read the {file_kind} file: {exc.strerror}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a valid {valid_kind}: {exc}") from None
        return path

    return parse


def _load_model(path: Path) -> object:
    from mpi.matching.model import Model

    return Model.load(path)


def _load_placeholders(path: Path) -> object:
    from mpi.matching.placeholders import Placeholders

    return Placeholders.load(path)


_model_path = _loadable_file(_load_model, "model", "matching model")
_placeholders_path = _loadable_file(_load_placeholders, "placeholder", "placeholder file")


AUTH_MODES = ("none", "token", "jwt")
#: Signature algorithms a bearer JWT may use: asymmetric only (never "none", never HS*,
#: which would let anyone holding the public key forge tokens).
JWT_ALGORITHMS = ("RS256", "RS384", "ES256", "ES384")


def _algorithms(raw: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(a.strip() for a in raw.split(",") if a.strip()))
    if not names:
        raise ValueError(f"name at least one of {', '.join(JWT_ALGORITHMS)}")
    bad = [a for a in names if a not in JWT_ALGORITHMS]
    if bad:
        raise ValueError(f"{', '.join(bad)} not allowed; choose from {', '.join(JWT_ALGORITHMS)}")
    return names


def _optional_text(raw: str) -> str:
    return raw.strip()


def _https_url(raw: str) -> str:
    value = raw.strip()
    if value and not (value.startswith("https://") or value.startswith("http://127.0.0.1")
                      or value.startswith("http://localhost")):
        raise ValueError("must be an https:// URL (http:// only on localhost)")
    return value


def _optional_file(raw: str) -> Path | None:
    value = raw.strip()
    if not value:
        return None
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"no such file: {value}")
    try:
        path.open("rb").close()
    except OSError as exc:
        raise ValueError(f"cannot read {value}: {exc.strerror}") from exc
    return path


def _leeway(raw: str) -> int:
    value = _nonnegative_int(raw)
    if value > 300:
        raise ValueError("must be at most 300 seconds")
    return value


def _nonnegative_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError("must be a whole number") from exc
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _client_sources(raw: str) -> dict[str, frozenset[str]]:
    """``"lab-system=lab; ehr=st-marys-ehr,st-marys-adt; engine=*"``."""
    from mpi.domain.access import parse_sources

    out: dict[str, frozenset[str]] = {}
    for entry in (e.strip() for e in raw.split(";")):
        if not entry:
            continue
        client, sep, sources = entry.partition("=")
        if not sep or not client.strip():
            raise ValueError(f"{entry!r}: write CLIENT=SOURCE[,SOURCE...] entries "
                             "separated by ';'")
        out[client.strip()] = parse_sources(sources)
    return out


def _session_secret(raw: str) -> str:
    """The key material of the pages' session cookies; empty: a random one, drawn once when
    the settings are loaded (``mpi serve``'s master, before it forks: its workers share it)."""
    import secrets

    value = raw.strip()
    if not value:
        return secrets.token_urlsafe(32)
    if len(value) < 32:
        raise ValueError("must be at least 32 characters (e.g. python3 -c 'import secrets; "
                         "print(secrets.token_urlsafe(32))')")
    return value


def _session_hours(raw: str) -> int:
    value = int(raw.strip())
    if not 1 <= value <= 24:
        raise ValueError("must be a whole number of hours between 1 and 24")
    return value


def _networks(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for part in (p.strip() for p in raw.split(",")):
        if part:
            try:
                nets.append(ipaddress.ip_network(part, strict=False))
            except ValueError as exc:
                raise ValueError(f"{part!r} is not an IP address or CIDR network") from exc
    return tuple(nets)


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (SERVER_HOST) binds only to the loopback interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _database_url(raw: str) -> str:
    parse_database_url(raw)
    return raw.strip()


# libpq connection parameters accepted in a postgresql:// URL's query string.
LIBPQ_OPTIONS = frozenset({
    "host", "hostaddr", "port", "dbname", "user", "password", "passfile", "channel_binding",
    "connect_timeout", "client_encoding", "options", "application_name",
    "fallback_application_name", "keepalives", "keepalives_idle", "keepalives_interval",
    "keepalives_count", "tcp_user_timeout", "sslmode", "sslcompression", "sslcert", "sslkey",
    "sslpassword", "sslcertmode", "sslrootcert", "sslcrl", "sslcrldir", "sslsni",
    "requirepeer", "ssl_min_protocol_version", "ssl_max_protocol_version", "gssencmode",
    "krbsrvname", "gsslib", "gssdelegation", "service", "target_session_attrs",
    "load_balance_hosts",
})
SECRET_OPTIONS = frozenset({"password", "sslpassword"})
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


@dataclass(frozen=True)
class DatabaseTarget:
    """What ``DATABASE_URL`` points at, split into the parts a driver needs."""

    kind: str  # "sqlite" | "postgresql"
    path: str = ""  # sqlite: the file's path (":memory:" is refused)
    host: str = ""
    port: int | None = None
    user: str = ""
    password: str = ""
    dbname: str = ""
    options: tuple[tuple[str, str], ...] = ()


def parse_database_url(raw: str) -> DatabaseTarget:
    """Split a database URL; raise ValueError naming what is wrong.

    ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``,
    ``postgresql://user:pass@host:5432/dbname?sslmode=require``.
    """
    url = raw.strip()
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        if parts.netloc:
            raise ValueError("sqlite URLs take no host: use sqlite:///relative.db or sqlite:////abs.db")
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if not path:
            raise ValueError("sqlite URL names no file")
        if path == ":memory:" or path.startswith("file::memory:"):
            raise ValueError("the embedded database must be a file: the service runs "
                             "several processes, which cannot share an in-memory database")
        return DatabaseTarget(kind="sqlite", path=unquote(path))
    if scheme in ("postgresql", "postgres"):
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(query) - LIBPQ_OPTIONS)
        if unknown:
            raise ValueError(f"unknown connection option(s) {', '.join(unknown)}")
        if "sslmode" in query and query["sslmode"] not in SSL_MODES:
            raise ValueError(f"sslmode must be one of {', '.join(SSL_MODES)}")
        try:
            port = parts.port or (int(query["port"]) if query.get("port") else None)
        except ValueError as exc:
            raise ValueError("postgresql URL has an invalid port") from exc
        # The URL's own parts win over the same option given in the query string.
        target = DatabaseTarget(
            kind="postgresql",
            host=parts.hostname or query.get("host", ""),
            port=port,
            user=unquote(parts.username or "") or query.get("user", ""),
            password=unquote(parts.password or "") or query.get("password", ""),
            dbname=unquote(parts.path.lstrip("/")) or query.get("dbname", ""),
            options=tuple(sorted((k, v) for k, v in query.items()
                                 if k not in ("host", "port", "user", "password", "dbname"))),
        )
        if not target.dbname:
            raise ValueError("postgresql URL names no database (…/dbname)")
        if not target.host:
            raise ValueError("postgresql URL names no host")
        return target
    raise ValueError("must start with sqlite:// or postgresql://")


def mask_url(raw: str) -> str:
    """The URL with its password (in the user part or the query string) replaced by ``***``."""
    parts = urlsplit(raw)
    query_secrets = {k for k, _ in parse_qsl(parts.query)} & SECRET_OPTIONS
    if parts.password is None and not query_secrets:
        return raw
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(f"{k}=***" if k in SECRET_OPTIONS else f"{k}={v}"
                     for k, v in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, query, ""))


@dataclass(frozen=True)
class Setting:
    """One environment variable: its parser, default and meaning."""

    env: str
    attr: str
    parse: Callable[[str], Any]
    default: str
    help: str
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("DATABASE_URL", "database_url", _database_url, "sqlite:///data/mpi.db",
            "Database to use: sqlite:///path (embedded, the default) or "
            "postgresql://user:password@host:5432/dbname", secret=True),
    Setting("DATABASE_MAX_CONNECTIONS", "database_max_connections", _positive_int, "10",
            "PostgreSQL connections each worker process may hold open (pool size)"),
    Setting("DATABASE_TIMEOUT", "database_timeout", _timeout, "10",
            "Seconds a request waits for a pooled connection (and for SQLite's write lock)"),
    Setting("DATABASE_PREPARED_STATEMENTS", "database_prepared_statements", _switch, "true",
            "PostgreSQL: plan the record read, the candidate look-ups and a record's INSERTs "
            "once per connection (prepared statements); "
            "false behind a PgBouncer older than 1.21 or without max_prepared_statements"),
    Setting("SERVER_HOST", "server_host", _host, "127.0.0.1",
            "Address the HTTP server binds to (0.0.0.0 in containers)"),
    Setting("SERVER_PORT", "server_port", _port, "8080", "TCP port the HTTP server listens on"),
    Setting("WORKERS", "workers", _workers, "auto",
            "gunicorn worker processes; auto = 2 x CPU cores + 1, at most 8"),
    Setting("THREADS", "threads", _positive_int, "1",
            "Threads per worker process, each serving one request at a time (requests are read "
            "whole by the worker's event loop first, so slow clients hold no thread)"),
    Setting("REQUEST_TIMEOUT", "request_timeout", _positive_int, "30",
            "Seconds a worker may spend on one request before it is restarted"),
    Setting("GRACEFUL_TIMEOUT", "graceful_timeout", _positive_int, "30",
            "Seconds in-flight requests get to finish after SIGTERM"),
    Setting("SEARCH_INDEX_PATH", "search_index_path", _path, "data/search-index",
            "Directory of this instance's full-text search index"),
    Setting("SEARCH_FUZZY_DISTANCE", "search_fuzzy_distance", _fuzzy_distance, "1",
            "Edit distance allowed for name words in searches (0 = exact, at most 2)"),
    Setting("SEARCH_POLL_INTERVAL", "search_poll_interval", _poll_interval, "0.2",
            "Seconds between the search indexer's polls of the change log"),
    Setting("SEARCH_COMMIT_INTERVAL", "search_commit_interval", _commit_interval, "1",
            "Shortest seconds between two search-index commits while records keep arriving "
            "(a write to a quiet registry is indexed at the next poll)"),
    Setting("SEARCH_READY_MAX_LAG", "search_ready_max_lag", _ready_lag, "0",
            "Seconds the search index may lag the change log before readiness answers 503 "
            "(an instance whose search is incomplete is taken out of rotation); 0 = "
            "readiness only reports the lag"),
    Setting("SEARCH_REBUILD_PROCESSES", "search_rebuild_processes", _processes(8, 64), "auto",
            "Processes that build a new search index from PostgreSQL (fresh instance, damaged "
            "index, mpi reindex), each indexing a share of the records at the lowest CPU "
            "priority; auto = one per CPU core, at most 8; 1 = in the indexer process (always "
            "so on SQLite)"),
    Setting("SEARCH_WORKER_NICENESS", "search_worker_niceness", _niceness, "10",
            "Niceness the request workers and the MLLP listener add to themselves (0-19) so "
            "that under a full CPU "
            "the search indexer process runs first rather than being starved by requests; "
            "0 = same priority"),
    Setting("MATCHING_THRESHOLD", "matching_threshold", _probability, "0.95",
            "Match probability at or above which a record is linked automatically"),
    Setting("MATCHING_REVIEW_THRESHOLD", "matching_review_threshold", _probability, "0.5",
            "Match probability from which a record goes to the review queue (below "
            "MATCHING_THRESHOLD; lower scores start a new person)"),
    Setting("MATCHING_TWIN_GUARD", "matching_twin_guard", _switch, "true",
            "Send twin-like matches (same birth date, different given name, no shared SSN "
            "or identifier; or one given name with birth years a generation apart) to "
            "review instead of linking them; false links them on score"),
    Setting("MATCHING_AUTO_MERGE", "matching_auto_merge", _switch, "true",
            "Merge two persons, in the record's transaction, when a record reaches both and "
            "they match as wholes above MATCHING_THRESHOLD (never persons a steward kept "
            "apart; undoable); false leaves them to a possible-duplicate review"),
    Setting("MATCHING_FREQUENCIES_REFRESH", "matching_frequencies_refresh", _refresh, "900",
            "Seconds between counts of how common each name, city, state and postal code is "
            "in the registry: agreement on a value commoner than the model assumes weighs "
            "less (everybody in a one-town registry shares its postal code); each serving "
            "process counts 5-10 s after it starts and then this often; 0 = never, the "
            "model's weights alone"),
    Setting("MATCHING_MODEL_PATH", "matching_model_path", _model_path, "",
            "Matching model file written by mpi train; empty = the model shipped in the "
            "package"),
    Setting("MATCHING_PLACEHOLDERS_PATH", "matching_placeholders_path", _placeholders_path, "",
            "JSON file of placeholder values treated as missing in matching (Unknown, Baby "
            "Boy, postal code 00000, ...); replaces the list shipped in the package; empty = "
            "that list"),
    Setting("AUDIT_SYNCHRONOUS_READS", "audit_synchronous_reads", _switch, "false",
            "true: a read's audit row is written and flushed to disk before the answer "
            "(PostgreSQL; AUDIT_READ_WINDOW is then not used); false: it reaches the disk "
            "within a second of being written and a database crash may lose the newest ones "
            "(writes and their audit rows are always flushed first)"),
    Setting("AUDIT_READ_WINDOW", "audit_read_window", _read_audit_window, "0.2",
            "Seconds a read's audit row may wait to be written with others in one "
            "transaction (0-5; 0 = each before its answer, as with AUDIT_SYNCHRONOUS_READS); "
            "a clean shutdown writes them all, a crash of the process loses at most this "
            "window's"),
    Setting("AUTH_MODE", "auth_mode", _choice(AUTH_MODES), "none",
            "none (no credentials; refused unless SERVER_HOST is loopback), token (API "
            "tokens made with mpi token create) or jwt (OAuth 2.0 bearer tokens from the "
            "identity provider)"),
    Setting("AUTH_ISSUER", "auth_issuer", _optional_text, "",
            "jwt: the identity provider's issuer (the tokens' iss claim)"),
    Setting("AUTH_AUDIENCE", "auth_audience", _optional_text, "",
            "jwt: this service's audience (the tokens' aud claim)"),
    Setting("AUTH_JWKS_URL", "auth_jwks_url", _https_url, "",
            "jwt: where the identity provider publishes its signing keys (JWKS)"),
    Setting("AUTH_JWKS_FILE", "auth_jwks_file", _optional_file, "",
            "jwt: the signing keys as a JWKS file (air-gapped sites; instead of the URL)"),
    Setting("AUTH_ALGORITHMS", "auth_algorithms", _algorithms, "RS256,ES256",
            "jwt: signature algorithms accepted, from RS256, RS384, ES256, ES384"),
    Setting("AUTH_LEEWAY", "auth_leeway", _leeway, "30",
            "jwt: seconds of clock skew allowed on exp and nbf (at most 300)"),
    Setting("AUTH_JWKS_COOLDOWN", "auth_jwks_cooldown", _nonnegative_int, "60",
            "jwt: seconds between fetches of the JWKS caused by an unknown key id"),
    Setting("AUTH_SOURCES_CLAIM", "auth_sources_claim", _optional_text, "mpi_sources",
            "jwt: the claim listing the sources a client may write (a list or a "
            "space-separated string); AUTH_CLIENT_SOURCES is used when it is absent"),
    Setting("AUTH_CLIENT_SOURCES", "auth_client_sources", _client_sources, "",
            "jwt: sources each client may write, e.g. 'lab-system=lab; ehr=st-marys-ehr'; "
            "'*' = any source"),
    Setting("UI_SESSION_SECRET", "ui_session_secret", _session_secret, "",
            "Key that seals the steward pages' session cookies (at least 32 characters); "
            "empty = a random one each start (every steward signs in again after a restart; "
            "set it when several instances serve the pages)", secret=True),
    Setting("UI_SESSION_HOURS", "ui_session_hours", _session_hours, "8",
            "Hours a steward's sign-in to the pages lasts (1-24)"),
    Setting("UI_OIDC_CLIENT_ID", "ui_oidc_client_id", _optional_text, "",
            "jwt: the steward pages' client id at the identity provider (a public client "
            "signing in with the authorization code flow and PKCE); empty = the pages take a "
            "pasted token instead"),
    Setting("UI_OIDC_CLIENT_SECRET", "ui_oidc_client_secret", _optional_text, "",
            "jwt: the client secret, if the identity provider registered the pages as a "
            "confidential client", secret=True),
    Setting("UI_OIDC_SCOPES", "ui_oidc_scopes", _optional_text, "openid mpi:steward",
            "jwt: scopes the pages ask the identity provider for (mpi:steward is needed)"),
    Setting("TRUSTED_PROXIES", "trusted_proxies", _networks, "",
            "Addresses or CIDR networks of reverse proxies whose X-Forwarded-For / "
            "Forwarded headers are believed for the client's address (default: none)"),
    Setting("TLS_CERT_FILE", "tls_cert_file", _optional_file, "",
            "PEM certificate chain to serve HTTPS directly (with TLS_KEY_FILE); leave "
            "unset behind a TLS-terminating proxy"),
    Setting("TLS_KEY_FILE", "tls_key_file", _optional_file, "",
            "PEM private key for TLS_CERT_FILE", secret=True),
    Setting("HL7_MLLP_PORT", "hl7_mllp_port", _optional_port, "",
            "TCP port of the HL7 v2 MLLP listener (PIX feed, PIX query, PDQ) that mpi serve "
            "starts beside the HTTP server; empty = no listener"),
    Setting("HL7_MLLP_HOST", "hl7_mllp_host", _optional_host, "",
            "Address the MLLP listener binds to; empty = SERVER_HOST"),
    Setting("HL7_MLLP_THREADS", "hl7_mllp_threads", _positive_int, "4",
            "Messages each MLLP listener process handles at once (one per connection at a "
            "time)"),
    Setting("HL7_MLLP_PROCESSES", "hl7_mllp_processes", _processes(4, 32), "auto",
            "MLLP listener processes sharing the port (1-32; auto = CPU cores, at most 4): "
            "one process uses at most one core; each has HL7_MLLP_THREADS threads and its "
            "own database connections"),
    Setting("HL7_MLLP_TLS_CERT_FILE", "hl7_mllp_tls_cert_file", _optional_file, "",
            "PEM certificate chain: the MLLP listener speaks TLS (with HL7_MLLP_TLS_KEY_FILE)"),
    Setting("HL7_MLLP_TLS_KEY_FILE", "hl7_mllp_tls_key_file", _optional_file, "",
            "PEM private key for HL7_MLLP_TLS_CERT_FILE", secret=True),
    Setting("HL7_MLLP_TLS_CLIENT_CA_FILE", "hl7_mllp_tls_client_ca_file", _optional_file, "",
            "PEM CA certificates: every MLLP sender must present a client certificate they "
            "signed, whose subject common name is the one its sender registration names"),
    Setting("HL7_MLLP_TRUST_NETWORK", "hl7_mllp_trust_network", _switch, "false",
            "true: on a non-loopback address without client certificates, believe MSH-3 and "
            "MSH-4 as the sender's identity (a dedicated interface network); false refuses "
            "to start so"),
    Setting("HL7_RECEIPT_RETENTION_DAYS", "hl7_receipt_retention_days", _positive_int, "30",
            "Days the acknowledgement of each HL7 message that changed something is kept, so "
            "that the same message resent within them changes nothing"),
    Setting("HL7_APPLICATION", "hl7_application", _hd, "MPI",
            "What the service writes as its application (MSH-3) in acknowledgements"),
    Setting("HL7_FACILITY", "hl7_facility", _hd, "MPI",
            "What the service writes as its facility (MSH-4) in acknowledgements"),
    Setting("LOG_LEVEL", "log_level", _choice(LOG_LEVELS, upper=True), "INFO",
            "Least severe log level written: DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    Setting("LOG_FORMAT", "log_format", _choice(LOG_FORMATS), "json",
            "json (one JSON object a line, for log shippers) or text (for people)"),
)

ENV_NAMES: tuple[str, ...] = tuple(s.env for s in SETTINGS)


@dataclass(frozen=True)
class Settings:
    """The service's configuration. Build it with :func:`load` (or ``Settings.defaults()``)."""

    database_url: str
    database_max_connections: int
    database_timeout: float
    database_prepared_statements: bool
    server_host: str
    server_port: int
    workers: int
    threads: int
    request_timeout: int
    graceful_timeout: int
    search_index_path: Path
    search_fuzzy_distance: int
    search_poll_interval: float
    search_commit_interval: float
    search_ready_max_lag: float
    search_rebuild_processes: int
    search_worker_niceness: int
    matching_threshold: float
    matching_review_threshold: float
    matching_twin_guard: bool
    matching_auto_merge: bool
    matching_frequencies_refresh: float
    matching_model_path: Path | None
    matching_placeholders_path: Path | None
    audit_synchronous_reads: bool
    audit_read_window: float
    auth_mode: str
    auth_issuer: str
    auth_audience: str
    auth_jwks_url: str
    auth_jwks_file: Path | None
    auth_algorithms: tuple[str, ...]
    auth_leeway: int
    auth_jwks_cooldown: int
    auth_sources_claim: str
    auth_client_sources: Mapping[str, frozenset[str]]
    # Drawn at random when unset: two loads of the same environment differ only here.
    ui_session_secret: str = field(compare=False, repr=False)
    ui_session_hours: int
    ui_oidc_client_id: str
    ui_oidc_client_secret: str
    ui_oidc_scopes: str
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    tls_cert_file: Path | None
    tls_key_file: Path | None
    hl7_mllp_port: int | None
    hl7_mllp_host: str | None
    hl7_mllp_threads: int
    hl7_mllp_processes: int
    hl7_mllp_tls_cert_file: Path | None
    hl7_mllp_tls_key_file: Path | None
    hl7_mllp_tls_client_ca_file: Path | None
    hl7_mllp_trust_network: bool
    hl7_receipt_retention_days: int
    hl7_application: str
    hl7_facility: str
    log_level: str
    log_format: str
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def database(self) -> DatabaseTarget:
        return parse_database_url(self.database_url)

    @property
    def mllp_host(self) -> str:
        """The MLLP listener's address: HL7_MLLP_HOST, else SERVER_HOST."""
        return self.hl7_mllp_host or self.server_host

    @property
    def embedded(self) -> bool:
        """True when the database is the embedded SQLite file."""
        return self.database.kind == "sqlite"

    @classmethod
    def defaults(cls, **overrides: Any) -> Settings:
        """Defaults for every setting, with keyword overrides (for tests and tools)."""
        values = {s.attr: s.parse(s.default) for s in SETTINGS}
        values.update(overrides)
        return cls(**values)

    def effective(self) -> dict[str, str]:
        """Each variable's effective value as text, secrets masked."""
        out: dict[str, str] = {}
        for s in SETTINGS:
            value = getattr(self, s.attr)
            text = str(value)
            if s.env == "DATABASE_URL":
                text = mask_url(text)
            elif isinstance(value, tuple):
                text = ",".join(str(v) for v in value)
            elif isinstance(value, Mapping):
                text = "; ".join(f"{k}={','.join(sorted(v))}" for k, v in sorted(value.items()))
            elif value is None:
                text = ""
            elif s.secret:
                text = "***"
            out[s.env] = text
        return out


def _read_raw(setting: Setting, env: Mapping[str, str], problems: list[str],
              origin: str) -> tuple[str, str]:
    """The raw text for one setting and where it came from (env, file or default)."""
    name, file_var = setting.env, setting.env + "_FILE"
    if name in env and file_var in env:
        problems.append(f"{name}: set both {name} and {file_var}; set only one")
        return setting.default, "default"
    if file_var in env:
        try:
            text = Path(env[file_var]).read_text(encoding="utf-8")
        except OSError as exc:
            problems.append(f"{name}: cannot read {file_var}={env[file_var]}: {exc.strerror}")
            return setting.default, "default"
        return text.rstrip("\r\n"), f"file {env[file_var]}"
    if name in env:
        return env[name], origin
    return setting.default, "default"


def load(env: Mapping[str, str] | None = None, *, origin: str = "environment") -> Settings:
    """Build the settings from ``env`` (default: the process environment).

    ``origin`` names where ``env`` came from, as shown by ``mpi config check``.

    Raises :class:`ConfigError` listing every problem found.
    """
    env = os.environ if env is None else env
    problems: list[str] = []
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for setting in SETTINGS:
        raw, source = _read_raw(setting, env, problems, origin)
        try:
            values[setting.attr] = setting.parse(raw)
        except ValueError as exc:
            shown = "***" if setting.secret else repr(raw)
            problems.append(f"{setting.env}={shown}: {exc}")
            continue
        sources[setting.env] = source
    review, link = values.get("matching_review_threshold"), values.get("matching_threshold")
    if review is not None and link is not None and review > link:
        problems.append(f"MATCHING_REVIEW_THRESHOLD={review}: must not exceed "
                        f"MATCHING_THRESHOLD={link}")
    problems.extend(cross_check(values))
    if (values.get("audit_synchronous_reads") and values.get("audit_read_window")
            and sources.get("AUDIT_READ_WINDOW", "default") != "default"):
        problems.append(f"AUDIT_READ_WINDOW={values['audit_read_window']}: reads' audit rows "
                        "cannot wait with AUDIT_SYNCHRONOUS_READS=true (each is on disk "
                        "before its answer); set AUDIT_READ_WINDOW=0 or leave it unset")
    if problems:
        raise ConfigError(problems)
    return Settings(**values, sources=sources)


def cross_check(values: Mapping[str, Any]) -> list[str]:
    """Problems between settings (each one valid alone); empty when they fit together."""
    problems = []
    mode, host = values.get("auth_mode"), values.get("server_host")
    if mode == "none" and host is not None and not is_loopback_host(host):
        problems.append(
            f"AUTH_MODE=none: SERVER_HOST={host} would serve patient records to anyone who "
            "can reach it without credentials; set AUTH_MODE=jwt (with AUTH_ISSUER, "
            "AUTH_AUDIENCE and AUTH_JWKS_URL or AUTH_JWKS_FILE) or AUTH_MODE=token (tokens "
            "from mpi token create), or bind SERVER_HOST to 127.0.0.1")
    if mode == "jwt":
        for attr, env in (("auth_issuer", "AUTH_ISSUER"), ("auth_audience", "AUTH_AUDIENCE")):
            if not values.get(attr):
                problems.append(f"AUTH_MODE=jwt: set {env}")
        if bool(values.get("auth_jwks_url")) == bool(values.get("auth_jwks_file")):
            problems.append("AUTH_MODE=jwt: set exactly one of AUTH_JWKS_URL and AUTH_JWKS_FILE")
    if bool(values.get("tls_cert_file")) != bool(values.get("tls_key_file")):
        problems.append("TLS_CERT_FILE and TLS_KEY_FILE: set both to serve HTTPS, or neither")
    problems.extend(_mllp_problems(values))
    if values.get("ui_oidc_client_id") and mode != "jwt":
        problems.append("UI_OIDC_CLIENT_ID: the steward pages sign in through the identity "
                        "provider only with AUTH_MODE=jwt")
    return problems


def _mllp_problems(values: Mapping[str, Any]) -> list[str]:
    problems = []
    cert, key = values.get("hl7_mllp_tls_cert_file"), values.get("hl7_mllp_tls_key_file")
    if bool(cert) != bool(key):
        problems.append("HL7_MLLP_TLS_CERT_FILE and HL7_MLLP_TLS_KEY_FILE: set both for "
                        "MLLP over TLS, or neither")
    if values.get("hl7_mllp_tls_client_ca_file") and not cert:
        problems.append("HL7_MLLP_TLS_CLIENT_CA_FILE: client certificates need TLS; set "
                        "HL7_MLLP_TLS_CERT_FILE and HL7_MLLP_TLS_KEY_FILE too")
    host = values.get("hl7_mllp_host") or values.get("server_host")
    if (values.get("hl7_mllp_port") is not None and host is not None
            and not is_loopback_host(host) and not values.get("hl7_mllp_tls_client_ca_file")
            and not values.get("hl7_mllp_trust_network")):
        problems.append(
            f"HL7_MLLP_PORT: the listener on {host} would take any sender's word (MSH-3, "
            "MSH-4) for who it is; set HL7_MLLP_TLS_CLIENT_CA_FILE (senders present client "
            "certificates) or, on a dedicated interface network, HL7_MLLP_TRUST_NETWORK=true")
    if (values.get("hl7_mllp_port") is not None
            and values.get("hl7_mllp_port") == values.get("server_port")
            and host == values.get("server_host")):
        problems.append("HL7_MLLP_PORT: the same port as SERVER_PORT; pick another")
    return problems


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Variables from a dotenv-style file (``KEY=value`` lines, ``#`` comments)."""
    import io

    from dotenv import dotenv_values  # imported here: only ``config check`` needs it

    text = Path(path).read_text(encoding="utf-8")  # a missing file is an error, not "empty"
    return {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}


__all__ = [
    "ENV_NAMES",
    "SETTINGS",
    "ConfigError",
    "DatabaseTarget",
    "Setting",
    "Settings",
    "load",
    "mask_url",
    "parse_database_url",
    "read_env_file",
]
