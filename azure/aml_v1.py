"""SDK v1 adapter (azureml-core): an Intent as a ScriptRunConfig, and its submission.

Same functions as aml_v2.py: credential, connect, registry_id, token, build_job, describe, download_outputs,
check_registry, compute, upload_plan, upload, submit. azureml is imported inside them: importing this module
costs nothing.
"""

import os
import re
from pathlib import Path

import aml

SDK = "v1"


def build_environment(intent):
    """The custom-image Environment: the image runs as is, with its own interpreter. From a registry
    other than the workspace's, pulled with the user-assigned identity that aml.check_pull required."""
    from azureml.core import Environment
    from azureml.core.container_registry import RegistryIdentity

    env = Environment.from_docker_image(aml.environment_name(SDK), intent.image)
    env.python.user_managed_dependencies = True
    env.python.conda_dependencies = None
    env.python.interpreter_path = aml.INTERPRETER
    env.environment_variables.clear()  # Environment()'s EXAMPLE_ENV_VAR; the setter is deprecated
    if intent.registry:
        identity = RegistryIdentity()
        identity.resource_id, identity.client_id = intent.registry_identity
        env.docker.base_image_registry.address = intent.registry
        env.docker.base_image_registry.registry_identity = identity
    env.version = aml.environment_version(aml.definition_of(Environment._serialize_to_dict(env)))  # last: all of it
    return env


def datastore_mount(mount):
    """A DataReference mount of a datastore folder (serializable offline): checkpoints, written to."""
    from azureml.data.azure_storage_datastore import AzureBlobDatastore

    # A DataReference carries only the datastore's name; the service resolves the rest.
    datastore = AzureBlobDatastore(None, mount.datastore, None, None)
    return datastore.path(mount.path, data_reference_name=mount.name).as_mount()


class NoLogin:
    """The login of a Workspace never connected to (_disable_service_check): a dry run's."""


# What a dry run's FileDataset names as its workspace (the dataset's paths carry it); nothing is read.
DRY_RUN_WORKSPACE = ("00000000-0000-0000-0000-000000000000", "dry-run", "dry-run")


def named_input(mount, ws):
    """The tutorial's part 4 input: Dataset.File.from_files(path=(datastore, path)).as_named_input(name)
    .as_mount(). validate=False: validating reads the datastore; Experiment.submit saves it anyway."""
    from azureml.core import Dataset, Workspace
    from azureml.data.azure_storage_datastore import AzureBlobDatastore

    ws = ws or Workspace(*DRY_RUN_WORKSPACE, auth=NoLogin(), _disable_service_check=True)
    files = Dataset.File.from_files(
        path=(AzureBlobDatastore(ws, mount.datastore, None, None), mount.path), validate=False
    )
    return files.as_named_input(mount.name).as_mount()


def build_job(intent, ws=None):
    """The ScriptRunConfig of the run: data as a named input in the workspace `ws` (a dry run's stand-in
    if None). Several processes: PyTorchConfiguration, so Azure ML starts one per rank with MASTER_ADDR,
    MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK and NODE_RANK set."""
    from azureml.core import ScriptRunConfig
    from azureml.core.runconfig import DockerConfiguration, PyTorchConfiguration

    args, refs = list(intent.trainer_args), {}
    for mount in intent.mounts:
        if mount.writable:
            ref = datastore_mount(mount)
            args += [mount.flag, str(ref), *mount.then]  # str(ref) is $AZUREML_DATAREFERENCE_<name>
            refs[mount.name] = ref.to_config()
        else:
            args += [mount.flag, named_input(mount, ws), *mount.then]
    src = ScriptRunConfig(
        source_directory=intent.source_dir,
        script=aml.SCRIPT,
        arguments=args,
        compute_target=intent.compute,
        environment=build_environment(intent),
        docker_runtime_config=DockerConfiguration(use_docker=True, shm_size=intent.shm_size),
        distributed_job_config=(
            PyTorchConfiguration(process_count=intent.processes, node_count=intent.nodes)
            if intent.processes > 1
            else None
        ),
    )
    src.run_config.data_references = refs
    # On the run, not the Environment: azureml-core deprecates Environment.environment_variables
    src.run_config.environment_variables = intent.environment_variables
    return src


