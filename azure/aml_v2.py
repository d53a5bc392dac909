"""SDK v2 adapter (azure-ai-ml): an Intent as a command job, and its submission.

Same functions as aml_v1.py: credential, connect, registry_id, token, build_job, describe, download_outputs,
check_registry, compute, upload_plan, upload, submit. Runs in the submit-v2 image only: Microsoft advises against
azure-ai-ml beside azureml-core. azureml-core (v1) passed its end of support on 2026-06-30; v1 stays the default
as the project was specified, and `make submit SDK=v2` sends the same image, code and arguments.
"""

import logging
import os
import shlex
import shutil
from pathlib import Path

import aml

SDK = "v2"


def datastore_uri(mount):
    return f"azureml://datastores/{mount.datastore}/paths/{mount.path}"


def build_job(intent, ws=None):
    """The command job: the image's interpreter runs train.py from the uploaded code. Read-only
    mounts are inputs (ro_mount), writable ones outputs (rw_mount: survives preemption).
    Several processes: PyTorchDistribution on instance_count nodes (one process per rank). The datastore
    URIs name no workspace, so `ws` (v1's reason to rebuild the job once connected) is not needed."""
    from azure.ai.ml import Input, Output, PyTorchDistribution, command
    from azure.ai.ml.entities import Environment

    # azure-ai-ml's own schema classes say "This is an experimental class" six times at every submit,
    # though this job uses none of them (azure/ai/ml/_utils/_experimental.py logs them).
    logging.getLogger("azure.ai.ml._utils._experimental").setLevel(logging.ERROR)
    words, inputs, outputs = [aml.INTERPRETER, aml.SCRIPT, *map(shlex.quote, intent.trainer_args)], {}, {}
    for mount in intent.mounts:
        if mount.writable:
            outputs[mount.name] = Output(type="uri_folder", path=datastore_uri(mount), mode="rw_mount")
            words += [mount.flag, f"${{{{outputs.{mount.name}}}}}", *mount.then]
        else:
            inputs[mount.name] = Input(type="uri_folder", path=datastore_uri(mount), mode="ro_mount")
            words += [mount.flag, f"${{{{inputs.{mount.name}}}}}", *mount.then]
    environment = Environment(name=aml.environment_name(SDK), image=intent.image)
    environment.version = aml.environment_version(aml.definition_of(environment._to_dict()))
    return command(
        code=intent.source_dir,
        command=" ".join(words),
        environment=environment,
        compute=intent.compute,
        inputs=inputs,
        outputs=outputs,
        shm_size=intent.shm_size,
        experiment_name=intent.experiment,
        environment_variables=intent.environment_variables,
        instance_count=intent.nodes,
        distribution=PyTorchDistribution(process_count_per_instance=intent.procs_per_node)
        if intent.processes > 1
        else None,
    )


# azure.ai.ml.entities.AmlCompute's keywords for Intent.cluster, and its low-priority tier.
CLUSTER_WORDS = ("size", "min_instances", "max_instances", "idle_time_before_scale_down", "tier", "low_priority")


def compute_config(intent):
    from azure.ai.ml.entities import AmlCompute, IdentityConfiguration

    # A system-assigned identity: what pulls the image when the registry's admin user is off (aml.check_pull_identity)
    identity = IdentityConfiguration(type="system_assigned")
    return AmlCompute(name=intent.compute, **intent.cluster(CLUSTER_WORDS), identity=identity)


def describe(job, intent):
    """The job as azure-ai-ml serializes it (the YAML `az ml job create` takes), and the cluster."""
    return {"experiment_name": job.experiment_name, "compute": compute_config(intent)._to_dict(), "job": job._to_dict()}


def credential(mode):
    """azure-identity's login: service principal (CI), managed identity, or device code (a person)."""
    from azure.identity import (
        AuthenticationRecord,
        ClientSecretCredential,
        DeviceCodeCredential,
        ManagedIdentityCredential,
        TokenCachePersistenceOptions,
    )

    record = Path.home() / ".azure" / "azure-ai-ml-account.json"  # ~/.azure is mounted from the host
    mode = aml.login_mode(mode, record)
    if mode == "sp":
        return ClientSecretCredential(*(os.environ[v] for v in aml.SP_VARS))
    if mode == "msi":
        return ManagedIdentityCredential()
    cred = DeviceCodeCredential(
        tenant_id=os.environ.get("AZURE_TENANT_ID"),
        authentication_record=AuthenticationRecord.deserialize(record.read_text()) if record.is_file() else None,
        cache_persistence_options=TokenCachePersistenceOptions(name="cifar10-trainer", allow_unencrypted_storage=True),
    )
    if not record.is_file():
        record.write_text(cred.authenticate(scopes=[aml.ARM_SCOPE]).serialize())
    return cred


def token(cred, scope):  # network
    return cred.get_token(scope).token


def connect(settings, cred):  # network on first use
    from azure.ai.ml import MLClient

    return MLClient(cred, settings["subscription_id"], settings["resource_group"], settings["workspace_name"])


