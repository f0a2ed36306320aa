"""The listener under concurrency, with TLS client certificates, and under ``mpi serve``."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mpi.wiring import Services
from tests.integration.test_serve import Server, _free_port

from .conftest import END, ST_MARYS, START, adt, pid, read_frame, register, segments, strictly_valid


def test_the_same_message_sent_twice_at_once_is_applied_once(services: Services, listener):
    """Two connections deliver one MSH-10 at the same moment (a sender's retry racing its
    first try): one record, one version, and both get the same acknowledgement."""
    register(services)
    mllp = listener(hl7_mllp_threads=4)
    message = adt("A01", pid("TWIN1"), control_id="RACE-1")
    answers: list[str] = []
    barrier = threading.Barrier(4)

    def send() -> None:
        conn = mllp.connect()
        barrier.wait()
        answers.append(mllp.exchange(message, conn))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(answers) == 4 and len(set(answers)) == 1, answers
    assert segments(answers[0])["MSA"][0][1] == "AA"
    record_id = services.patients.id_of("st-marys", "TWIN1")
    assert record_id is not None
    from mpi.domain.audit import Actor
    assert services.patients.get(record_id, Actor(user_id="t")).version == 1


# --- TLS with client certificates ------------------------------------------------------------


def _key_and_cert(name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
                  *, ca: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer[0].subject if issuer else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=1))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256()), key


def _write(folder: Path, stem: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_tls_client_certificates_identify_the_sender(services: Services, listener,
                                                      tmp_path: Path):
    ca = _key_and_cert("MPI test CA", None, ca=True)
    server_cert, server_key = _write(tmp_path, "server", *_key_and_cert("localhost", ca))
    ca_path, _ = _write(tmp_path, "ca", *ca)
    client = _write(tmp_path, "client", *_key_and_cert("adt1.st-marys.example", ca))
    intruder = _write(tmp_path, "intruder", *_key_and_cert("someone-else", ca))
    register(services, certificate="adt1.st-marys.example")
    mllp = listener(hl7_mllp_tls_cert_file=server_cert, hl7_mllp_tls_key_file=server_key,
                    hl7_mllp_tls_client_ca_file=ca_path)

    def exchange(identity: tuple[Path, Path] | None, message: str) -> str:
        context = ssl.create_default_context(cafile=str(ca_path))
        if identity is not None:
            context.load_cert_chain(str(identity[0]), str(identity[1]))
        with socket.create_connection(("127.0.0.1", mllp.port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as conn:
            conn.sendall(START + message.encode() + END)
            return read_frame(conn).decode()  # type: ignore[arg-type]

    ok = exchange(client, adt("A01", pid("TLS1"), control_id="T1"))
    strictly_valid(ok)
    assert segments(ok)["MSA"][0][1] == "AA"
    # The right MSH-3/MSH-4 from the wrong certificate: refused.
    wrong = exchange(intruder, adt("A01", pid("TLS2"), control_id="T2"))
    assert segments(wrong)["MSA"][0][1] == "AR"
    assert services.patients.id_of("st-marys", "TLS2") is None
    # No certificate at all: the handshake fails.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        exchange(None, adt("A01", pid("TLS3"), control_id="T3"))


# --- under mpi serve ------------------------------------------------------------------------


def _mpi(env: dict[str, str], cwd: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "mpi", *args], env={**os.environ, **env},
                          cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _registered(cwd: Path, port: int, *, processes: int) -> dict[str, str]:
    """Settings for a listener on ``port`` over SQLite in ``cwd``, the database migrated
    and St Mary's domain and ADT sender registered by the mpi command."""
    env = {"DATABASE_URL": "sqlite:///data/mpi.db", "HL7_MLLP_PORT": str(port),
           "HL7_MLLP_PROCESSES": str(processes), "SEARCH_INDEX_PATH": str(cwd / "index"),
           "LOG_FORMAT": "text"}
    _mpi(env, cwd, "migrate")
    _mpi(env, cwd, "domain", "add", f"urn:oid:{ST_MARYS}", "--name", "St Mary's MRN",
         "--sources", "st-marys", "--namespace", "STMARYS")
    listed = _mpi(env, cwd, "hl7", "sender", "add", "st-marys-adt", "--application", "ADT1",
                  "--facility", "STMARYS", "--sources", "st-marys")
    assert "ADT1^STMARYS" in listed
    return env


