"""The workspace side of `make submit COMPUTE=local`: what Azure ML keeps between runs, kept here.

    python3 rehearsal/local_workspace.py register PLAN.json   # the plan's Environment, as Azure ML registers it
    python3 rehearsal/local_workspace.py upload-data [PLAN]   # ./data into the local datastore (make upload-data)
    python3 rehearsal/local_workspace.py registry-logins      # the registry's logins, made if missing (make registry)
    python3 rehearsal/local_workspace.py registry-token       # the password make submit pushes with

Environments: name, version and definition, in .azureml/local-environments.json (beside the
workspace's config.json: this rehearsal's workspace), across runs. Azure ML refuses a changed
definition under a registered version: "(UserError) Environment test_env with version 6 is already
registered and cannot be changed" (github.com/Azure/azure-cli-extensions/issues/5440; azure-ai-ml's
create_or_update PUTs the version it is given, azureml-core's register likewise); so does this. make submit
derives each version from its whole definition (aml.environment_version): the same build pushed to another
registry is another definition and another version, the same definition again is accepted.
The datastore: blob storage in Azurite (rehearsal/datastore.py), which local_run.py mounts datastore paths from.
The registry (`make registry`) asks for a login, as an ACR does: its logins are in
.azureml/local-registry-credentials (REGISTRY_CREDENTIALS names another file), and what Azure would hold about
who may pull from it, in .azureml/local-resources.json (see registry_logins and resources below).
Standard library only: it runs on the host, beside Docker.
"""

import json
import os
import secrets
import sys
import uuid
from pathlib import Path

import datastore


class LocalWorkspaceError(Exception):
    pass


def job_description():
    """azure/aml.py, the rehearsal's one import from azure/: the job description (the data path the submit side
    uses, who may pull). Found beside this folder when this file runs as a script, as make runs it."""
    azure = str(Path(__file__).resolve().parents[1] / "azure")
    if azure not in sys.path:
        sys.path.append(azure)
    import aml

    return aml


CIFAR10 = ("cifar-10-batches-py", "cifar-10-python.tar.gz")  # what torchvision's reader finds in a data folder


def registry_file():
    return Path(".azureml") / "local-environments.json"


def environment_of(plan):
    """(name, version, definition) of the plan's Environment, from the SDK's own serialization."""
    env = plan["environment"] if plan["sdk"] == "v1" else plan["job"]["environment"]
    definition = {k: v for k, v in env.items() if k not in ("name", "version")}
    return env["name"], str(env["version"]), definition


def register(plan):
    """Register the plan's Environment, or refuse a changed definition under an existing version."""
    name, version, definition = environment_of(plan)
    path = registry_file()
    known = json.loads(path.read_text()) if path.is_file() else {}
    key = f"{name}:{version}"
    if key in known and known[key] != definition:
        raise LocalWorkspaceError(
            f"Environment {name} with version {version} is already registered and cannot be changed "
            f"(Azure ML's answer. make submit derives the version from the whole definition, so another "
            f"definition under it was registered by something else: by hand, or by this project before the "
            f"version was so derived; this rehearsal's registry is {path}: remove {key} from it)"
        )
    known[key] = definition
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(known, indent=2, sort_keys=True) + "\n")
    return key


def named_inputs(plan):
    """The v1 job's named inputs (FileDatasets), resolved as the workspace resolves a saved dataset: the
    datastore folder its paths name, mounted read-only where `DatasetConsumptionConfig:<name>` stands in the
    arguments. In local_run.job_v1's mount form: {name: (path on the datastore, read-only, placeholder)}."""
    mounts = {}
    for name in plan["runConfiguration"].get("data") or {}:
        (uri,) = plan["datasets"][name]
        mounts[name] = (uri.split("/paths/", 1)[1].strip("/"), True, f"DatasetConsumptionConfig:{name}")
    return mounts


# The rehearsal's datastore is identity-based on storage that refuses shared keys, as a policy often requires:
# "If false, then all requests, including shared access signatures, must be authorized with Azure Active
# Directory" (allowSharedKeyAccess: learn.microsoft.com/dotnet/api/azure.provisioning.storage.storageaccount.
# allowsharedkeyaccess; learn.microsoft.com/azure/storage/common/shared-key-authorization-prevent).
# The SDK calls that upload with the login's identity there (azure/aml_v1.py, aml_v2.py: upload_call, upload);
# datastore.upload and upload_files sign with the datastore's key or SAS (azureml/data/azure_storage_datastore.py).
IDENTITY_UPLOADS = (
    "azureml.data.dataset_factory.FileDatasetFactory.upload_directory",  # Dataset.File.upload_directory
    "azure.ai.ml.operations._data_operations.DataOperations.create_or_update",  # a uri_folder data asset
)


def check_upload(plan):
    """Refuse an upload plan (`submit.py upload-data --dry-run`: {"sdk", "call", ...}) whose call would sign with
    a storage key, before anything is copied."""
    if plan.get("call") not in IDENTITY_UPLOADS:
        raise LocalWorkspaceError(
            f"the datastore refuses shared-key access and {plan.get('call')} signs with the storage key or a SAS "
            f"made from it: upload with Dataset.File.upload_directory (SDK v1) or a uri_folder data asset (SDK v2)"
        )


