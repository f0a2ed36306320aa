"""``mpi serve`` with TLS_CERT_FILE / TLS_KEY_FILE answers HTTPS (bare host, no proxy)."""

from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.helpers import stop_process
from tests.integration.test_serve import _free_port

pytestmark = pytest.mark.integration


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def test_serves_https_with_the_configured_certificate(tmp_path: Path):
    cert, key = _self_signed(tmp_path)
    port = _free_port()
    env = {**os.environ, "SERVER_PORT": str(port), "WORKERS": "1", "TLS_CERT_FILE": str(cert),
           "TLS_KEY_FILE": str(key), "DATABASE_URL": f"sqlite:///{tmp_path}/mpi.db",
           "SEARCH_INDEX_PATH": str(tmp_path / "index"), "LOG_FORMAT": "text"}
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "mpi", "serve"], env=env, cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT)
    context = ssl.create_default_context(cafile=str(cert))
    try:
        deadline = time.monotonic() + 30
        status = None
        while status is None:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            try:
                conn = http.client.HTTPSConnection("127.0.0.1", port, context=context,
                                                   timeout=5)
                conn.request("GET", "/api/v1/health")
                status = conn.getresponse().status
                conn.close()
            except (ConnectionError, ssl.SSLError, OSError):
                time.sleep(0.2)
        assert status == 200
        # Plain HTTP on the TLS port gets no answer a client could mistake for the API's.
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            plain.request("GET", "/api/v1/health")
            response = plain.getresponse()
            assert response.status != 200
            raise ConnectionError(f"plain HTTP answered {response.status}")
    finally:
        stop_process(proc)
        log.close()
