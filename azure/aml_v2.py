"""Azure ML SDK v2 (azure-ai-ml): the same submission as aml.py, as a command job.

azureml-core (SDK v1) passed its end of support on 2026-06-30; v1 stays the default as the
project was specified, and `make submit SDK=v2` sends the same image, code and arguments
this way. Runs in the submit-v2 image only: Microsoft advises against azure-ai-ml beside
azureml-core. Builders are offline; the functions marked "network" are the thin edge.
"""

import os
import shlex
from pathlib import Path

from aml import ENV_NAME, INTERPRETER, SCRIPT, SP_VARS, environment_version, login_mode, parse_image_ref

ARM_SCOPE = "https://management.azure.com/.default"


def build_environment(image_ref):
    from azure.ai.ml.entities import Environment

    digest = parse_image_ref(image_ref)["digest"]
    return Environment(name=ENV_NAME, version=environment_version(digest), image=image_ref)


def datastore_uri(datastore, path):
    return f"azureml://datastores/{datastore}/paths/{path.strip('/')}"


def build_job(
    env,
    source_dir,
    compute,
    trainer_args,
    experiment,
    shm_size="2g",
    datastore="workspaceblobstore",
    data_path=None,
    checkpoint_path=None,
    nodes=1,
    procs_per_node=1,
):
    """The command job: the image's interpreter runs train.py from the uploaded code.

    nodes x procs_per_node > 1: PyTorchDistribution on instance_count nodes (one process per rank).
    """
    from azure.ai.ml import Input, Output, PyTorchDistribution, command

    words = [INTERPRETER, SCRIPT, *(shlex.quote(str(a)) for a in trainer_args)]
    inputs, outputs = {}, {}
    if data_path:
        inputs["cifar10"] = Input(type="uri_folder", path=datastore_uri(datastore, data_path), mode="ro_mount")
        words += ["--data-dir", "${{inputs.cifar10}}"]
    if checkpoint_path:
        # rw_mount of a datastore folder: survives preemption; a restarted job resumes from it
        outputs["checkpoints"] = Output(
            type="uri_folder", path=datastore_uri(datastore, checkpoint_path), mode="rw_mount"
        )
        words += ["--checkpoint-dir", "${{outputs.checkpoints}}", "--resume", "auto", "--overwrite"]
    return command(
        code=str(source_dir),
        command=" ".join(words),
        environment=env,
        compute=compute,
        inputs=inputs,
        outputs=outputs,
        shm_size=shm_size,
        experiment_name=experiment,
        environment_variables={"IMAGE_REF": env.image},  # recorded by the trainer in summary.json
        instance_count=nodes,
        distribution=(
            PyTorchDistribution(process_count_per_instance=procs_per_node) if nodes * procs_per_node > 1 else None
        ),
    )


def describe(job):
    """The job as azure-ai-ml serializes it (the YAML `az ml job create` takes)."""
    return {"experiment_name": job.experiment_name, "job": job._to_dict()}


def compute_config(name, vm_size, max_nodes, low_priority):
    from azure.ai.ml.entities import AmlCompute

    return AmlCompute(
        name=name,
        size=vm_size,
        min_instances=0,
        max_instances=max_nodes,
        tier="low_priority" if low_priority else "dedicated",
        idle_time_before_scale_down=1800,
    )


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


def arm_token(cred):  # network
    return cred.get_token(ARM_SCOPE).token


def registry_login_server(client):  # network
    from aml import login_server_of

    return login_server_of(client.workspaces.get(client.workspace_name).container_registry)


def get_or_create_compute(client, config):  # network
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return client.compute.get(config.name)
    except ResourceNotFoundError:
        return client.compute.begin_create_or_update(config).result()


def ml_client(settings, cred):  # network on first use
    from azure.ai.ml import MLClient

    return MLClient(cred, settings["subscription_id"], settings["resource_group"], settings["workspace_name"])


def submit(client, job, wait):  # network
    client.environments.create_or_update(job.environment)
    returned = client.jobs.create_or_update(job)
    print(f"submitted {returned.name}: {returned.studio_url}", flush=True)
    if wait:
        client.jobs.stream(returned.name)
    return returned