def upload_data(plan=None):
    """`make upload-data COMPUTE=local`: the data set in DATA_DIR (./data) uploaded to DATA_PATH (aml.DATA_TARGET)
    in the datastore, through azure-storage-blob (rehearsal/datastore.py); a folder without one (a fresh clone's
    ./data holds .gitkeep) is refused, and so is an
    upload `plan` (what the SDK would call, as its dry run prints it) that would need a storage key."""
    if plan is not None:
        check_upload(plan)
    source = Path(os.environ.get("DATA_DIR") or "data")
    found = [source / name for name in CIFAR10 if (source / name).exists()]
    if not found:
        raise LocalWorkspaceError(
            f"{source}/ holds neither {' nor '.join(CIFAR10)}: put CIFAR-10 there first (`make train` downloads it)"
        )
    target = (os.environ.get("DATA_PATH") or job_description().DATA_TARGET).strip("/")
    uploaded = datastore.put(found, target)
    registry = os.environ.get("REGISTRY") or "HOST:PORT"
    after = "" if os.environ.get("REGISTRY") else " (make registry starts one and prints its address)"
    print(
        f"uploaded {', '.join(p.name for p in found)} to the datastore's {target}/ ({len(uploaded)} blob"
        f"{'' if len(uploaded) == 1 else 's'}); "
        f"now: make submit COMPUTE=local REGISTRY={registry} DATA_PATH={target}{after}"
    )


# --- Who may push to and pull from the registry -----------------------------------------------------------------
# An ACR asks every client for a login. Its token exchange gives any Azure AD principal with a role on it (the
# person who pushes, a cluster's managed identity that pulls) a token to log in with under this username, and
# its admin user logs in under the registry's name (learn.microsoft.com/azure/container-registry/
# container-registry-authentication: `az acr login --expose-token`, "Admin account").
TOKEN_USER = "00000000-0000-0000-0000-000000000000"
REGISTRY_NAME = "local"
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"  # the AcrPull role's id (aml.PULL_ROLES)


def credentials_file():
    return Path(os.environ.get("REGISTRY_CREDENTIALS") or Path(".azureml") / "local-registry-credentials")


def registry_logins(create=False):
    """{username: password} of the registry's logins (docker/registry-entrypoint.sh reads the same file): the
    token that ACR's exchange would give, and the admin user's. `make registry` makes them (create=True)."""
    path = credentials_file()
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = f"{TOKEN_USER}:{secrets.token_hex(24)}\n{REGISTRY_NAME}:{secrets.token_hex(24)}\n"
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(lines)
    if not path.is_file():
        raise LocalWorkspaceError(
            f"{path} holds no registry logins: `make registry` starts the registry and writes them there "
            f"(REGISTRY_CREDENTIALS=FILE names the file of another one: USER:PASSWORD, one a line)"
        )
    logins = dict(line.split(":", 1) for line in path.read_text().splitlines() if ":" in line)
    if not {TOKEN_USER, REGISTRY_NAME} <= logins.keys():
        raise LocalWorkspaceError(f"{path} lacks {TOKEN_USER}'s or {REGISTRY_NAME}'s login: remove it, make registry")
    return logins


def resources_file():
    return Path(".azureml") / "local-resources.json"


def resources():
    """What Azure would hold about who may pull the job's image, in the shape a dry run's AZURE_RESOURCES takes
    (aml.state_from: ARM's registry, compute and roleAssignments). Written on first use as make submit leaves
    Azure: a registry with its admin user off (as make attach-registry and `az acr create` make it), a cluster with
    a system-assigned identity (aml_v1/aml_v2 create it so) holding AcrPull on the registry. Edit it to rehearse
    another workspace; remove it to start over."""
    path = resources_file()
    if path.is_file():
        state = json.loads(path.read_text())
        if not isinstance(state, dict):
            raise LocalWorkspaceError(f"{path} is not a JSON object with registry, compute, roleAssignments")
        return state
    registry = (
        f"/subscriptions/{uuid.UUID(int=0)}/resourceGroups/local/providers/Microsoft.ContainerRegistry/registries/"
        f"{REGISTRY_NAME}"
    )
    principal = str(uuid.uuid4())
    state = {
        "registry": {"id": registry, "name": REGISTRY_NAME, "properties": {"adminUserEnabled": False}},
        "compute": {
            "identity": {"type": "SystemAssigned", "principalId": principal},
            "properties": {"computeType": "AmlCompute", "properties": {}},
        },
        "roleAssignments": [
            {
                "properties": {
                    "roleDefinitionId": f"/providers/Microsoft.Authorization/roleDefinitions/{ACR_PULL}",
                    "principalId": principal,
                    "scope": registry,
                }
            }
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2) + "\n")
    return state


def pull_login(state):
    """(username, password) that Azure ML's runtime pulls the job's image with, or None: the registry's admin user
    if it is on, else the token of the cluster's managed identity if it holds a pull role on the registry (aml.py's
    check_pull_identity says why). None: the node pulls with no login, and the registry refuses it."""
    aml = job_description()
    if aml.props(state.get("registry")).get("adminUserEnabled"):
        return REGISTRY_NAME, registry_logins()[REGISTRY_NAME]
    principals = aml.principals(state.get("compute"))
    for assignment in state.get("roleAssignments") or []:
        granted = aml.props(assignment)
        role = granted.get("roleDefinitionId", "").rsplit("/", 1)[-1]
        if principals and role in aml.PULL_ROLES and granted.get("principalId", principals[0]) in principals:
            return TOKEN_USER, registry_logins()[TOKEN_USER]
    return None


def main(argv):
    if argv[:1] == ["register"] and len(argv) == 2:
        print(f"environment {register(json.loads(Path(argv[1]).read_text()))} registered", file=sys.stderr)
    elif argv[:1] == ["upload-data"] and len(argv) <= 2:
        upload_data(json.loads(Path(argv[1]).read_text()) if len(argv) == 2 else None)
    elif argv == ["registry-logins"]:
        registry_logins(create=True)
        print(f"registry logins: {credentials_file()}", file=sys.stderr)
    elif argv == ["registry-token"]:
        print(registry_logins()[TOKEN_USER])
    else:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main(sys.argv[1:]))
    except (LocalWorkspaceError, datastore.DatastoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
