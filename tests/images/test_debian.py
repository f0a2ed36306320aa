"""Debian packages without dpkg: locks, sha256-verified fetches from a mirror, reading."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest

from images import debian


def _tar_xz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _ar(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members.items():
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += header + data + (b"\n" if len(data) % 2 else b"")
    return out


def make_deb() -> bytes:
    return _ar({
        "debian-binary": b"2.0\n",
        "control.tar.xz": _tar_xz({"./control": b"Package: demo\nVersion: 1.0\n"}),
        "data.tar.xz": _tar_xz({"./lib/x86_64-linux-gnu/libdemo.so.1": b"\x7fELF",
                                "./usr/share/doc/demo/copyright": b"(c)"}),
    })


def test_reads_control_and_data_with_merged_usr(tmp_path: Path):
    deb = tmp_path / "demo.deb"
    deb.write_bytes(make_deb())
    assert debian.control_fields(deb).startswith("Package: demo")
    names = [m.name for m, _ in debian.data_members(deb)]
    assert "usr/lib/x86_64-linux-gnu/libdemo.so.1" in names  # lib/ -> usr/lib/


def test_mirror_url_moves_only_the_archive_base():
    pkg = debian.Package("demo", "1.0", "amd64", 1, "0" * 64,
                         "http://deb.debian.org/debian/pool/main/d/demo/demo_1.0_amd64.deb")
    assert debian.mirror_url(pkg, {}) == pkg.url
    assert debian.mirror_url(pkg, {"DEBIAN_MIRROR": "http://mirror.example/debian/"}) == \
        "http://mirror.example/debian/pool/main/d/demo/demo_1.0_amd64.deb"
    security = debian.Package("s", "1", "all", 1, "0" * 64,
                              "http://deb.debian.org/debian-security/pool/updates/s.deb")
    assert debian.mirror_url(security, {"DEBIAN_SECURITY_MIRROR": "http://m/sec"}) == \
        "http://m/sec/pool/updates/s.deb"


@pytest.fixture
def mirror(tmp_path: Path):
    """A local HTTP mirror serving one package under /debian/pool/."""
    root = tmp_path / "www"
    path = root / "debian" / "pool" / "main" / "d" / "demo"
    path.mkdir(parents=True)
    data = make_deb()
    (path / "demo_1.0_amd64.deb").write_bytes(data)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/debian", data
    server.shutdown()


def _package(data: bytes, sha: str | None = None) -> debian.Package:
    return debian.Package("demo", "1.0", "amd64", len(data),
                          sha or hashlib.sha256(data).hexdigest(),
                          "http://deb.debian.org/debian/pool/main/d/demo/demo_1.0_amd64.deb")


def test_fetch_from_a_configured_mirror_verifies_sha256(mirror, tmp_path: Path):
    base, data = mirror
    (path,) = debian.fetch([_package(data)], tmp_path / "cache",
                           env={"DEBIAN_MIRROR": base}, log=lambda _m: None)
    assert path.read_bytes() == data
    # Cached and verified: a second fetch needs no mirror at all.
    offline = {"DEBIAN_MIRROR": "http://127.0.0.1:9"}
    assert debian.fetch([_package(data)], tmp_path / "cache", env=offline,
                        log=lambda _m: None) == [path]


def test_fetch_refuses_a_file_whose_sha256_differs(mirror, tmp_path: Path):
    base, data = mirror
    with pytest.raises(debian.DebianError, match="does not match the lock"):
        debian.fetch([_package(data, sha="1" * 64)], tmp_path / "cache",
                     env={"DEBIAN_MIRROR": base}, log=lambda _m: None)
    assert not list((tmp_path / "cache").glob("*.deb"))


def test_locks_carry_sha256_and_url_for_every_package():
    for definition in ("runtime", "postgres"):
        folder = Path(__file__).resolve().parents[2] / "images" / definition
        names = debian.read_names(folder / "packages.txt")
        locked = debian.read_lock(folder / "packages.lock")
        assert sorted(p.name for p in locked) == sorted(names)
        for p in locked:
            assert len(p.sha256) == 64 and p.url.startswith("http") and p.size > 0
