"""A daemonless OCI image writer: plain Python (tarfile, gzip, hashlib, json).

Deterministic by construction: entries sorted by path, integer mtimes (one
fixed epoch), uid/gid numbers without names, normalised modes, gzip without
time or file name, canonical JSON (sorted keys, no spaces). The output is an
OCI image layout in one tar file that also carries Docker's ``manifest.json``,
so ``docker load``, ``podman load`` and ``skopeo`` all accept it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
GZIP_LEVEL = 9


def rfc3339(epoch: int) -> str:
    """An image timestamp (``created``) from ``SOURCE_DATE_EPOCH``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Entry:
    """One file system entry of a layer."""

    path: str
    kind: str = "file"  # file | dir | symlink | hardlink
    mode: int = 0o644
    data: bytes = b""
    target: str = ""  # symlink target, or hardlink source path
    uid: int = 0
    gid: int = 0

    def __post_init__(self) -> None:
        clean = str(PurePosixPath("/", self.path))[1:]
        if not clean or ".." in PurePosixPath(clean).parts:
            raise ValueError(f"bad layer path {self.path!r}")
        object.__setattr__(self, "path", clean)


def file(path: str, data: bytes | str, mode: int = 0o644, *, uid: int = 0,
         gid: int = 0) -> Entry:
    return Entry(path, "file", mode, data.encode() if isinstance(data, str) else data,
                 uid=uid, gid=gid)


def directory(path: str, mode: int = 0o755, *, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(path, "dir", mode, uid=uid, gid=gid)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, "symlink", 0o777, target=target)


@dataclass(frozen=True)
class Layer:
    tar: bytes
    blob: bytes
    comment: str = ""

    @property
    def diff_id(self) -> str:
        return sha256(self.tar)

    @property
    def digest(self) -> str:
        return sha256(self.blob)


def _with_parents(entries: Iterable[Entry]) -> list[Entry]:
    """Entries plus any missing parent directories (0755 root), sorted; last one wins."""
    by_path: dict[str, Entry] = {}
    for entry in entries:
        by_path[entry.path] = entry
    for path in list(by_path):
        for parent in PurePosixPath(path).parents:
            name = str(parent)
            if name not in (".", "") and name not in by_path:
                by_path[name] = directory(name)
    return [by_path[p] for p in sorted(by_path)]


def layer_tar(entries: Iterable[Entry], *, mtime: int) -> bytes:
    """An uncompressed layer tar: sorted, fixed owners and times, no user or group names."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in _with_parents(entries):
            info = tarfile.TarInfo(entry.path + ("/" if entry.kind == "dir" else ""))
            info.mtime = int(mtime)
            info.mode = entry.mode & 0o7777
            info.uid, info.gid = entry.uid, entry.gid
            info.uname = info.gname = ""
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = entry.target
                tar.addfile(info)
            elif entry.kind == "hardlink":
                info.type = tarfile.LNKTYPE
                info.linkname = str(PurePosixPath("/", entry.target))[1:]
                tar.addfile(info)
            elif entry.kind == "file":
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
            else:
                raise ValueError(f"unknown entry kind {entry.kind}")
    return buffer.getvalue()


def gzip_deterministic(data: bytes) -> bytes:
    """gzip with no time stamp and no file name in the header."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=GZIP_LEVEL,
                       mtime=0) as gz:
        gz.write(data)
    return buffer.getvalue()


def make_layer(entries: Iterable[Entry], *, mtime: int, comment: str = "") -> Layer:
    tar = layer_tar(entries, mtime=mtime)
    return Layer(tar, gzip_deterministic(tar), comment)


@dataclass(frozen=True)
class ImageConfig:
    """The runtime part of an image config (what ``docker inspect`` shows under Config)."""

    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    user: str = ""
    working_dir: str = ""
    exposed_ports: Sequence[str] = ()
    volumes: Sequence[str] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    stop_signal: str = ""
    healthcheck: Mapping[str, Any] | None = None  # Docker only; OCI engines drop it

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.entrypoint:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            out["Cmd"] = list(self.cmd)
        if self.env:
            out["Env"] = [f"{k}={v}" for k, v in sorted(self.env.items())]
        if self.user:
            out["User"] = self.user
        if self.working_dir:
            out["WorkingDir"] = self.working_dir
        if self.exposed_ports:
            out["ExposedPorts"] = {p: {} for p in sorted(self.exposed_ports)}
        if self.volumes:
            out["Volumes"] = {v: {} for v in sorted(self.volumes)}
        if self.labels:
            out["Labels"] = dict(sorted(self.labels.items()))
        if self.stop_signal:
            out["StopSignal"] = self.stop_signal
        if self.healthcheck:
            out["Healthcheck"] = dict(self.healthcheck)
        return out


@dataclass(frozen=True)
class Image:
    layers: Sequence[Layer]
    config: ImageConfig
    created: str  # RFC 3339, from SOURCE_DATE_EPOCH
    architecture: str = "amd64"
    os: str = "linux"

    def config_blob(self) -> bytes:
        return canonical_json({
            "architecture": self.architecture,
            "os": self.os,
            "created": self.created,
            "config": self.config.to_json(),
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in self.layers]},
            "history": [{"created": self.created, "created_by": layer.comment or "mpi images"}
                        for layer in self.layers],
        })

    def manifest_blob(self, annotations: Mapping[str, str] | None = None) -> bytes:
        config = self.config_blob()
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": MEDIA_LAYER, "digest": layer.digest,
                        "size": len(layer.blob)} for layer in self.layers],
        }
        if annotations:
            manifest["annotations"] = dict(sorted(annotations.items()))
        return canonical_json(manifest)

    def digest(self, annotations: Mapping[str, str] | None = None) -> str:
        return sha256(self.manifest_blob(annotations))


def archive(image: Image, *, reference: str, mtime: int,
            annotations: Mapping[str, str] | None = None) -> bytes:
    """The OCI layout (plus Docker's manifest.json) of ``image`` as one tar file.

    ``reference`` is ``name:tag``; it goes into the index annotations (OCI) and
    RepoTags (Docker), so every loader names the image the same.
    """
    config = image.config_blob()
    manifest = image.manifest_blob(annotations)
    index = canonical_json({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": sha256(manifest),
            "size": len(manifest),
            "annotations": {"io.containerd.image.name": reference,
                            "org.opencontainers.image.ref.name": reference},
        }],
    })

    def blob(data: bytes) -> Entry:
        return file(f"blobs/sha256/{sha256(data).split(':', 1)[1]}", data)

    docker = canonical_json([{
        "Config": f"blobs/sha256/{sha256(config).split(':', 1)[1]}",
        "RepoTags": [reference],
        "Layers": [f"blobs/sha256/{layer.digest.split(':', 1)[1]}" for layer in image.layers],
    }])
    entries = [
        file("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"})),
        file("index.json", index),
        file("manifest.json", docker),
        blob(config),
        blob(manifest),
        *(blob(layer.blob) for layer in image.layers),
    ]
    return layer_tar(entries, mtime=mtime)
