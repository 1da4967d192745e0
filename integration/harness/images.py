"""Offline OCI images for the harness, built from Debian's static busybox.

No registry exists here, so both images are OCI image-layout tars made with
tarfile + hashlib + json (deterministic: sorted names, uid/gid 0, mtime 0)
and imported with ``ctr -n k8s.io images import``:

- the CRI sandbox image, under the exact name of ``sandbox_image``
  (``registry.k8s.io/pause:3.6``), whose command sleeps forever;
- a workload image ``docker.io/coral-test/busybox:1`` with busybox applets
  (``httpd``, ``nc``, ``sleep``, ``sh``…) and a ``/www`` to serve.

``python -m integration.harness.images DIR`` writes both (the Makefile's
``images`` target); ``ensure_images(DIR)`` builds only what is missing.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
PAUSE_IMAGE = "registry.k8s.io/pause:3.6"
WORKLOAD_IMAGE = "docker.io/coral-test/busybox:1"
APPLETS = (
    "sh",
    "ls",
    "cat",
    "echo",
    "sleep",
    "ip",
    "wget",
    "nc",
    "httpd",
    "seq",
    "true",
    "yes",
    "env",
    "kill",
    "ps",
    "dd",
    "head",
)
FORMAT_VERSION = "1"  # bump to rebuild cached tars after changing their content


@dataclass(frozen=True, slots=True)
class ImageSet:
    pause_tar: Path
    workload_tar: Path
    pause_ref: str = PAUSE_IMAGE
    workload_ref: str = WORKLOAD_IMAGE


def _info(name: str, *, kind: bytes = tarfile.REGTYPE, size: int = 0, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode = kind, size, mode
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    return info


def _rootfs_layer() -> bytes:
    if not BUSYBOX.exists():
        raise FileNotFoundError(f"{BUSYBOX} missing: run `make setup` (Debian package busybox-static)")
    files: dict[str, bytes] = {
        "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        "etc/group": b"root:x:0:\nnobody:x:65534:\n",
        "www/index.html": b"<h1>coral test workload</h1>\n",
        "www/healthz": b"ok\n",
    }
    directories = ["bin", "dev", "etc", "proc", "root", "sys", "tmp", "www"]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries: list[tuple[str, tarfile.TarInfo, bytes | None]] = []
        for directory in directories:
            mode = 0o1777 if directory == "tmp" else 0o755
            entries.append((directory, _info(directory, kind=tarfile.DIRTYPE, mode=mode), None))
        busybox = BUSYBOX.read_bytes()
        entries.append(("bin/busybox", _info("bin/busybox", size=len(busybox), mode=0o755), busybox))
        for applet in APPLETS:
            link = _info(f"bin/{applet}", kind=tarfile.SYMTYPE, mode=0o777)
            link.linkname = "busybox"
            entries.append((f"bin/{applet}", link, None))
        for name, content in files.items():
            entries.append((name, _info(name, size=len(content)), content))
        for _, info, data in sorted(entries, key=lambda e: e[0]):
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _blob(blobs: dict[str, bytes], data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return f"sha256:{digest}", len(data)


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def build_image(out: Path, ref: str, command: list[str], layer: bytes) -> None:
    """Write an OCI image-layout tar holding one image named ``ref``."""
    blobs: dict[str, bytes] = {}
    layer_digest, layer_size = _blob(blobs, layer)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": command},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    config_digest, config_size = _blob(blobs, _json(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    }
    manifest_digest, manifest_size = _blob(blobs, _json(manifest))
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {
                    "io.containerd.image.name": ref,
                    "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1],
                },
            }
        ],
    }
    members = {
        "oci-layout": _json({"imageLayoutVersion": "1.0.0"}),
        "index.json": _json(index),
        **{f"blobs/sha256/{digest}": data for digest, data in blobs.items()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs", "blobs/sha256"):
            tar.addfile(_info(directory, kind=tarfile.DIRTYPE, mode=0o755))
        for name, data in sorted(members.items()):
            tar.addfile(_info(name, size=len(data)), io.BytesIO(data))
    partial.replace(out)


def ensure_images(directory: Path) -> ImageSet:
    images = ImageSet(
        pause_tar=directory / f"pause-v{FORMAT_VERSION}.tar",
        workload_tar=directory / f"busybox-v{FORMAT_VERSION}.tar",
    )
    if not (images.pause_tar.exists() and images.workload_tar.exists()):
        layer = _rootfs_layer()
        build_image(images.pause_tar, PAUSE_IMAGE, ["/bin/sleep", "2147483647"], layer)
        build_image(images.workload_tar, WORKLOAD_IMAGE, ["/bin/sleep", "3600"], layer)
    return images


if __name__ == "__main__":
    target = ensure_images(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".cache/images"))
    print(f"images ready: {target.pause_tar} {target.workload_tar}")
