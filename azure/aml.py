"""What `make submit` sends to Azure ML, without any Azure SDK: the image reference and the
Environment's name and version, the workspace and login settings, the registry's login, and the
job's intent as plain data. The adapters aml_v1.py (azureml-core) and aml_v2.py (azure-ai-ml)
turn an Intent into their SDK's objects; submit.py picks one of them, once.

Functions marked "network" are the thin edge; everything else runs offline.
"""

import base64
import hashlib
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# One Environment name per SDK: a version is immutable once registered ("Environment X with version Y is
# already registered and cannot be changed", github.com/Azure/azure-cli-extensions/issues/5440), and the
# two SDKs register different definitions of one image (v1 adds its python section). "AzureML*" and
# "Microsoft*" are reserved for curated environments.
ENV_NAMES = {"v1": "cifar10-trainer", "v2": "cifar10-trainer-v2"}
INTERPRETER = "/opt/venv/bin/python"  # the image's venv; no conda, no pip layer on top
SCRIPT = "train.py"
# The Azure tutorial's experiments: part 3 trains, part 4 trains on data uploaded to the datastore.
EXPERIMENT, EXPERIMENT_DATA = "day1-experiment-train", "day1-experiment-data"
TUTORIAL_MAX_NODES = 4  # its cpu-cluster's size (Intent.max_nodes)
# Where `make upload-data` puts ./data on the default datastore: the tutorial's part 4 target_path.
DATA_TARGET = "datasets/cifar10"
# Stands in for the workspace's registry in a dry run, which reads nothing from Azure.
WORKSPACE_REGISTRY_STANDIN = "workspace-registry.azurecr.io"
# REPO@sha256:DIGEST, as registered; REPO:TAG@sha256:DIGEST is taken too, and its tag dropped (pinned_image)
IMAGE_REF = re.compile(
    r"^(?P<repo>[a-z0-9][a-z0-9._:/-]*?)(:(?P<tag>\w[\w.-]{0,127}))?@(?P<digest>sha256:[0-9a-f]{64})$"
)
WORKSPACE_VARS = ("AZUREML_SUBSCRIPTION_ID", "AZUREML_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME")
SP_VARS = ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET")
SNAPSHOT_MAX_FILES, SNAPSHOT_MAX_BYTES = 2000, 300 * 1024 * 1024  # Azure ML's snapshot limits

ARM = "https://management.azure.com"
ARM_SCOPE = f"{ARM}/.default"
# A registry may accept only registry-audience tokens (Microsoft Learn, "Disable authentication as
# ARM token", container-registry-disable-authentication-as-arm; built-in Azure Policy "Container
# registries should have ARM audience token authentication disabled"); this audience always works.
REGISTRY_SCOPE = "https://containerregistry.azure.net/.default"
# Registries - Get, a stable api-version (Azure/azure-rest-api-specs, containerregistry stable/2023-07-01,
# examples/RegistryGet.json: the login server is properties.loginServer)
REGISTRY_API_VERSION = "2023-07-01"


class SubmitError(Exception):
    """A problem the user can fix before anything is pushed or sent; the message says how."""


def parse_image_ref(ref):
    """{'repo', 'tag', 'digest'} of repo[:tag]@sha256:..., or SubmitError for anything movable."""
    m = IMAGE_REF.match(ref or "")
    if not m:
        raise SubmitError(
            f"image {ref!r} is not pinned as REPO@sha256:DIGEST; Azure ML caches images by "
            f"environment definition, so a moving tag can run stale code: let `make submit` push and read the digest"
        )
    return m.groupdict()


def pinned_image(ref):
    """REPO@sha256:DIGEST: what the Environment registers. A tag beside the digest changes nothing that is
    pulled, but it is part of the definition, and Azure refuses a changed definition under a registered
    version; so the same build pushed from another commit (publish.sh's tag names the commit) would be
    refused (R9). publish.sh needs a tag to push; the definition does not carry it."""
    parts = parse_image_ref(ref)
    return f"{parts['repo']}@{parts['digest']}"


