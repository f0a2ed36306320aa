"""The OCI writer on tiny fixed inputs: golden digests, determinism, loadable structure."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from typing import IO

import pytest

from images import oci

EPOCH = 1_700_000_000


def tiny_image() -> oci.Image:
    base = oci.make_layer([oci.file("etc/hello", "hi\n"), oci.symlink("bin", "usr/bin"),
                           oci.directory("tmp", 0o1777)], mtime=EPOCH, comment="base")
    app = oci.make_layer([oci.file("app/run", "#!/x\n", 0o755, uid=65532, gid=65532)],
                         mtime=EPOCH, comment="app")
    config = oci.ImageConfig(entrypoint=["/app/run"], env={"B": "2", "A": "1"},
                             user="65532:65532", exposed_ports=["8080/tcp"],
                             labels={"org.opencontainers.image.version": "1"},
                             healthcheck={"Test": ["CMD", "/app/run", "health"]})
    return oci.Image([base, app], config, created="2023-11-14T22:13:20Z")


def test_golden_digests():
    image = tiny_image()
    assert image.layers[0].diff_id == GOLDEN["base_diff_id"]
    assert image.layers[1].diff_id == GOLDEN["app_diff_id"]
    assert oci.sha256(image.config_blob()) == GOLDEN["config"]
    assert image.digest() == GOLDEN["manifest"]


# The diff ids and the config digest depend only on the tar bytes; the manifest digest
# also on gzip level and zlib version (fixed here: Debian 12's zlib, level 9).
GOLDEN = {
    "base_diff_id": "sha256:6f477125722d7b20715d1c8f3345963e1b6968024b6205d9c4c1935f86ed1644",
    "app_diff_id": "sha256:1cac950f4faebc478d2bb68d3bda6c9648040c863052dc18c38d21407b3a5c9a",
    "config": "sha256:372b1c65799d5db9bc7b5b831f2de791aa702be488cdbe7ece1f21453ba57efe",
    "manifest": "sha256:51b5246646ab837e7b932e560fe075f179586532827ce5eb49f22f4fab68f840",
}


def test_same_inputs_same_bytes_any_order():
    a = oci.layer_tar([oci.file("b", "2"), oci.file("a/x", "1")], mtime=EPOCH)
    b = oci.layer_tar([oci.file("a/x", "1"), oci.file("b", "2")], mtime=EPOCH)
    assert a == b


def test_layer_members_are_normalised():
    tar = tarfile.open(fileobj=io.BytesIO(tiny_image().layers[0].tar))
    members = tar.getmembers()
    assert [m.name for m in members] == ["bin", "etc", "etc/hello", "tmp"]
    for m in members:
        assert m.mtime == EPOCH and m.uname == "" and m.gname == "" and m.uid == 0
        assert not m.pax_headers
    assert members[3].mode == 0o1777 and members[0].issym()


def test_gzip_header_has_no_time_or_name():
    blob = tiny_image().layers[0].blob
    assert blob[4:8] == b"\0\0\0\0"  # MTIME
    assert blob[3] & 0x08 == 0  # no FNAME flag
    assert gzip.decompress(blob) == tiny_image().layers[0].tar


def test_config_carries_diff_ids_and_runtime_settings():
    image = tiny_image()
    config = json.loads(image.config_blob())
    assert config["rootfs"]["diff_ids"] == [layer.diff_id for layer in image.layers]
    assert config["config"]["Env"] == ["A=1", "B=2"]
    assert config["config"]["User"] == "65532:65532"
    assert config["config"]["Healthcheck"]["Test"] == ["CMD", "/app/run", "health"]
    assert config["created"] == "2023-11-14T22:13:20Z"


def test_archive_is_an_oci_layout_and_a_docker_archive():
    image = tiny_image()
    data = oci.archive(image, reference="example/tiny:1", mtime=EPOCH)
    tar = tarfile.open(fileobj=io.BytesIO(data))
    names = tar.getnames()
    assert {"oci-layout", "index.json", "manifest.json"} <= set(names)
    index = json.load(_member(tar, "index.json"))
    manifest_digest = index["manifests"][0]["digest"]
    assert manifest_digest == image.digest()
    assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == "example/tiny:1"
    manifest = json.load(_member(tar, f"blobs/sha256/{manifest_digest[7:]}"))
    for layer, described in zip(image.layers, manifest["layers"], strict=True):
        blob = _member(tar, f"blobs/sha256/{described['digest'][7:]}").read()
        assert blob == layer.blob and described["size"] == len(blob)
    docker = json.load(_member(tar, "manifest.json"))
    assert docker[0]["RepoTags"] == ["example/tiny:1"]
    assert docker[0]["Config"] == f"blobs/sha256/{manifest['config']['digest'][7:]}"
    assert oci.archive(image, reference="example/tiny:1", mtime=EPOCH) == data


@pytest.mark.parametrize("path", ["", "/", "../etc/x", "a/../../b"])
def test_bad_paths_are_refused(path):
    with pytest.raises(ValueError):
        oci.file(path, "x")


def _member(tar: tarfile.TarFile, name: str) -> IO[bytes]:
    member = tar.extractfile(name)
    assert member is not None, f"{name} is not a file in the archive"
    return member
