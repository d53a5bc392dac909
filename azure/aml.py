"""Azure ML SDK v1 (azureml-core) at the edge of the project.

The builders (build_environment, build_run_config, describe) make exactly the objects that
would be sent, offline. The few functions that talk to Azure (connect_workspace,
get_or_create_compute, registry_login_server, acr_refresh_token, submit) are thin and
marked "network". azureml is imported inside functions: importing this module costs nothing.
"""

import json
import os
import re
import sys
from pathlib import Path

ENV_NAME = "cifar10-trainer"  # "AzureML*" and "Microsoft*" are reserved for curated environments
INTERPRETER = "/opt/venv/bin/python"  # the image's venv; no conda, no pip layer on top
SCRIPT = "train.py"
IMAGE_REF = re.compile(r"^(?P<repo>[a-z0-9][a-z0-9._:/-]*):(?P<tag>\w[\w.-]{0,127})@(?P<digest>sha256:[0-9a-f]{64})$")
WORKSPACE_VARS = ("AZUREML_SUBSCRIPTION_ID", "AZUREML_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME")
SP_VARS = ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET")
SNAPSHOT_MAX_FILES, SNAPSHOT_MAX_BYTES = 2000, 300 * 1024 * 1024  # Azure ML's snapshot limits


class SubmitError(Exception):
    """A problem the user can fix before anything is pushed or sent; the message says how."""


def parse_image_ref(ref):
    """{'repo', 'tag', 'digest'} of repo:tag@sha256:..., or SubmitError for anything movable."""
    m = IMAGE_REF.match(ref or "")
    if not m:
        raise SubmitError(
            f"image {ref!r} is not pinned as REPO:TAG@sha256:DIGEST; Azure ML caches images by "
            f"environment definition, so a moving tag can run stale code: let `make submit` push and read the digest"
        )
    return m.groupdict()


def environment_version(digest):
    """Version of the registered Environment: the image digest's first 16 hex digits."""
    return digest.split(":", 1)[1][:16]


def build_environment(image_ref):
    """The custom-image Environment: the image runs as is, with its own interpreter."""
    from azureml.core import Environment

    ref = parse_image_ref(image_ref)
    env = Environment.from_docker_image(ENV_NAME, image_ref)
    env.python.user_managed_dependencies = True
    env.python.conda_dependencies = None
    env.python.interpreter_path = INTERPRETER
    # Replaces Environment()'s EXAMPLE_ENV_VAR; the trainer records the reference in summary.json.
    env.environment_variables = {"IMAGE_REF": image_ref}
    env.version = environment_version(ref["digest"])
    return env


def datastore_mount(datastore_name, path, reference_name):
    """A read-write mount of a datastore folder, as a DataReference (serializable offline)."""
    from azureml.data.azure_storage_datastore import AzureBlobDatastore

    # A DataReference carries only the datastore's name; the service resolves the rest.
    datastore = AzureBlobDatastore(None, datastore_name, None, None)
    return datastore.path(path, data_reference_name=reference_name).as_mount()


def build_run_config(
    env,
    source_dir,
    compute,
    trainer_args,
    shm_size="2g",
    datastore="workspaceblobstore",
    data_path=None,
    checkpoint_path=None,
    nodes=1,
    procs_per_node=1,
):
    """The ScriptRunConfig of one training run.

    nodes x procs_per_node > 1: PyTorchConfiguration, so Azure ML starts one process per rank with
    MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK and NODE_RANK set (train.py reads them).

    data_path: a datastore folder holding CIFAR-10 (cifar-10-batches-py/ or the .tar.gz), mounted
    as --data-dir. checkpoint_path: a datastore folder mounted as --checkpoint-dir with
    --resume auto, so a run restarted after preemption continues where it stopped
    (./outputs is not reliably restored then).
    """
    from azureml.core import ScriptRunConfig
    from azureml.core.runconfig import DockerConfiguration, PyTorchConfiguration

    args, refs = [str(a) for a in trainer_args], {}
    if data_path:
        mount = datastore_mount(datastore, data_path, "cifar10")
        args += ["--data-dir", str(mount)]
        refs["cifar10"] = mount.to_config()
    if checkpoint_path:
        mount = datastore_mount(datastore, checkpoint_path, "checkpoints")
        # --overwrite: a restart before the first checkpoint may find a partial ./outputs
        args += ["--checkpoint-dir", str(mount), "--resume", "auto", "--overwrite"]
        refs["checkpoints"] = mount.to_config()
    src = ScriptRunConfig(
        source_directory=str(source_dir),
        script=SCRIPT,
        arguments=args,
        compute_target=compute,
        environment=env,
        docker_runtime_config=DockerConfiguration(use_docker=True, shm_size=shm_size),
        distributed_job_config=(
            PyTorchConfiguration(process_count=nodes * procs_per_node, node_count=nodes)
            if nodes * procs_per_node > 1
            else None
        ),
    )
    src.run_config.data_references = refs
    return src


def describe(src):
    """What Experiment.submit would send: the Environment and run configuration, serialized by azureml."""
    from azureml._execution._commands import _serialize_run_config_to_dict
    from azureml.core import Environment
    from azureml.core.script_run_config import get_run_config_from_script_run

    run_config = get_run_config_from_script_run(src)
    return {
        "environment": Environment._serialize_to_dict(src.run_config.environment),
        "runConfiguration": _serialize_run_config_to_dict(run_config),
    }


def compute_config(vm_size, max_nodes, low_priority):
    """Provisioning of the cluster if it does not exist: scales to 0 nodes when idle."""
    from azureml.core.compute import AmlCompute

    return AmlCompute.provisioning_configuration(
        vm_size=vm_size,
        min_nodes=0,
        max_nodes=max_nodes,
        vm_priority="lowpriority" if low_priority else "dedicated",
        idle_seconds_before_scaledown=1800,
    )


