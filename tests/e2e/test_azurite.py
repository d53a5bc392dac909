"""The Azurite image (docker/azurite.Dockerfile, `make build-azurite`) serves a storage account's blob endpoint to
other containers: on a docker network of its own, the training image's azure-storage-blob, with the emulator's
well-known account, creates a container, uploads a blob in staged blocks, lists it and reads back the same bytes;
Azurite runs as a user other than root and keeps what it stores in /data.

Images: IMAGE (the trainer) and IMAGE_AZURITE (built here when missing).
"""

import json
import os
import subprocess
import time
import uuid

import pytest

from e2e_env import IMAGE, compose

IMAGE_AZURITE = os.environ.get("IMAGE_AZURITE", "cifar10-azurite:local")
# Azurite's well-known development account (https://github.com/Azure/Azurite#default-storage-account), path-style.
CONNECTION = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://{host}:10000/devstoreaccount1;"
)
LISTENING = "Azurite Blob service successfully listens on http://0.0.0.0:10000"
START_DEADLINE = 180  # seconds: a loaded CI machine starting Node.js; the wait ends as soon as it listens

# Runs in the training image: 3 MiB in 1 MiB blocks, so the upload is Put Block and Put Block List, as the
# SDK sends any blob larger than max_single_put_size; then list and download. Prints what it saw, as JSON.
CLIENT = """
import hashlib, json, os, sys
from azure.storage.blob import BlobServiceClient
service = BlobServiceClient.from_connection_string(
    os.environ["CONNECTION"], max_single_put_size=1 << 20, max_block_size=1 << 20
)
container = service.create_container("e2e")
data = os.urandom(3 << 20)
blob = container.upload_blob("dir/blob.bin", data)
blocks = blob.get_block_list("committed")[0]
back = container.download_blob("dir/blob.bin").readall()
json.dump({
    "listed": [b.name for b in container.list_blobs()],
    "blocks": len(blocks),
    "size": len(back),
    "same": back == data,
    "sha256": hashlib.sha256(back).hexdigest(),
}, sys.stdout)
"""


def docker(*args, timeout=300, check=True):
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert not check or r.returncode == 0, f"docker {' '.join(args)}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


def wait_listening(name):
    """Until Azurite says its blob service listens; fails at once, with its log, if it exits first."""
    deadline = time.monotonic() + START_DEADLINE
    while True:
        log = docker("logs", name).stdout
        if LISTENING in log:
            return
        running = docker("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
        assert running == "true", f"Azurite exited before it listened:\n{log}{docker('logs', name).stderr}"
        assert time.monotonic() < deadline, f"Azurite not listening after {START_DEADLINE}s:\n{log}"
        time.sleep(0.2)


@pytest.fixture
def azurite():
    """Azurite on a fresh docker network; yields (network, container name); both removed after."""
    if docker("image", "inspect", IMAGE_AZURITE, check=False).returncode:
        env = {**os.environ, "IMAGE_AZURITE": IMAGE_AZURITE}
        compose(env, "--profile", "rehearsal", "build", "azurite", timeout=1800)
    suffix = uuid.uuid4().hex[:12]
    network, name = f"cifar10-e2e-azurite-{suffix}", f"cifar10-e2e-azurite-{suffix}"
    docker("network", "create", network)
    try:
        docker("run", "-d", "--name", name, "--network", network, IMAGE_AZURITE)
        wait_listening(name)
        yield network, name
    finally:
        docker("rm", "-f", "-v", name, check=False)
        docker("network", "rm", network, check=False)


def test_the_training_images_blob_client_round_trips_a_blob_through_azurite(azurite):
    network, name = azurite
    uid = docker("exec", name, "id", "-u").stdout.strip()
    assert uid != "0", "Azurite runs as root"

    r = docker(
        "run", "--rm", "--network", network, "-e", "CONNECTION=" + CONNECTION.format(host=name),
        "--entrypoint", "python", IMAGE, "-c", CLIENT,
    )  # fmt: skip
    seen = json.loads(r.stdout)
    assert seen["listed"] == ["dir/blob.bin"]
    assert seen["blocks"] == 3, seen  # staged in blocks, not one Put Blob
    assert seen["size"] == 3 << 20 and seen["same"], seen

    # Stored under --location, by Azurite's own user: the volume is writable by it.
    stored = docker("exec", name, "find", "/data/__blobstorage__", "-type", "f", "-user", uid).stdout.split()
    assert stored, docker("exec", name, "ls", "-laR", "/data").stdout