def _send(port: int, message: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(START + message.encode() + END)
                return read_frame(conn).decode()
        except (ConnectionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.integration
def test_mpi_serve_runs_the_listener_and_revives_it(tmp_path: Path):
    port = _free_port()
    env = _registered(tmp_path, port, processes=1)
    server = Server(env, tmp_path)
    try:
        answer = _send(port, adt("A01", pid("SERVE1", family="Servewell"), control_id="S1"))
        assert segments(answer)["MSA"][0][1] == "AA"
        status, _, found = server.request("GET", "/api/v1/patients?source=st-marys")
        assert status == 200 and [p["source_id"] for p in found["items"]] == ["SERVE1"]
        # kill -9 the listener process: the master forks another on the same socket.
        pids = re.findall(r"HL7 MLLP listener process (\d+) listens", server.log())
        assert pids, server.log()
        os.kill(int(pids[-1]), signal.SIGKILL)
        answer = _send(port, adt("A01", pid("SERVE2"), control_id="S2"), timeout=30)
        assert segments(answer)["MSA"][0][1] == "AA"
        assert "Servewell" not in server.log()  # nothing from a record in the logs
    finally:
        server.stop()


@pytest.mark.integration
def test_mpi_hl7_listen_runs_the_listener_alone_and_stops_on_sigterm(tmp_path: Path):
    port = _free_port()
    env = _registered(tmp_path, port, processes=1)
    log = (tmp_path / "listen.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "mpi", "hl7", "listen"],
                            env={**os.environ, **env}, cwd=tmp_path, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        answer = _send(port, adt("A01", pid("ALONE1"), control_id="L1"))
        assert segments(answer)["MSA"][0][1] == "AA"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    listed = _mpi(env, tmp_path, "hl7", "sender", "list")
    assert listed.startswith("st-marys-adt\tADT1^STMARYS\tsources st-marys")
    # Without HL7_MLLP_PORT there is nothing to listen on: a clear error.
    done = subprocess.run([sys.executable, "-m", "mpi", "hl7", "listen"],
                          env={**os.environ, **env, "HL7_MLLP_PORT": ""}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "set HL7_MLLP_PORT" in done.stderr


@pytest.mark.integration
@pytest.mark.parametrize("command", ["serve", "hl7 listen"])
def test_several_listener_processes_share_the_port(tmp_path: Path, command: str):
    """HL7_MLLP_PROCESSES=2, under ``mpi serve`` and ``mpi hl7 listen`` alike: two
    processes take connections from one socket; messages on concurrent connections are
    all acknowledged; with one killed the other goes on answering while the supervisor
    forks its replacement; SIGTERM stops them all."""
    port = _free_port()
    env = _registered(tmp_path, port, processes=2)
    log_path = tmp_path / "mpi.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mpi", *command.split()],
                                env={**os.environ, **env, "SERVER_PORT": str(_free_port())},
                                cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def listening() -> list[int]:
        return [int(p) for p in re.findall(
            r"HL7 MLLP listener [12]/2 process (\d+) (?:listens|started)", log_path.read_text())]

    try:
        deadline = time.monotonic() + 60
        while len(listening()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        first = listening()
        assert len(set(first)) == 2, log_path.read_text()
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda n: _send(port, adt(
                "A01", pid(f"MP{n}"), control_id=f"MP{n}")), range(8)))
        assert [segments(a)["MSA"][0][1] for a in answers] == ["AA"] * 8
        # Four interfaces that stay connected: two each (the process holding fewer takes
        # the next), whichever process the kernel woke first.
        time.sleep(0.5)  # the eight closed connections are given back first
        feeds = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(4)]
        try:
            for n, feed in enumerate(feeds):
                feed.sendall(START + adt("A01", pid(f"MF{n}"), control_id=f"MF{n}").encode()
                             + END)
                assert segments(read_frame(feed).decode())["MSA"][0][1] == "AA"
            assert sorted(_connections_of(p, port) for p in first) == [2, 2]
        finally:
            for feed in feeds:
                feed.close()
        os.kill(first[0], signal.SIGKILL)
        answer = _send(port, adt("A01", pid("MP-AFTER"), control_id="MP-AFTER"))
        assert segments(answer)["MSA"][0][1] == "AA"  # the other process, at once
        while len(listening()) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(listening()) == 3, log_path.read_text()  # the killed one, forked again
        proc.send_signal(signal.SIGTERM)  # the supervisor alone: it stops its children
        assert proc.wait(timeout=30) == 0
        survivors = [p for p in listening() if Path(f"/proc/{p}").exists()
                     and "zombie" not in Path(f"/proc/{p}/status").read_text()]
        assert survivors == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _connections_of(pid: int, port: int) -> int:
    """Established TCP connections process ``pid`` holds on local ``port`` (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    held = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:  # ESTABLISHED
                held += 1
    return held


def test_the_listener_process_holding_fewest_connections_takes_the_next():
    """AcceptShare: in shared memory, each process's pid and connections; a process may
    accept while no live sibling holds fewer; a dead sibling's count does not hold it up."""
    from mpi.hl7.listener import AcceptShare

    share = AcceptShare(3)
    one, two, gone = share.slot(0), share.slot(1), share.slot(2)
    one.claim()
    two.claim()  # (both this process here: alive)
    assert one.may_accept() and two.may_accept()
    one.add(1)
    assert not one.may_accept() and two.may_accept()
    two.add(1)
    assert one.may_accept() and two.may_accept()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    share._slots[4], share._slots[5] = int(finished.stdout), 0  # a dead process's slot
    assert one.may_accept() and two.may_accept()
    gone.claim()  # revived: holds nothing yet, so it takes the next
    assert not one.may_accept() and gone.may_accept()
    one.add(-1)
    assert one.may_accept()
