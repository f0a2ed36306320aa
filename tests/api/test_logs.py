"""Nothing from a patient record reaches the logs, on success or on failure."""

from __future__ import annotations

import json
import logging

import peewee

from mpi import logs
from mpi.config import Settings
from mpi.storage.patients import PatientRepository
from tests.helpers import patient

SECRET_NAME = "Zebulonovich"
SECRET_SSN = "987-65-4329"


def _phi_body() -> dict:
    return patient(names=[{"family": SECRET_NAME, "given": ["Quintus"]}],
                   identifiers=[{"system": "urn:oid:2.16.840.1.113883.4.1",
                                 "value": SECRET_SSN}])


def test_sql_logging_stays_off_even_at_debug():
    """peewee logs every statement with its parameters at DEBUG: patient data."""
    config = logs.logging_config(Settings.defaults(log_level="DEBUG"))
    assert config["loggers"]["peewee"]["level"] == "WARNING"


def test_no_patient_data_in_logs(client, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    levels = logs.logging_config(Settings.defaults(log_level="DEBUG"))["loggers"]
    monkeypatch.setattr(logging.getLogger("peewee"), "level",
                        logging.getLevelName(levels["peewee"]["level"]))
    created = client.simulate_post("/api/v1/patients", json=_phi_body()).json
    client.simulate_get(f"/api/v1/patients/{created['id']}")
    client.simulate_get("/api/v1/patients", params={"family": SECRET_NAME})
    client.simulate_post("/api/v1/patients", json=_phi_body())  # 409

    def explode(self, *args, **kwargs):
        raise peewee.IntegrityError(f"duplicate key value ({SECRET_SSN}) {SECRET_NAME}")

    monkeypatch.setattr(PatientRepository, "insert_many", explode)
    failed = client.simulate_post("/api/v1/patients",
                                  json=dict(_phi_body(), source_id="other"))
    assert failed.status_code == 500
    assert SECRET_NAME not in failed.text and SECRET_SSN not in failed.text
    text = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert "unhandled IntegrityError" in text
    assert SECRET_NAME not in text
    assert SECRET_SSN not in text
    assert created["id"] not in text  # routes are logged as templates, not paths


def test_one_access_line_per_request_with_id_route_status_duration(client, caplog):
    caplog.set_level(logging.INFO, logger="mpi.access")
    client.simulate_get("/api/v1/patients/00000000-0000-4000-8000-000000000001",
                        headers={"X-Request-ID": "trace-1"})
    (record,) = [r for r in caplog.records if r.name == "mpi.access"]
    assert record.request_id == "trace-1"
    assert record.method == "GET"
    assert record.route == "/api/v1/patients/{patient_id:uuid}"
    assert record.status == 404
    assert record.duration_ms >= 0


def test_json_format_writes_one_object_per_line(capsys):
    logs.configure(Settings.defaults(log_format="json"))
    logging.getLogger("mpi.access").info("GET / 200", extra={"request_id": "r1", "status": 200})
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["level"] == "INFO" and record["request_id"] == "r1"
    assert record["time"].endswith("+00:00")


def test_text_format_is_readable(capsys):
    logs.configure(Settings.defaults(log_format="text", log_level="WARNING"))
    logging.getLogger("mpi.access").info("hidden")
    logging.getLogger("mpi.api").warning("shown", extra={"request_id": "r2"})
    err = capsys.readouterr().err
    assert "hidden" not in err
    assert "WARNING" in err and "shown request_id=r2" in err


def test_gunicorn_warnings_never_quote_a_request_line():
    config = logs.logging_config(Settings.defaults())
    withhold = config["filters"]["withhold"]["()"]()
    line = f"Invalid HTTP request line: 'GET /?family={SECRET_NAME}'"
    record = logging.LogRecord("gunicorn.error", logging.WARNING, __file__, 1,
                               "Invalid request from ip=%s: %s", ("127.0.0.1", line), None)
    assert withhold.filter(record)
    assert SECRET_NAME not in record.getMessage()
    assert record.getMessage().startswith("Invalid request from ip=127.0.0.1")
    assert "withhold" in config["loggers"]["gunicorn.error"]["filters"]
