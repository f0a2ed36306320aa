"""``mpi.server``: the gunicorn options the service runs with."""

from __future__ import annotations

from gunicorn.config import Config

from mpi.config import Settings
from mpi.server import NoAccessLogger, gunicorn_options


def _config(settings: Settings) -> Config:
    cfg = Config()
    for key, value in gunicorn_options(settings).items():
        if key in cfg.settings and value is not None:
            cfg.set(key, value)
    return cfg


def test_gunicorn_builds_no_access_log_atoms(monkeypatch):
    """The service logs each request itself (route template only); gunicorn's access log,
    on because a logging dict is given, must not build its atoms for nothing."""
    cfg = _config(Settings.defaults(log_level="DEBUG"))
    assert cfg.logger_class is NoAccessLogger
    logger = cfg.logger_class(cfg)
    assert logger.access_log_enabled is False

    def atoms(*args, **kwargs):
        raise AssertionError("gunicorn built an access log line")

    monkeypatch.setattr(logger, "atoms", atoms)
    logger.access(object(), object(), {"PATH_INFO": "/api/v1/patients/x"}, 0.001)
    # Errors still go to gunicorn's error log at the configured level.
    assert logger.error_log.isEnabledFor(20)