def as_submitted(run_config):
    """Named inputs as Experiment.submit sends them (azureml/core/script_run_config.py, _update_args_and_io):
    `DatasetConsumptionConfig:<name>` in the arguments (replaced by the mount path on the node) and a mount in
    the data section with <name> as its environment variable. Submitting first saves the dataset in the
    workspace, a REST call whose id is sent; offline, the dataset's paths stand in for it: {name: paths}."""
    from azureml.core.runconfig import Data, DataLocation
    from azureml.core.runconfig import Dataset as SavedDataset
    from azureml.core.script_run_config import _DATASET_ARGUMENT_TEMPLATE
    from azureml.data.dataset_consumption_config import DatasetConsumptionConfig

    paths = {}
    for i, arg in enumerate(run_config.arguments):
        if isinstance(arg, DatasetConsumptionConfig):
            run_config.arguments[i] = _DATASET_ARGUMENT_TEMPLATE.format(arg.name)
            location = DataLocation(dataset=SavedDataset(dataset_name=arg.name))
            run_config.data[arg.name] = Data(location, False, arg.mode, arg.name, arg.path_on_compute)
            paths[arg.name] = re.findall(r'pattern: "([^"]+)"', str(arg.dataset._definition))
    return paths


# AmlCompute.provisioning_configuration's keywords for Intent.cluster, and its low-priority tier.
CLUSTER_WORDS = ("vm_size", "min_nodes", "max_nodes", "idle_seconds_before_scaledown", "vm_priority", "lowpriority")


def compute_config(intent):
    from azureml.core.compute import AmlCompute

    # A system-assigned identity: what pulls the image when the registry's admin user is off (aml.check_pull_identity)
    return AmlCompute.provisioning_configuration(**intent.cluster(CLUSTER_WORDS), identity_type="SystemAssigned")


def describe(job, intent):
    """What Experiment.submit would send: the Environment and run configuration, serialized by
    azureml-core, and the cluster to create if it is missing."""
    from azureml._execution._commands import _serialize_run_config_to_dict
    from azureml.core import Environment
    from azureml.core.script_run_config import get_run_config_from_script_run

    config, run_config = compute_config(intent), get_run_config_from_script_run(job)
    datasets = as_submitted(run_config)
    scale = config.scale_settings
    return {
        "experiment": intent.experiment,
        "compute": {
            "name": intent.compute,
            "if_missing": {
                "vm_size": config.vm_size,
                "vm_priority": config.vm_priority,
                "min_nodes": scale.minimum_node_count,
                "max_nodes": scale.maximum_node_count,
                "idle_seconds_before_scaledown": scale.idle_seconds_before_scaledown,
                "identity_type": config.identity_type,
            },
        },
        "environment": Environment._serialize_to_dict(job.run_config.environment),
        "runConfiguration": _serialize_run_config_to_dict(run_config),
        "datasets": datasets,
    }


def credential(mode):
    """azureml-core's login: service principal (CI), managed identity, or device code (a person)."""
    from azureml.core.authentication import (
        InteractiveLoginAuthentication,
        MsiAuthentication,
        ServicePrincipalAuthentication,
    )

    folder = Path.home() / ".azure"  # mounted from the host (compose.yaml): what outlives the container
    # The token cache, not azureProfile.json: azureml-core's Azure CLI code writes that one before any login
    mode = aml.login_mode(mode, folder / "msal_token_cache.json")
    if mode == "sp":
        return ServicePrincipalAuthentication(*(os.environ[v] for v in aml.SP_VARS))
    if mode == "msi":
        return MsiAuthentication()
    # Without a browser (in a container) azureml-core falls back to a device code, and keeps the login (the
    # msal token cache and azureProfile.json) in AZUREML_AUTH_CONFIG_DIR, else ~/.azureml/auth: the container's
    # tmpfs, lost before make submit's second container (azureml/_vendor/azure_cli_core/_environment.py,
    # get_config_dir). The Azure CLI's folder, not one of our own: azureml-core looks there for an `az login`
    # (InteractiveLoginAuthentication._fallback_to_azure_cli_credential), and when it finds none, its restore
    # line names an undefined variable, so a set AZUREML_AUTH_CONFIG_DIR is left at that folder and the
    # device-code login that follows is written there whatever the variable said.
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["AZUREML_AUTH_CONFIG_DIR"] = str(folder)
    return InteractiveLoginAuthentication(tenant_id=os.environ.get("AZURE_TENANT_ID"))