def snapshot_stats(source_dir):
    """(files, bytes) that Azure ML would upload from source_dir, honouring its .amlignore.

    pathspec's gitwildmatch is what both SDKs use for .amlignore; it is in both submit images.
    """
    import pathspec

    source_dir = Path(source_dir)
    ignore = source_dir / ".amlignore"
    lines = ignore.read_text().splitlines() if ignore.is_file() else []
    spec = pathspec.PathSpec.from_lines("gitwildmatch", lines)
    files = [p for p in source_dir.rglob("*") if p.is_file() and not spec.match_file(p.relative_to(source_dir))]
    return len(files), sum(p.stat().st_size for p in files)


def check_snapshot(source_dir):
    files, size = snapshot_stats(source_dir)
    if files > SNAPSHOT_MAX_FILES or size > SNAPSHOT_MAX_BYTES:
        raise SubmitError(
            f"{source_dir} would upload {files} files, {size / 2**20:.0f} MB (limits: {SNAPSHOT_MAX_FILES} files, "
            f"{SNAPSHOT_MAX_BYTES // 2**20} MB): add what is not code to {source_dir}/.amlignore"
        )
    return files, size


def workspace_settings(config_path):
    """Subscription, resource group and workspace name: from the environment, else config.json."""
    if all(os.environ.get(v) for v in WORKSPACE_VARS):
        return dict(
            zip(
                ("subscription_id", "resource_group", "workspace_name"),
                (os.environ[v] for v in WORKSPACE_VARS),
                strict=True,
            )
        )
    path = Path(config_path)
    if not path.is_file():
        raise SubmitError(
            f"no Azure ML workspace configured: put the workspace's config.json (Azure ML studio, workspace "
            f"menu, 'Download config file') at {path}, or set {', '.join(WORKSPACE_VARS)}"
        )
    try:
        config = json.loads(path.read_text())
        return {k: config[k] for k in ("subscription_id", "resource_group", "workspace_name")}
    except (ValueError, KeyError) as e:
        raise SubmitError(
            f"{path} is not a workspace config.json ({e}): download it again from Azure ML studio"
        ) from None


def login_mode(mode, cache):
    """'sp', 'msi' or 'interactive', once what that login needs is known to be there (offline).

    cache: the file an earlier interactive login left in ~/.azure (mounted from the host);
    without it, an interactive login needs a terminal to show its device code.
    """
    if mode == "auto":
        mode = "sp" if any(os.environ.get(v) for v in SP_VARS[1:]) else "interactive"
    if mode == "sp":
        missing = [v for v in SP_VARS if not os.environ.get(v)]
        if missing:
            raise SubmitError(f"service principal login needs {', '.join(missing)} in the environment")
    if mode == "interactive" and not Path(cache).is_file() and not sys.stdin.isatty():
        raise SubmitError(
            "no Azure credentials: interactive login needs a terminal; for CI set "
            f"{', '.join(SP_VARS)} (service principal) or use AUTH=msi on an Azure VM"
        )
    return mode


def authentication(mode):
    """azureml-core's login: service principal (CI), managed identity, or device code (a person)."""
    from azureml.core.authentication import (
        InteractiveLoginAuthentication,
        MsiAuthentication,
        ServicePrincipalAuthentication,
    )

    mode = login_mode(mode, Path.home() / ".azure" / "azureProfile.json")
    if mode == "sp":
        return ServicePrincipalAuthentication(*(os.environ[v] for v in SP_VARS))
    if mode == "msi":
        return MsiAuthentication()
    # Without a browser (in a container) azureml-core falls back to a device code; the token
    # is cached in ~/.azure, so later steps do not ask again.
    return InteractiveLoginAuthentication(tenant_id=os.environ.get("AZURE_TENANT_ID"))


def connect_workspace(settings, auth):  # network
    from azureml.core import Workspace

    return Workspace(auth=auth, **settings)


def registry_login_server(ws):  # network
    """The login server of the workspace's container registry (Azure ML pulls from it without credentials)."""
    return login_server_of(ws.get_details().get("containerRegistry"))


def login_server_of(arm_id):
    if not arm_id:
        raise SubmitError("the workspace has no container registry yet: set REGISTRY=NAME.azurecr.io to push elsewhere")
    return arm_id.rstrip("/").split("/")[-1] + ".azurecr.io"


def arm_token(auth):  # network
    return auth.get_authentication_header()["Authorization"].split(" ", 1)[1]


def acr_refresh_token(aad, login_server):  # network
    """An ACR refresh token for `docker login --password-stdin`, in exchange for an Azure AD token."""
    import requests

    r = requests.post(
        f"https://{login_server}/oauth2/exchange",
        data={"grant_type": "access_token", "service": login_server, "access_token": aad},
        timeout=60,
    )
    r.raise_for_status()
    return r.json()["refresh_token"]


def get_or_create_compute(ws, name, config):  # network
    from azureml.core.compute import ComputeTarget
    from azureml.core.compute_target import ComputeTargetException

    try:
        return ComputeTarget(workspace=ws, name=name)
    except ComputeTargetException:
        target = ComputeTarget.create(ws, name, config)
        target.wait_for_completion(show_output=True)
        return target


def submit(ws, experiment, src, wait):  # network
    from azureml.core import Experiment

    src.run_config.environment = src.run_config.environment.register(ws)
    run = Experiment(ws, experiment).submit(src)
    print(f"submitted {run.id}: {run.get_portal_url()}", flush=True)
    if wait:
        run.wait_for_completion(show_output=True)
    return run
