"""A container registry on 127.0.0.1 (Debian's docker-registry), for the push and pull by digest."""

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(root):
    """Yield the registry's address (HOST:PORT) while it runs, its storage under root."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip("Debian's docker-registry is not installed (.ci/run installs it)")
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\nlog:\n  level: error\n"
    )
    server = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    for _ in range(50):
        try:
            urllib.request.urlopen(f"http://{address}/v2/", timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    yield address
    server.terminate()
    server.wait(timeout=10)
    untag(address)


def untag(address):
    """Drop the names that pushes and pulls gave images on this registry (HOST:PORT/...), which would
    outlive it in `docker images`; the images themselves stay under their other names."""
    listed = subprocess.run(
        ["docker", "images", "--digests", "--format", "{{.Repository}} {{.Tag}} {{.Digest}}"],
        capture_output=True, text=True, check=True,
    ).stdout.split("\n")  # fmt: skip
    names = []
    for repo, tag, digest in (line.split() for line in listed if line.startswith(address + "/")):
        names.append(f"{repo}:{tag}" if tag != "<none>" else f"{repo}@{digest}")
    if names:
        subprocess.run(["docker", "rmi", *names], capture_output=True, check=False)


def tags(registry):
    try:
        with urllib.request.urlopen(f"http://{registry}/v2/cifar10-trainer/tags/list", timeout=5) as r:
            return json.load(r)["tags"] or []
    except urllib.error.HTTPError as e:
        assert e.code == 404  # no such repository: nothing was ever pushed
        return []
