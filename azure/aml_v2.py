"""SDK v2 adapter (azure-ai-ml): an Intent as a command job, and its submission.

Same functions as aml_v1.py: credential, connect, registry_id, token, build_job, describe,
compute, submit. Runs in the submit-v2 image only: Microsoft advises against azure-ai-ml beside
azureml-core. azureml-core (v1) passed its end of support on 2026-06-30; v1 stays the default
as the project was specified, and `make submit SDK=v2` sends the same image, code and arguments.
"""

import os
import shlex
from pathlib import Path

from aml import ARM_SCOPE, ENV_NAME, INTERPRETER, SCRIPT, SP_VARS, environment_version, login_mode


def datastore_uri(mount):
    return f"azureml://datastores/{mount.datastore}/paths/{mount.path}"


def build_job(intent):
    """The command job: the image's interpreter runs train.py from the uploaded code. Read-only
    mounts are inputs (ro_mount), writable ones outputs (rw_mount: survives preemption).
    Several processes: PyTorchDistribution on instance_count nodes (one process per rank)."""
    from azure.ai.ml import Input, Output, PyTorchDistribution, command
    from azure.ai.ml.entities import Environment

    words, inputs, outputs = [INTERPRETER, SCRIPT, *map(shlex.quote, intent.trainer_args)], {}, {}
    for mount in intent.mounts:
        if mount.writable:
            outputs[mount.name] = Output(type="uri_folder", path=datastore_uri(mount), mode="rw_mount")
            words += [mount.flag, f"${{{{outputs.{mount.name}}}}}", *mount.then]
        else:
            inputs[mount.name] = Input(type="uri_folder", path=datastore_uri(mount), mode="ro_mount")
            words += [mount.flag, f"${{{{inputs.{mount.name}}}}}", *mount.then]
    return command(
        code=intent.source_dir,
        command=" ".join(words),
        environment=Environment(name=ENV_NAME, version=environment_version(intent.image), image=intent.image),
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


def compute_config(intent):
    from azure.ai.ml.entities import AmlCompute

    return AmlCompute(
        name=intent.compute,
        size=intent.vm_size,
        min_instances=0,
        max_instances=intent.max_nodes,
        tier="low_priority" if intent.low_priority else "dedicated",
        idle_time_before_scale_down=intent.idle_seconds,
    )


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
    mode = login_mode(mode, record)
    if mode == "sp":
        return ClientSecretCredential(*(os.environ[v] for v in SP_VARS))
    if mode == "msi":
        return ManagedIdentityCredential()
    cred = DeviceCodeCredential(
        tenant_id=os.environ.get("AZURE_TENANT_ID"),
        authentication_record=AuthenticationRecord.deserialize(record.read_text()) if record.is_file() else None,
        cache_persistence_options=TokenCachePersistenceOptions(name="cifar10-trainer", allow_unencrypted_storage=True),
    )
    if not record.is_file():
        record.write_text(cred.authenticate(scopes=[ARM_SCOPE]).serialize())
    return cred


def token(cred, scope):  # network
    return cred.get_token(scope).token


def connect(settings, cred):  # network on first use
    from azure.ai.ml import MLClient

    return MLClient(cred, settings["subscription_id"], settings["resource_group"], settings["workspace_name"])


def registry_id(client):  # network
    """ARM id of the workspace's container registry (Azure ML pulls from it without credentials)."""
    return client.workspaces.get(client.workspace_name).container_registry


def compute(client, intent):  # network
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return client.compute.get(intent.compute)
    except ResourceNotFoundError:
        return client.compute.begin_create_or_update(compute_config(intent)).result()


def submit(client, job, intent, wait):  # network
    client.environments.create_or_update(job.environment)
    returned = client.jobs.create_or_update(job, experiment_name=intent.experiment)
    print(f"submitted {returned.name}: {returned.studio_url}", flush=True)
    if wait:
        client.jobs.stream(returned.name)
    return returned
