"""Settings from the environment: defaults, validation (all problems at once), *_FILE secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpi import config
from mpi.config import ConfigError, Settings, load, mask_url, parse_database_url


def test_defaults_are_the_embedded_mode():
    s = load({})
    assert s.database_url == "sqlite:///data/mpi.db"
    assert s.embedded and s.database.path == "data/mpi.db"
    assert (s.server_host, s.server_port) == ("127.0.0.1", 8080)
    assert s.search_index_path == Path("data/search-index")
    assert s.log_format == "json" and s.log_level == "INFO"
    assert 1 <= s.workers <= 8
    assert s == Settings.defaults(workers=s.workers)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load({"SERVER_PORT": "99999", "WORKERS": "0", "MATCHING_THRESHOLD": "1.5",
              "LOG_LEVEL": "chatty", "LOG_FORMAT": "xml", "DATABASE_URL": "mysql://x/y"})
    names = [p.split("=", 1)[0] for p in err.value.problems]
    assert names == ["DATABASE_URL", "SERVER_PORT", "WORKERS", "MATCHING_THRESHOLD",
                     "LOG_LEVEL", "LOG_FORMAT"]
    assert "between 1 and 65535" in str(err.value)


def test_secrets_are_not_echoed_in_errors():
    with pytest.raises(ConfigError) as err:
        load({"DATABASE_URL": "postgresql://u:hunter2@/"})
    assert "hunter2" not in str(err.value)


def test_values_are_read_from_files(tmp_path):
    secret = tmp_path / "db-url"
    secret.write_text("postgresql://mpi:s3cret@db:5432/mpi\n")
    s = load({"DATABASE_URL_FILE": str(secret)})
    assert s.database.password == "s3cret"
    assert s.database.host == "db" and s.database.port == 5432
    assert s.sources["DATABASE_URL"] == f"file {secret}"
    assert s.effective()["DATABASE_URL"] == "postgresql://mpi:***@db:5432/mpi"


def test_file_and_value_together_is_an_error(tmp_path):
    (tmp_path / "p").write_text("9000")
    with pytest.raises(ConfigError, match="set only one"):
        load({"SERVER_PORT": "9000", "SERVER_PORT_FILE": str(tmp_path / "p")})


def test_unreadable_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read SERVER_PORT_FILE"):
        load({"SERVER_PORT_FILE": str(tmp_path / "missing")})


@pytest.mark.parametrize(("url", "kind", "detail"), [
    ("sqlite:///data/mpi.db", "sqlite", "data/mpi.db"),
    ("sqlite:////var/lib/mpi/mpi.db", "sqlite", "/var/lib/mpi/mpi.db"),
    ("postgresql://u:p%40ss@h:6543/db?sslmode=require", "postgresql", "p@ss"),
    ("postgres://u@h/db", "postgresql", ""),
])
def test_database_urls(url, kind, detail):
    target = parse_database_url(url)
    assert target.kind == kind
    assert detail in (target.path if kind == "sqlite" else target.password)


@pytest.mark.parametrize("url", ["sqlite://host/x.db", "sqlite:///", "sqlite:///:memory:",
                                 "postgresql://h/", "postgresql:///db", "postgresql://h:x/db",
                                 "oracle://h/db", "", "postgresql://h/db?foo=bar",
                                 "postgresql://h/db?sslmode=bogus",
                                 "postgresql://h/db?port=x"])
def test_bad_database_urls(url):
    with pytest.raises(ValueError):
        parse_database_url(url)


def test_mask_url():
    assert mask_url("postgresql://a:b@h/db") == "postgresql://a:***@h/db"
    assert mask_url("sqlite:///x.db") == "sqlite:///x.db"
    assert mask_url("postgresql://a@h/db?password=s3cret&sslmode=require") == \
        "postgresql://a@h/db?password=***&sslmode=require"


def test_connection_options_in_the_query_string_fold_into_the_target():
    target = parse_database_url("postgresql://h/db?user=u&password=p&port=6543&sslmode=require")
    assert (target.user, target.password, target.port) == ("u", "p", 6543)
    assert target.options == (("sslmode", "require"),)
    url_wins = parse_database_url("postgresql://a:b@h:5432/db?user=u&port=1")
    assert (url_wins.user, url_wins.password, url_wins.port) == ("a", "b", 5432)
    from mpi.storage.db import database_for

    database_for(target)  # builds without "multiple values for keyword argument"


@pytest.mark.parametrize("value", ["inf", "nan", "0", "1e-9", "99999"])
def test_database_timeout_must_be_sensible(value):
    with pytest.raises(ConfigError, match="DATABASE_TIMEOUT"):
        load({"DATABASE_TIMEOUT": value})


def test_workers_auto():
    assert load({"WORKERS": "auto"}).workers >= 1
    assert load({"WORKERS": "3"}).workers == 3


@pytest.mark.parametrize(("name", "attribute", "at_most_auto", "at_most"), [
    ("HL7_MLLP_PROCESSES", "hl7_mllp_processes", 4, 32),
    ("SEARCH_REBUILD_PROCESSES", "search_rebuild_processes", 8, 64),
])
def test_processes_auto_is_the_cores_with_a_cap(monkeypatch, name, attribute, at_most_auto,
                                                at_most):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert getattr(load({}), attribute) == 2
    monkeypatch.setattr("os.cpu_count", lambda: 100)
    assert getattr(load({name: "auto"}), attribute) == at_most_auto
    assert getattr(load({name: "1"}), attribute) == 1
    assert getattr(load({name: str(at_most)}), attribute) == at_most
    for bad in ("0", str(at_most + 1), "two"):
        with pytest.raises(ConfigError, match=name):
            load({name: bad})


@pytest.mark.parametrize(("raw", "value"), [("true", True), ("On", True), ("1", True),
                                             ("false", False), ("off", False), ("0", False)])
def test_twin_guard_switch(raw, value):
    assert load({"MATCHING_TWIN_GUARD": raw}).matching_twin_guard is value
    assert load({}).matching_twin_guard is True


def test_a_switch_that_is_neither_true_nor_false_is_an_error():
    with pytest.raises(ConfigError, match="MATCHING_TWIN_GUARD='maybe': must be true or false"):
        load({"MATCHING_TWIN_GUARD": "maybe"})


def test_env_file(tmp_path):
    env = tmp_path / ".env"
    env.write_text("# comment\nSERVER_PORT=9001\nLOG_FORMAT='text'\n")
    s = load(config.read_env_file(env))
    assert s.server_port == 9001 and s.log_format == "text"


def test_reads_audit_rows_wait_a_fifth_of_a_second_by_default_and_never_when_synchronous():
    assert load({}).audit_read_window == 0.2
    assert load({"AUDIT_READ_WINDOW": "0"}).audit_read_window == 0.0
    assert load({"AUDIT_READ_WINDOW": "1.5"}).audit_read_window == 1.5
    # Synchronous reads (each row on disk before its answer) leave the default unused...
    assert load({"AUDIT_SYNCHRONOUS_READS": "true"}).audit_synchronous_reads
    assert load({"AUDIT_SYNCHRONOUS_READS": "true", "AUDIT_READ_WINDOW": "0"})
    # ...and refuse a window asked for with them.
    with pytest.raises(ConfigError, match=r"AUDIT_READ_WINDOW=0\.5: .*AUDIT_SYNCHRONOUS_READS"):
        load({"AUDIT_SYNCHRONOUS_READS": "true", "AUDIT_READ_WINDOW": "0.5"})


@pytest.mark.parametrize("value", ["-0.1", "5.1", "nan", "inf", "soon"])
def test_the_read_audit_window_is_bounded(value):
    with pytest.raises(ConfigError, match="AUDIT_READ_WINDOW"):
        load({"AUDIT_READ_WINDOW": value})


def test_every_setting_is_documented_once():
    names = [s.env for s in config.SETTINGS]
    assert len(names) == len(set(names))
    assert all(s.help for s in config.SETTINGS)


# --------------------------------------------------------------------------- access control


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_no_authentication_is_allowed_on_loopback_only(host):
    assert config.load({"SERVER_HOST": host}).auth_mode == "none"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "mpi.internal"])
def test_no_authentication_on_another_address_is_refused_saying_what_to_set(host):
    with pytest.raises(config.ConfigError) as caught:
        config.load({"SERVER_HOST": host})
    (problem,) = caught.value.problems
    assert problem.startswith(f"AUTH_MODE=none: SERVER_HOST={host}")
    assert "AUTH_MODE=jwt" in problem and "AUTH_MODE=token" in problem
    assert config.load({"SERVER_HOST": host, "AUTH_MODE": "token"}).auth_mode == "token"


def test_jwt_needs_issuer_audience_and_one_key_source(tmp_path):
    with pytest.raises(config.ConfigError) as caught:
        config.load({"AUTH_MODE": "jwt"})
    assert caught.value.problems == [
        "AUTH_MODE=jwt: set AUTH_ISSUER", "AUTH_MODE=jwt: set AUTH_AUDIENCE",
        "AUTH_MODE=jwt: set exactly one of AUTH_JWKS_URL and AUTH_JWKS_FILE"]
    jwks = tmp_path / "jwks.json"
    jwks.write_text("{}")
    ok = config.load({"AUTH_MODE": "jwt", "AUTH_ISSUER": "https://idp", "AUTH_AUDIENCE": "mpi",
                      "AUTH_JWKS_FILE": str(jwks)})
    assert ok.auth_jwks_file == jwks and ok.auth_algorithms == ("RS256", "ES256")


@pytest.mark.parametrize(("env", "message"), [
    ({"AUTH_ALGORITHMS": "RS256,HS256"}, "HS256 not allowed"),
    ({"AUTH_ALGORITHMS": "none"}, "none not allowed"),
    ({"AUTH_LEEWAY": "3600"}, "at most 300"),
    ({"AUTH_JWKS_URL": "http://idp.example/certs"}, "https://"),
    ({"AUTH_CLIENT_SOURCES": "lab-system"}, "CLIENT=SOURCE"),
    ({"TRUSTED_PROXIES": "10.0.0.0/8, proxy.local"}, "not an IP address"),
    ({"TLS_CERT_FILE": "/nonexistent.pem"}, "no such file"),
])
def test_access_settings_are_validated(env, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(env)


def test_tls_needs_both_files(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(config.ConfigError, match="set both"):
        config.load({"TLS_CERT_FILE": str(cert)})
    loaded = config.load({"TLS_CERT_FILE": str(cert), "TLS_KEY_FILE": str(cert)})
    assert loaded.effective()["TLS_KEY_FILE"] == "***"


def test_client_sources_and_proxies_parse():
    loaded = config.load({"AUTH_CLIENT_SOURCES": "lab-system=lab; ehr=st-marys-ehr,adt; e=*",
                          "TRUSTED_PROXIES": "10.0.0.0/8,192.0.2.1"})
    assert loaded.auth_client_sources == {"lab-system": {"lab"}, "ehr": {"st-marys-ehr", "adt"},
                                          "e": {"*"}}
    assert [str(n) for n in loaded.trusted_proxies] == ["10.0.0.0/8", "192.0.2.1/32"]


def test_the_steward_pages_settings():
    drawn = load({}).ui_session_secret
    assert len(drawn) >= 32 and drawn != load({}).ui_session_secret  # random when unset
    assert "ui_session_secret" not in repr(load({}))
    kept = "k" * 40
    assert load({"UI_SESSION_SECRET": kept}).ui_session_secret == kept
    with pytest.raises(ConfigError) as err:
        load({"UI_SESSION_SECRET": "short", "UI_SESSION_HOURS": "48",
              "UI_OIDC_CLIENT_ID": "mpi-steward-ui"})
    text = str(err.value)
    assert "UI_SESSION_SECRET=***: must be at least 32 characters" in text
    assert "short" not in text
    assert "UI_SESSION_HOURS='48'" in text
    assert ("UI_OIDC_CLIENT_ID: the steward pages sign in through the identity provider "
            "only with AUTH_MODE=jwt") in text
