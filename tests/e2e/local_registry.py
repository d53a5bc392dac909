"""The session's container registry on 127.0.0.1: compose's `registry` service, the one `make registry`
starts for users, in a compose project of its own on a free port. Only Docker is needed on the host."""

import json
import os
import subprocess
import time
import urllib.error
import urllib.request

from ports import free_port

from e2e_env import compose


def serve(project):
    """Yield the registry's address (HOST:PORT) while it runs; its storage is a volume removed after."""
    port = free_port()
    env = {**os.environ, "COMPOSE_PROJECT_NAME": project, "REGISTRY_PORT": str(port)}
    address = f"127.0.0.1:{port}"
    try:
        compose(env, "--profile", "registry", "up", "-d", "--build", "registry", timeout=900)
        for _ in range(50):
            try:
                urllib.request.urlopen(f"http://{address}/v2/", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        yield address
    finally:
        compose(env, "--profile", "registry", "down", "--volumes", timeout=300, check=False)
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
