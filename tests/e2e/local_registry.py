"""The session's container registry on 127.0.0.1: compose's `registry` service, the one `make registry`
starts for users, in a compose project of its own on a free port. It asks for a login, as an ACR does; its
logins are a file of the session's (REGISTRY_CREDENTIALS), which make submit COMPUTE=local reads too. Only
Docker is needed on the host."""

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ports import free_port

import local_workspace
from e2e_env import ROOT, compose

# The docker config the host's commands used before any registry was served: where the CLI finds its plugins.
USUAL_CONFIG = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
LOGGED_IN = {}  # address: basic auth, of every registry this session serves


SESSION = f"cifar10-e2e-registry-{os.getpid()}"  # the compose project of the session's registry (conftest.py)


def serve(project, storage_of=None):
    """Yield the registry's address (HOST:PORT) while it runs; its storage is a volume removed after, or the
    storage of the registry that compose project `storage_of` runs (the image's layers are there already, so a
    push sends only its manifest, not 6 GB again; that registry removes it). While it
    runs, REGISTRY_CREDENTIALS names its logins (one file for all the session's registries, as one Azure AD
    identity has a role on several ACRs) and DOCKER_CONFIG a docker config logged in to each with the workspace's
    token, for the pushes the tests make themselves (azure/publish.sh); both are restored after."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    folder = Path(tempfile.mkdtemp(prefix="cifar10-e2e-registry-"))
    saved = {name: os.environ.get(name) for name in ("REGISTRY_CREDENTIALS", "DOCKER_CONFIG")}
    os.environ.setdefault("REGISTRY_CREDENTIALS", str(folder / "logins"))
    token = local_workspace.registry_logins(create=True)[local_workspace.TOKEN_USER]
    env = {**os.environ, "COMPOSE_PROJECT_NAME": project, "REGISTRY_PORT": str(port)}
    if storage_of:  # compose.yaml, with its `registry` volume made the other project's (external: kept at down)
        shared = {"volumes": {"registry": {"external": True, "name": f"{storage_of}_registry"}}}
        (folder / "compose.storage.yaml").write_text(json.dumps(shared))
        env["COMPOSE_FILE"] = os.pathsep.join([str(ROOT / "compose.yaml"), str(folder / "compose.storage.yaml")])
    try:
        compose(env, "--profile", "registry", "up", "-d", "--build", "registry", timeout=900)
        for _ in range(50):
            try:
                urllib.request.urlopen(f"http://{address}/v2/", timeout=1)
            except urllib.error.HTTPError:  # 401: up, and asking for a login
                break
            except OSError:
                time.sleep(0.2)
        LOGGED_IN[address] = base64.b64encode(f"{local_workspace.TOKEN_USER}:{token}".encode()).decode()
        os.environ["DOCKER_CONFIG"] = str(docker_config(folder / "docker"))
        yield address
    finally:
        LOGGED_IN.pop(address, None)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        compose(env, "--profile", "registry", "down", "--volumes", timeout=300, check=False)
        untag(address)
        shutil.rmtree(folder, ignore_errors=True)


def docker_config(folder):
    """A docker config folder logged in to the session's registries alone; the CLI still finds its plugins
    (compose) where the usual config keeps them."""
    folder.mkdir(mode=0o700)
    config = {
        "auths": {address: {"auth": auth} for address, auth in LOGGED_IN.items()},
        "cliPluginsExtraDirs": [str(USUAL_CONFIG / "cli-plugins")],
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


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


def get(registry, path, login=True):
    """GET http://REGISTRY/v2/PATH, with the workspace's token unless login=False: the response (an HTTPError
    is one too)."""
    request = urllib.request.Request(f"http://{registry}/v2/{path}")
    if login:
        token = local_workspace.registry_logins()[local_workspace.TOKEN_USER]
        basic = base64.b64encode(f"{local_workspace.TOKEN_USER}:{token}".encode()).decode()
        request.add_header("Authorization", f"Basic {basic}")
    try:
        return urllib.request.urlopen(request, timeout=5)
    except urllib.error.HTTPError as e:
        return e


def tags(registry):
    with get(registry, "cifar10-trainer/tags/list") as r:
        if r.status == 404:  # no such repository: nothing was ever pushed
            return []
        assert r.status == 200, r.status
        return json.load(r)["tags"] or []
