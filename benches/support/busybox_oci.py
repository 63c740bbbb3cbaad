#!/usr/bin/env python3
"""Builds a deterministic OCI image layout tarball from the host's /bin/busybox
(Debian's busybox-static): one gzip layer with busybox and its applet links, a config,
a manifest and index.json naming it docker.io/skiff/busybox:1. Used by the pod-start
benchmark as the OCI peer image (`ctr images import`)."""
import gzip, hashlib, io, json, sys, tarfile

APPLETS = ["sh", "true", "echo", "sleep", "cat", "ls"]
MTIME = 1_700_000_000

def add(tar, name, data=None, mode=0o755, kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.mtime, info.mode, info.type, info.linkname = MTIME, mode, kind, link
    info.uid = info.gid = 0
    if data is not None:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)

def blob(out, data, media):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    add(out, "blobs/sha256/" + digest.split(":")[1], data, 0o644)
    return {"mediaType": media, "digest": digest, "size": len(data)}

def main(busybox, target):
    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w", format=tarfile.GNU_FORMAT) as t:
        for d in ["bin", "etc", "tmp"]:
            add(t, d, kind=tarfile.DIRTYPE)
        add(t, "bin/busybox", open(busybox, "rb").read())
        for applet in APPLETS:
            add(t, "bin/" + applet, kind=tarfile.SYMTYPE, link="busybox")
        add(t, "etc/passwd", b"root:x:0:0:root:/:/bin/sh\n", 0o644)
        add(t, "etc/group", b"root:x:0:\n", 0o644)
    raw = layer_tar.getvalue()
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    layer = gzip.compress(raw, mtime=MTIME)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }, sort_keys=True).encode()
    with tarfile.open(target, "w", format=tarfile.GNU_FORMAT) as out:
        add(out, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode(), 0o644)
        layer_d = blob(out, layer, "application/vnd.oci.image.layer.v1.tar+gzip")
        config_d = blob(out, config, "application/vnd.oci.image.config.v1+json")
        manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": config_d, "layers": [layer_d]}, sort_keys=True).encode()
        manifest_d = blob(out, manifest, "application/vnd.oci.image.manifest.v1+json")
        manifest_d["annotations"] = {"org.opencontainers.image.ref.name": "docker.io/skiff/busybox:1"}
        add(out, "index.json", json.dumps({"schemaVersion": 2, "manifests": [manifest_d]}).encode(), 0o644)

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
