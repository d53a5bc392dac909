"""The rehearsal's datastore: blob storage, served by Azurite (Microsoft's Azure Storage emulator, IMAGE_AZURITE,
docker/azurite.Dockerfile), as Azure ML's default datastore `workspaceblobstore` is a blob container.

    python3 rehearsal/datastore.py start          # start it (if it is not running); prints its blob endpoint
    python3 rehearsal/datastore.py ls [PREFIX]    # the blobs under PREFIX, a name a line

LOCAL_DATASTORE (default azureml-datastore) names its container and the docker volume that keeps its blobs
across runs (`docker rm -f azureml-datastore; docker volume rm azureml-datastore` empties it). Its endpoint is
published on the host's loopback only. The blob calls (put, get, ls) go through azure-storage-blob, the Azure SDK's
blob client, in a container of IMAGE (the training image, which has it): the host needs Docker and python3 only.
rehearsal/blobmount.py mounts it through FUSE on the host (local_run.py), as Azure ML's data runtime mounts a
datastore on a node. The account is Azurite's documented development account, whose key is public
(https://github.com/Azure/Azurite#default-storage-account); the policy that refuses key-signed uploads is
the workspace's (local_workspace.check_upload), checked before any blob is written.
"""

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# Azure ML names the default datastore's container after the workspace (azureml-blobstore-<workspace id>).
CONTAINER = "azureml-blobstore-00000000-0000-0000-0000-000000000000"
PORT = 10000  # Azurite's blob port inside its container
START_SECONDS = 180  # how long Azurite may take to answer once started (Node.js on a loaded machine)


class DatastoreError(Exception):
    pass


def name():
    return os.environ.get("LOCAL_DATASTORE") or "azureml-datastore"


def image():
    """The training image: it has azure-storage-blob, and rm for what a job left as root."""
    return os.environ.get("IMAGE") or "cifar10-trainer:local"


def docker(*args, check=True):
    r = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check and r.returncode:
        said = (r.stderr.strip().splitlines() or [f"exited {r.returncode}"])[-1]
        raise DatastoreError(f"docker {args[0]} {name()}: {said}")
    return r


def start():
    """The blob endpoint on the host (http://127.0.0.1:PORT/devstoreaccount1), Azurite started if it is not running."""
    image = os.environ.get("IMAGE_AZURITE") or "cifar10-azurite:local"
    running = docker("inspect", "--format", "{{.State.Running}}", name(), check=False)
    if running.stdout.strip() != "true":
        docker("rm", "-f", name(), check=False)
        if docker("image", "inspect", image, check=False).returncode:
            raise DatastoreError(f"no image {image} for the rehearsal's datastore: make build-azurite")
        docker("run", "-d", "--name", name(), "-v", f"{name()}:/data", "-p", f"127.0.0.1::{PORT}", image)
    port = docker("port", name(), str(PORT)).stdout.split()[0].rsplit(":", 1)[1]
    url = f"http://127.0.0.1:{port}/{ACCOUNT}"
    deadline = time.monotonic() + START_SECONDS
    while not answers(url):
        if time.monotonic() > deadline:
            logs = docker("logs", "--tail", "5", name(), check=False)
            raise DatastoreError(f"Azurite in {name()} did not answer at {url}: {(logs.stdout + logs.stderr)[-500:]}")
        time.sleep(0.2)
    return url


def answers(url):
    """Whether something speaks HTTP at url (Azurite answers an unsigned request with an error status)."""
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"{url}?comp=list", timeout=5):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def connection_string(url):
    return f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={url};"


def container_client(url):
    """azure-storage-blob's client for the datastore's container, made if missing (where azure-storage-blob is)."""
    from azure.core.exceptions import ResourceExistsError
    from azure.core.pipeline.transport import RequestsTransport
    from azure.storage.blob import ContainerClient

    # use_env_settings=False: the endpoint is this host's loopback, never behind the user's HTTP(S)_PROXY
    transport = RequestsTransport(use_env_settings=False)
    client = ContainerClient.from_connection_string(connection_string(url), CONTAINER, transport=transport)
    try:
        client.create_container()
    except ResourceExistsError:
        pass
    return client


def in_image(*args, mounts=()):
    """Run this file's blob commands in a container of IMAGE, on Azurite's network namespace."""
    here = Path(__file__).resolve().parent
    volumes = [a for m in [f"{here}:/rehearsal:ro", *mounts] for a in ("-v", m)]
    argv = ["run", "--rm", "--user", f"{os.getuid()}:{os.getgid()}", "--network", f"container:{name()}", *volumes]
    url = f"http://127.0.0.1:{PORT}/{ACCOUNT}"
    return docker(*argv, "--entrypoint", "python", image(), "/rehearsal/datastore.py", *args, "--url", url)


def put(paths, prefix):
    """Upload each of `paths` (host files and folders) under `prefix`, by name; the blob names uploaded."""
    start()
    mounts = [f"{Path(p).resolve()}:/source/{Path(p).name}:ro" for p in paths]
    return in_image("put", "/source", prefix, mounts=mounts).stdout.split() if paths else []


def get(prefix, dest):
    """Download the blobs under `prefix` into the folder `dest` (a host path, made if missing); their names."""
    start()
    Path(dest).mkdir(parents=True, exist_ok=True)
    return in_image("get", prefix, "/dest", mounts=[f"{Path(dest).resolve()}:/dest"]).stdout.split()


def remove(folder):
    """Remove a host folder whose files a job's container may have written as root."""
    folder = Path(folder).resolve()
    docker("run", "--rm", "--user", "0:0", "-v", f"{folder.parent}:/parent", "--entrypoint", "rm", image(),
           "-rf", f"/parent/{folder.name}")  # fmt: skip


def listing(prefix=""):
    start()
    return in_image("ls", prefix).stdout.split()


# --- The blob commands, run in IMAGE (in_image) -----------------------------------------------------------------
def blob_put(url, source, prefix):
    client = container_client(url)
    for path in sorted(Path(source).rglob("*")):
        if path.is_file():
            blob = f"{prefix.strip('/')}/{path.relative_to(source)}".lstrip("/")
            with path.open("rb") as f:
                client.upload_blob(blob, f, overwrite=True)
            print(blob)


def blob_get(url, prefix, dest):
    client = container_client(url)
    base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    for blob in client.list_blobs(name_starts_with=base):
        target = Path(dest, blob.name[len(base) :])
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as f:
            client.download_blob(blob.name).readinto(f)
        print(blob.name)


def blob_ls(url, prefix):
    for blob in container_client(url).list_blobs(name_starts_with=prefix.strip("/")):
        print(blob.name)


def main(argv):
    if argv == ["start"]:
        print(start())
    elif argv[:1] == ["ls"] and len(argv) <= 2:
        print("\n".join(listing(*argv[1:])))
    elif len(argv) >= 3 and argv[-2] == "--url":  # in IMAGE
        command, args, url = argv[0], argv[1:-2], argv[-1]
        {"put": blob_put, "get": blob_get, "ls": blob_ls}[command](url, *args)
    else:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main(sys.argv[1:]))
    except DatastoreError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