def registry_id(client):  # network
    """ARM id of the workspace's container registry (Azure ML pulls from it without credentials)."""
    return client.workspaces.get(client.workspace_name).container_registry


def check_registry(client, intent):  # network
    """The workspace connection that aml.check_pull required exists and points at the registry."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        connection = client.connections.get(intent.registry_connection)
    except ResourceNotFoundError:
        connection = None
    target = (getattr(connection, "target", "") or "").removeprefix("https://").rstrip("/")
    if getattr(connection, "type", None) != "container_registry" or target != intent.registry:
        raise aml.SubmitError(
            f"the workspace has no container_registry connection {intent.registry_connection!r} for "
            f"{intent.registry}: create it (`az ml connection create`, docs/azure.md) or unset REGISTRY"
        )


def compute(client, intent):  # network
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return client.compute.get(intent.compute)
    except ResourceNotFoundError:
        return client.compute.begin_create_or_update(compute_config(intent)).result()


def data_asset(folder, datastore):
    """The uri_folder data asset of a local folder: create_or_update uploads it to `datastore` (None: the
    default) under a folder of its own, LocalUpload/<hash>/ (how-to-create-data-assets)."""
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Data

    return Data(name="cifar10", path=str(folder), type=AssetTypes.URI_FOLDER, datastore=datastore)


def upload_plan(folder, datastore, target):
    """What upload() calls, with what, as `make upload-data DRY_RUN=1` prints it (the rehearsal checks it).
    SDK v2 has no upload to a chosen datastore path: `target` is not used."""
    from azure.ai.ml.operations import DataOperations

    call = DataOperations.create_or_update
    return {"call": f"{call.__module__}.{call.__qualname__}", "asset": dict(data_asset(folder, datastore)._to_dict())}


def upload(client, folder, datastore, target):  # network
    """The folder as a data asset. azure-ai-ml signs the blob uploads with the MLClient's credential (this
    login) where the datastore is identity-based, or where the workspace will not list its secrets; else with a
    SAS or key the workspace lists (azure/ai/ml/_artifacts/_artifact_utilities.py, get_datastore_info). Its
    folder there, not `target`, is what DATA_PATH must name; it is printed."""
    asset = client.data.create_or_update(data_asset(folder, datastore))
    on_datastore = asset.path.split("/paths/", 1)[-1]
    print(f"uploaded {folder}/ as data asset {asset.name}:{asset.version} at {asset.path}")
    print(f"now: make submit DATA_PATH={on_datastore}")


def submit(client, job, intent, wait):  # network
    client.environments.create_or_update(job.environment)
    returned = client.jobs.create_or_update(job, experiment_name=intent.experiment)
    print(f"submitted {returned.name}: {returned.studio_url}", flush=True)
    if wait:
        client.jobs.stream(returned.name)
    return returned


def attach_registry(client, registry_id, replace=False):  # network
    """Attach the registry to the workspace, as `az ml workspace update --container-registry ID -u` does: azure-ai-ml
    refuses to change the workspace's registry without update_dependent_resources=True ("Updating the
    workspace-attached Azure Container Registry resource may break lineage of previous jobs ... Include the
    update_dependent_resources argument in SDK or the --update-dependent-resources/-u parameter in CLI",
    operations/_workspace_operations_base.py, begin_update). Returns the workspace's registry id before."""
    workspace = client.workspaces.get(client.workspace_name)
    before = workspace.container_registry
    if before and before.lower() == registry_id.lower():
        return before
    if before and not replace:
        raise aml.SubmitError(
            f"the workspace already has registry {before}: replacing it may break the lineage of earlier jobs "
            f"(azure-ai-ml's warning); set ATTACH_REPLACE=1 to replace it with {registry_id}"
        )
    workspace.container_registry = registry_id
    client.workspaces.begin_update(workspace, update_dependent_resources=True).result()
    return before


def workspace_location(client):  # network
    return client.workspaces.get(client.workspace_name).location


def download_outputs(client, name, folder):  # network
    """The job's ./outputs files, flat, in folder. With no output_name, jobs.download fetches the job's default
    artifact store (azureml://datastores/workspaceartifactstore/paths/ExperimentRun/dcid.NAME/: ./outputs and
    the logs) into DOWNLOAD_PATH/artifacts, after refusing a job not yet in a terminal state (JobException);
    azure-ai-ml's operations/_job_operations.py, JobOperations.download. ./outputs is artifacts/outputs/."""
    from azure.ai.ml.exceptions import JobException
    from azure.core.exceptions import ResourceNotFoundError

    download = Path(folder) / ".download"
    try:
        client.jobs.download(name, download_path=download)
    except ResourceNotFoundError:
        raise aml.SubmitError(
            f"no job {name} in workspace {client.workspace_name}: JOB is the name make submit printed"
        ) from None
    except JobException as e:
        raise aml.SubmitError(f"job {name}: {e.message} Fetch it once it has finished.") from None
    outputs = download / "artifacts" / "outputs"
    for path in outputs.iterdir() if outputs.is_dir() else ():
        path.rename(Path(folder) / path.name)
    shutil.rmtree(download)