def environment_version(definition):
    """Version of the registered Environment: 16 hex digits of the SHA-256 of its whole definition (the SDK's
    own serialization less name and version), so that a version is never reused for another definition.

    Azure ML: "Environment X with version Y is already registered and cannot be changed"
    (github.com/Azure/azure-cli-extensions/issues/5440). The digest alone (the version until now) named
    the same build pushed to another registry (another ACR, or the rehearsal's 127.0.0.1:5002 after :5001)
    with the same version and another baseImage: refused. The same definition gets the same version, so a
    resubmitted build is accepted as it is."""
    text = json.dumps(definition, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def definition_of(serialized):
    """The definition a version is derived from: an Environment's serialization less name and version."""
    return {k: v for k, v in serialized.items() if k not in ("name", "version")}


def environment_name(sdk):
    return ENV_NAMES[sdk]


@dataclass(frozen=True)
class Mount:
    """A datastore folder given to the trainer as `flag PATH` (followed by `then`)."""

    name: str
    datastore: str
    path: str
    writable: bool
    flag: str
    then: tuple = ()


@dataclass(frozen=True)
class Intent:
    """One training run, as both SDKs must send it. Every default of `make submit` is stated here, once."""

    image: str
    source_dir: str
    trainer_args: tuple = ()
    experiment: str = EXPERIMENT
    compute: str = "cpu-cluster"  # the tutorial's cluster
    vm_size: str = "STANDARD_D2_V2"
    # A cluster created here is the tutorial's (part 1's 02-create-compute.py, Azure/MachineLearningNotebooks
    # tutorials/get-started-day1): STANDARD_D2_V2, up to 4 nodes, down to 0 (costs nothing) 40 minutes after
    # its last run. 0: 4, or `nodes` when more, so that a cluster created for this run can run it.
    max_nodes: int = 0
    low_priority: bool = False
    idle_seconds: int = 2400
    shm_size: str = "2g"
    nodes: int = 1
    procs_per_node: int = 1
    mounts: tuple = field(default=())
    # A registry other than the workspace's own, and how the job pulls from it (see check_pull)
    registry: str | None = None
    registry_identity: tuple = ()  # (resource id, client id) of a user-assigned managed identity
    registry_connection: str | None = None  # a workspace connection of type container_registry

    @property
    def environment_variables(self):
        return {"IMAGE_REF": self.image}  # the trainer records it in summary.json

    @property
    def processes(self):
        return self.nodes * self.procs_per_node

    def cluster(self, words):
        """The cluster created when `compute` is missing, in one SDK's keywords. words: its names for
        (size, minimum nodes, maximum nodes, idle seconds, tier) and its word for the low-priority tier.
        At 0 nodes when idle, it costs nothing."""
        size, low, high, idle, tier, low_priority = words
        return {
            size: self.vm_size,
            low: 0,
            high: self.max_nodes,
            idle: self.idle_seconds,
            tier: low_priority if self.low_priority else "dedicated",
        }


def intent(image, source_dir, trainer_args, datastore="workspaceblobstore", data_path=None, checkpoint_path=None, **kw):
    """The Intent of `submit.py run`: data read-only at --data-dir (the tutorial's part 4: its named
    input, in its experiment unless one is given), checkpoints writable at --checkpoint-dir with
    --resume auto, so a run restarted after preemption continues there (./outputs is not reliably
    restored then; --overwrite: a restart may find a partial one)."""
    image = pinned_image(image)
    mounts = []
    if data_path:
        mounts.append(Mount("cifar10", datastore, data_path.strip("/"), False, "--data-dir"))
        kw.setdefault("experiment", EXPERIMENT_DATA)
    if checkpoint_path:
        then = ("--resume", "auto", "--overwrite")
        mounts.append(Mount("checkpoints", datastore, checkpoint_path.strip("/"), True, "--checkpoint-dir", then))
    kw["max_nodes"] = kw.get("max_nodes") or max(TUTORIAL_MAX_NODES, kw.get("nodes", Intent.nodes))
    job = Intent(image, str(source_dir), tuple(str(a) for a in trainer_args), mounts=tuple(mounts), **kw)
    if not 1 <= job.nodes <= job.max_nodes or job.procs_per_node < 1:
        raise SubmitError(f"NODES={job.nodes} needs a cluster of at least that many nodes: set MAX_NODES={job.nodes}")
    return job


def check_pull(sdk, job):
    """Refuse an image in a registry other than the workspace's own unless the job can pull it, in
    the way each SDK documents; otherwise the run fails only once a node is allocated.

    v1: `Environment.docker.base_image_registry` with a user-assigned identity (RegistryIdentity: resource
    and client id; learn.microsoft.com/azure/machine-learning/v1/how-to-use-managed-identities, "Access
    base images from private ACR"). Its username/password are not taken: they would be stored in the
    registered Environment. v2: no per-environment credential; a workspace connection of type
    container_registry holds the identity or credentials (reference-yaml-connection-container-registry;
    a maintainer in github.com/Azure/azure-sdk-for-python/issues/40122: "deprecated ... in favor of
    workspace connections")."""
    if not job.registry:
        return
    other = f"REGISTRY={job.registry} is not the workspace's registry and nothing lets the job pull from it:"
    if sdk == "v1" and len([i for i in job.registry_identity if i]) != 2:
        raise SubmitError(
            f"{other} set REGISTRY_IDENTITY (resource id) and REGISTRY_IDENTITY_CLIENT_ID of a user-assigned "
            f"identity that the cluster carries, with AcrPull on the registry, or unset REGISTRY (docs/azure.md)"
        )
    if sdk == "v2" and not job.registry_connection:
        raise SubmitError(
            f"{other} SDK v2 pulls with a workspace connection: `az ml connection create` one of type "
            f"container_registry for it and set REGISTRY_CONNECTION=<its name>, or unset REGISTRY (docs/azure.md)"
        )


def snapshot_files(source_dir):
    """The files Azure ML would upload from source_dir, honouring its .amlignore (relative paths).

    pathspec's gitwildmatch is what both SDKs use for .amlignore; it is in both submit images.
    """
    import pathspec

    source_dir = Path(source_dir)
    ignore = source_dir / ".amlignore"
    spec = pathspec.PathSpec.from_lines("gitwildmatch", ignore.read_text().splitlines() if ignore.is_file() else [])
    paths = (p.relative_to(source_dir) for p in source_dir.rglob("*") if p.is_file())
    return sorted(p.as_posix() for p in paths if not spec.match_file(p))


def check_snapshot(source_dir):
    """{'source_directory', 'files', 'bytes', 'paths'}, or SubmitError beyond Azure ML's limits."""
    paths = snapshot_files(source_dir)
    size = sum((Path(source_dir) / p).stat().st_size for p in paths)
    if len(paths) > SNAPSHOT_MAX_FILES or size > SNAPSHOT_MAX_BYTES:
        raise SubmitError(
            f"{source_dir} would upload {len(paths)} files, {size / 2**20:.0f} MB (limits: {SNAPSHOT_MAX_FILES} "
            f"files, {SNAPSHOT_MAX_BYTES // 2**20} MB): add what is not code to {source_dir}/.amlignore"
        )
    return {"source_directory": str(source_dir), "files": len(paths), "bytes": size, "paths": paths}


def workspace_settings(config_path):
    """Subscription, resource group and workspace name: from the environment, else config.json."""
    keys = ("subscription_id", "resource_group", "workspace_name")
    if all(os.environ.get(v) for v in WORKSPACE_VARS):
        return {k: os.environ[v] for k, v in zip(keys, WORKSPACE_VARS, strict=True)}
    path = Path(config_path)
    if not path.is_file():
        raise SubmitError(
            f"no Azure ML workspace configured: put the workspace's config.json (Azure ML studio, workspace "
            f"menu, 'Download config file') at {path}, or set {', '.join(WORKSPACE_VARS)}"
        )
    try:
        config = json.loads(path.read_text())
        return {k: config[k] for k in keys}
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
    # submit.sh runs the login without a TTY (its output is data) and says whether a person is there.
    terminal = sys.stdin.isatty() or os.environ.get("AML_TERMINAL") == "1"
    if mode == "interactive" and not Path(cache).is_file() and not terminal:
        raise SubmitError(
            "no Azure credentials: interactive login needs a terminal; for CI set "
            f"{', '.join(SP_VARS)} (service principal) or use AUTH=msi on an Azure VM"
        )
    return mode


def tenant_of(token):
    """The tenant (`tid` claim) of an Azure AD access token: the one the ACR exchange wants."""
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["tid"]
    except (IndexError, ValueError, KeyError):
        raise SubmitError("the Azure AD token has no tenant (tid): log in again (AUTH=interactive)") from None


def login_server_of(registry):
    """properties.loginServer of a registry resource, as ARM returns it (Registries - Get)."""
    server = (registry.get("properties") or {}).get("loginServer")
    if not server:
        raise SubmitError(f"registry {registry.get('id', '?')} has no loginServer yet: wait until it is created")
    return server


def registry_resource(registry_id, arm_token, arm=ARM):  # network
    """The workspace's registry as ARM returns it (Registries - Get): its login server (not always
    NAME.azurecr.io: sovereign clouds, upper-case names) and whether its admin user is on."""
    if not registry_id:
        raise SubmitError(
            "the workspace has no container registry yet: `make attach-registry ACR=NAME` creates and attaches one"
        )
    registry = arm_get(registry_id, arm_token, REGISTRY_API_VERSION, arm)
    if registry is None:
        raise SubmitError(f"the workspace's registry {registry_id} does not exist: attach another (docs/azure.md)")
    return registry


def registry_login_server(registry_id, arm_token, arm=ARM):  # network
    return login_server_of(registry_resource(registry_id, arm_token, arm))


def acr_refresh_token(login_server, aad_token, base=None):  # network
    """An ACR refresh token for `docker login --password-stdin`, in exchange for an Azure AD
    access token (Azure/acr docs/AAD-OAuth.md: POST /oauth2/exchange, form-encoded)."""
    form = {
        "grant_type": "access_token",
        "service": login_server,
        "tenant": tenant_of(aad_token),
        "access_token": aad_token,
    }
    request = urllib.request.Request(
        f"{base or 'https://' + login_server}/oauth2/exchange",
        data=urllib.parse.urlencode(form).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.load(r)["refresh_token"]


# --- What prepare reads before the push: the registry, the cluster, who may pull (R1, R7) ---------------
# Compute - Get (Azure/azure-rest-api-specs, machinelearningservices stable/2024-04-01, Compute/get.json):
# {"identity": {"type": "SystemAssigned"|"UserAssigned"|"SystemAssigned,UserAssigned"|"None", "principalId",
# "userAssignedIdentities": {id: {"principalId", "clientId"}}}, "properties": {"computeType": "AmlCompute",
# "properties": {"vmSize", "vmPriority": "Dedicated"|"LowPriority", "scaleSettings": {"maxNodeCount",
# "minNodeCount", "nodeIdleTimeBeforeScaleDown"}}}}; 404 when there is none. azure-ai-ml's own REST models
# (_restclient/arm_ml_service/models: ComputeResource, AmlComputeProperties, ScaleSettings,
# ManagedServiceIdentity) serialize to these names (tests/unit/test_azure_v2.py checks).
COMPUTE_API_VERSION = "2024-04-01"
# Role Assignments - List For Scope (Microsoft.Authorization 2022-04-01): $filter=principalId eq '{id}'
# returns the principal's assignments at, above or below the scope; each {"properties": {"roleDefinitionId"}}.
ROLE_ASSIGNMENTS_API_VERSION = "2022-04-01"
# Built-in roles that let an identity pull from a registry (learn.microsoft.com, azure/role-based-access-control/
# built-in-roles): AcrPull, AcrPush, Contributor, Owner, and on an ABAC-enabled registry Container Registry
# Repository Reader (which ignores AcrPull). A custom role is not recognised: refused as having none.
PULL_ROLES = {
    "7f951dda-4ed3-4680-a7ca-43fe172d538d": "AcrPull",
    "8311e382-0749-4cb8-b61a-304f252e45ec": "AcrPush",
    "b24988ac-6180-42a0-ab88-20f7382dd24c": "Contributor",
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635": "Owner",
    "b93aa761-3e63-49ed-ac28-beffa264f7ac": "Container Registry Repository Reader",
}


def arm_get(path, arm_token, api_version, arm=ARM, query=""):  # network
    """GET an ARM resource: its JSON, or None when ARM answers 404 (no such resource)."""
    url = f"{arm}{urllib.parse.quote(path)}?api-version={api_version}{query}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {arm_token}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def compute_id(settings, name):
    return (
        f"/subscriptions/{settings['subscription_id']}/resourceGroups/{settings['resource_group']}/providers/"
        f"Microsoft.MachineLearningServices/workspaces/{settings['workspace_name']}/computes/{name}"
    )


def principals(compute):
    """The principal ids of a compute's managed identities (system-assigned first)."""
    identity = (compute or {}).get("identity") or {}
    ids = [identity.get("principalId")] + [
        u.get("principalId") for u in (identity.get("userAssignedIdentities") or {}).values()
    ]
    return [i for i in ids if i]


def read_state(settings, registry, compute_name, arm_token, arm=ARM):  # network
    """What check_cluster judges, read from ARM: {"registry", "compute", "roleAssignments"}. The same shape
    is what AZURE_RESOURCES gives a dry run. roleAssignments: None where they could not be read (403).
    registry None (REGISTRY=, not the workspace's: its resource is not known here): the cluster only."""
    compute = arm_get(compute_id(settings, compute_name), arm_token, COMPUTE_API_VERSION, arm)
    roles = []
    for principal in principals(compute) if registry else ():
        try:
            found = arm_get(
                f"{registry['id']}/providers/Microsoft.Authorization/roleAssignments",
                arm_token,
                ROLE_ASSIGNMENTS_API_VERSION,
                arm,
                "&$filter=" + urllib.parse.quote(f"principalId eq '{principal}'"),
            )
        except urllib.error.HTTPError as e:
            if e.code != 403:
                raise
            roles = None  # no right to read them: said, not refused
            break
        roles += (found or {}).get("value", [])
    return {"registry": registry, "compute": compute, "roleAssignments": roles}


def props(resource):
    """An ARM resource's properties, or the flattened object `az acr show` / `az role assignment list` print."""
    return (resource or {}).get("properties", resource or {})


def identity_of(compute):
    """'SystemAssigned', 'UserAssigned', 'SystemAssigned,UserAssigned' or 'None', as ARM spells it."""
    return ((compute or {}).get("identity") or {}).get("type") or "None"


def cluster_differences(job, compute):
    """R7: an existing cluster is used as it is. One line for each way it differs from what a cluster created
    here would be; NODES above its max_nodes is refused (the job would wait for nodes that never come)."""
    name, inner = job.compute, props(props(compute))
    kind = props(compute).get("computeType")
    if kind != "AmlCompute":
        return [f"note: {name} is a {kind or 'compute'} of its own: its size and identity are not checked here"]
    scale = inner.get("scaleSettings") or {}
    limit = scale.get("maxNodeCount")
    if limit is not None and job.nodes > limit:
        raise SubmitError(
            f"NODES={job.nodes} but cluster {name} has at most {limit} nodes: set NODES={limit} or less, "
            f"raise its max_nodes (`az ml compute update --name {name} --max-instances {job.nodes}`), or set "
            f"COMPUTE to another cluster"
        )
    asked = {
        "VM_SIZE": (job.vm_size, inner.get("vmSize")),
        "LOW_PRIORITY": ("LowPriority" if job.low_priority else "Dedicated", inner.get("vmPriority")),
        "MAX_NODES": (job.max_nodes, limit),
        "identity": ("SystemAssigned", identity_of(compute)),
    }
    lines = []
    for what, (want, have) in asked.items():
        if have is not None and str(want).lower() != str(have).lower():
            lines.append(
                f"note: cluster {name} exists with {what} {have}, not {want}: it is used as it is "
                f"(a cluster created here would have {want})"
            )
    return lines


def check_pull_identity(job, state):
    """R1: Azure ML pulls the workspace's image with the registry's admin user if it is on, else with the
    cluster's managed identity (Microsoft Learn, how-to-identity-based-service-authentication, "Scenario: Azure
    Container Registry without admin user": "create machine learning compute cluster with system-assigned managed
    identity enabled"; the runtime's own words: "please ensure the ACR has Admin user enabled or a Managed Identity
    with AcrPull access to the ACR is assigned to the compute", github.com/Azure/azureml-examples/issues/3463).
    A cluster created here gets a system-assigned identity, and Azure ML gives it AcrPull on a registry attached
    before it (v1/how-to-use-managed-identities: "If you create compute first, before workspace ACR has been
    created, you have to assign the ACRPull role manually"). Returns the lines to print; refuses what would fail."""
    registry, compute = state.get("registry"), state.get("compute")
    if not registry or props(registry).get("adminUserEnabled", False) or not compute:
        return []
    if props(compute).get("computeType") not in (None, "AmlCompute"):
        return []
    name, acr = job.compute, registry.get("name") or registry.get("id", "?").rsplit("/", 1)[-1]
    enable = f"`az acr update --name {acr} --admin-enabled true`"
    grant = (
        f"`az role assignment create --role AcrPull --scope {registry.get('id', '<registry id>')} --assignee-object-id"
    )
    if not principals(compute):
        raise SubmitError(
            f"registry {acr} has its admin user off and cluster {name} has no managed identity, so no node can pull "
            f"the image: either {enable}, or give {name} an identity with AcrPull on it: `az ml compute update --name "
            f"{name} --identity-type SystemAssigned`, then {grant} <its principalId> --assignee-principal-type "
            f"ServicePrincipal` (or delete {name}: make submit creates it with one)"
        )
    roles = state.get("roleAssignments")
    if roles is None:
        return [f"note: could not read who may pull from {acr}; cluster {name}'s identity needs AcrPull on it"]
    granted = {props(r).get("roleDefinitionId", "").rsplit("/", 1)[-1] for r in roles}
    granted &= {r for r in granted if r in PULL_ROLES}
    if not granted:
        principal = principals(compute)[0]
        raise SubmitError(
            f"registry {acr} has its admin user off and cluster {name}'s identity ({principal}) has no AcrPull on "
            f"it, so no node can pull the image: either {enable}, or {grant} {principal} "
            f"--assignee-principal-type ServicePrincipal`"
        )
    return []


# R5: torch 2.14.1's CUDA 13 wheels carry kernels for sm_75 and later, not sm_70 (V100): on these sizes
# torch.cuda.is_available() is True and the first kernel fails ("no kernel image is available"). NCv3:
# Standard_NC6s_v3, NC12s_v3, NC24s_v3, NC24rs_v3; NDv2: Standard_ND40rs_v2 (Microsoft Learn, ncv3-series,
# ndv2-series: NVIDIA Tesla V100).
V100_SIZES = re.compile(r"^standard_(nc\d+r?s_v3|nd40rs_v2)$", re.IGNORECASE)


def gpu_warning(what, vm_size):
    """One line for a VM size whose GPU the image's torch cannot run on, else None."""
    if vm_size and V100_SIZES.match(vm_size):
        return (
            f"warning: {what} is {vm_size}, with V100 GPUs (sm_70), for which torch 2.14.1's CUDA 13 build has no "
            f"kernels: the first GPU operation fails ('no kernel image is available'); choose a T4, A100 or H100 "
            f"size, or TRAIN_ARGS=--device cpu"
        )
    return None


def check_cluster(job, state):
    """Everything prepare says or refuses about the cluster and the registry, before the push."""
    compute = state.get("compute")
    lines = cluster_differences(job, compute) if compute else []
    if compute:
        warning = gpu_warning(f"cluster {job.compute}", props(props(compute)).get("vmSize"))
    else:
        warning = gpu_warning("VM_SIZE", job.vm_size)
    return lines + check_pull_identity(job, state) + ([warning] if warning else [])


def state_from(text):
    """AZURE_RESOURCES for a dry run: a JSON object {"registry", "compute", "roleAssignments"} as read_state
    returns it (ARM's shapes: `az resource show --ids ID`), each key optional."""
    try:
        state = json.loads(text)
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise SubmitError(
            f"AZURE_RESOURCES is not a JSON object with registry, compute, roleAssignments ({e})"
        ) from None
    return {
        "registry": state.get("registry"),
        "compute": state.get("compute"),
        "roleAssignments": state.get("roleAssignments"),
    }


# --- make attach-registry (R2) -------------------------------------------------------------------------------
# "Registry name must be unique within Azure, and contain 5-50 alphanumeric characters" (Microsoft Learn,
# container-registry-get-started-azure-cli); Registries - Create (2023-07-01, RegistryCreate.json): PUT with
# location and sku, answered 200/201 and provisioned asynchronously (properties.provisioningState).
ACR_NAME = re.compile(r"^[A-Za-z0-9]{5,50}$")


def registry_target(acr, settings):
    """(resource id, name or None to create) of ACR=NAME (in the workspace's resource group) or ACR=ID."""
    if acr.startswith("/subscriptions/") and "/providers/Microsoft.ContainerRegistry/registries/" in acr:
        return acr, None
    if not ACR_NAME.match(acr):
        raise SubmitError(
            f"ACR={acr}: a registry name is 5 to 50 letters and digits (or give a registry's resource id, "
            f"/subscriptions/.../providers/Microsoft.ContainerRegistry/registries/NAME)"
        )
    rid = (
        f"/subscriptions/{settings['subscription_id']}/resourceGroups/{settings['resource_group']}"
        f"/providers/Microsoft.ContainerRegistry/registries/{acr}"
    )
    return rid, acr


def create_registry(registry_id, location, arm_token, arm=ARM, wait=5, tries=120):  # network
    """Registries - Create: a Basic registry with its admin user off (as `az acr create` makes it), polled
    until ARM says it is provisioned. Returns its resource."""
    import time

    body = json.dumps({"location": location, "sku": {"name": "Basic"}, "properties": {"adminUserEnabled": False}})
    request = urllib.request.Request(
        f"{arm}{registry_id}?api-version={REGISTRY_API_VERSION}",
        data=body.encode(),
        method="PUT",
        headers={"Authorization": f"Bearer {arm_token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        registry = json.load(r)
    for _ in range(tries):
        if props(registry).get("provisioningState") in ("Succeeded", None):
            return registry
        if props(registry).get("provisioningState") in ("Failed", "Canceled"):
            raise SubmitError(f"creating registry {registry_id} ended {props(registry)['provisioningState']}")
        time.sleep(wait)
        registry = arm_get(registry_id, arm_token, REGISTRY_API_VERSION, arm)
    raise SubmitError(f"registry {registry_id} is still being created: run make attach-registry again later")