def token(auth, scope):  # network
    """An Azure AD access token for scope. azureml-core's public get_token() ignores its scopes and
    always returns an ARM token, so other audiences go through the login's own token call.

    An InteractiveLoginAuthentication that finds an ambient login (AZUREML_SERVICE_PRINCIPAL_* variables,
    a managed identity, a run token) hands every call to it, and its _get_resource_token raises
    NotImplementedError when that login has none (azureml/core/authentication.py): ask the ambient one."""
    if scope == aml.ARM_SCOPE:
        return auth.get_token().token
    auth = getattr(auth, "_ambient_auth", None) or auth
    if hasattr(auth, "_get_sp_credential_object"):  # ServicePrincipalAuthentication: azure-identity inside
        return auth._get_sp_credential_object().get_token(scope).token
    if hasattr(auth, "_get_resource_token"):  # interactive, msi
        return auth._get_resource_token(scope.removesuffix("/.default"))
    raise aml.SubmitError(f"a {type(auth).__name__} login gives no token for {scope}: use AUTH=sp or AUTH=interactive")


def connect(settings, auth):  # network
    from azureml.core import Workspace

    return Workspace(auth=auth, **settings)


def registry_id(ws):  # network
    """ARM id of the workspace's container registry (Azure ML pulls from it without credentials)."""
    return ws.get_details().get("containerRegistry")


def check_registry(ws, intent):
    """Nothing to read back: the identity aml.check_pull required travels in the Environment, and
    whether the cluster carries it shows only when a node pulls."""


def compute(ws, intent):  # network
    from azureml.core.compute import ComputeTarget
    from azureml.core.compute_target import ComputeTargetException

    try:
        return ComputeTarget(workspace=ws, name=intent.compute)
    except ComputeTargetException:
        target = ComputeTarget.create(ws, intent.compute, compute_config(intent))
        target.wait_for_completion(show_output=True)
        return target


def upload_call():
    """Dataset.File.upload_directory, not the tutorial's datastore.upload: that one signs with the datastore's
    account key or SAS ("the datastore object must have either account key or SAS token property populated",
    azureml/data/azure_storage_datastore.py, upload), so it fails on an identity-based datastore and on storage
    that refuses shared keys. upload_directory hands the datastore's azureml:// URI to rslex, which resolves
    it through the workspace with this login (azureml/data/dataset_factory.py, _upload_directory): a datastore
    without credentials is then written from here as the user identity ("No Credential": "SDK Local ... User
    Identity", learn.microsoft.com/azure/machine-learning/how-to-administrate-data-authentication). datastore.upload's
    deprecation notice names it."""
    from azureml.core import Dataset

    return Dataset.File.upload_directory


def upload_plan(folder, datastore, target):
    """What upload() calls, with what, as `make upload-data DRY_RUN=1` prints it (the rehearsal checks it)."""
    call = upload_call()
    where = {"datastore": datastore, "path": target}  # datastore None: the workspace's default
    return {"call": f"{call.__module__}.{call.__qualname__}", "src_dir": str(folder), "target": where}


def upload(ws, folder, datastore, target):  # network
    """The folder's files under target on DATASTORE (unset: the default datastore, as the tutorial's part 4)."""
    from azureml.core import Datastore

    store = Datastore.get(ws, datastore) if datastore else ws.get_default_datastore()
    upload_call()(src_dir=str(folder), target=(store, target), overwrite=True, show_progress=True)


def submit(ws, job, intent, wait):  # network
    from azureml.core import Experiment

    job.run_config.environment = job.run_config.environment.register(ws)
    run = Experiment(ws, intent.experiment).submit(job)
    print(f"submitted {run.id}: {run.get_portal_url()}", flush=True)
    if wait:
        run.wait_for_completion(show_output=True)
    return run


def download_outputs(ws, name, folder):  # network
    """The run's ./outputs files, flat, in folder. Run.get(ws, run id) needs no experiment name (a run with
    DATA_PATH is in another experiment); download_files(prefix="outputs", append_prefix=False) lists the
    artifacts under ExperimentRun/dcid.<run id>/outputs/ and writes each without that prefix
    (azureml/core/run.py, Run.download_files; azureml/_restclient/artifacts_client.py,
    download_artifacts_from_prefix)."""
    from azureml._restclient.exceptions import ServiceException
    from azureml.core import Run

    try:
        run = Run.get(ws, name)
    except ServiceException as e:
        if e.status_code != 404:
            raise
        raise aml.SubmitError(f"no run {name} in workspace {ws.name}: JOB is the run id make submit printed") from None
    if run.status not in ("Completed", "Failed", "Canceled"):
        raise aml.SubmitError(f"job {name} is {run.status}: fetch it once it has finished")
    run.download_files(prefix="outputs", output_directory=str(folder), append_prefix=False)
