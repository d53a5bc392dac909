"""The workspace side of `make submit COMPUTE=local`: what Azure ML keeps between runs, kept here.

    python3 rehearsal/local_workspace.py register PLAN.json   # the plan's Environment, as Azure ML registers it
    python3 rehearsal/local_workspace.py upload-data [PLAN]   # ./data into the local datastore (make upload-data)

Environments: name, version and definition, in .azureml/local-environments.json (beside the
workspace's config.json: this rehearsal's workspace), across runs. Azure ML refuses a changed
definition under a registered version: "(UserError) Environment test_env with version 6 is already
registered and cannot be changed" (github.com/Azure/azure-cli-extensions/issues/5440; azure-ai-ml's
create_or_update PUTs the version it is given, azureml-core's register likewise); so does this. make submit
derives each version from its whole definition (aml.environment_version): the same build pushed to another
registry is another definition and another version, the same definition again is accepted.
The datastore: LOCAL_DATASTORE (default .), the folder local_run.py mounts datastore paths from.
Standard library only: it runs on the host, beside Docker.
"""

import json
import os
import shutil
import sys
from pathlib import Path

# The rehearsal's one import from azure/: the job description (the data path the submit side uses).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "azure"))
import aml  # noqa: E402


class LocalWorkspaceError(Exception):
    pass


CIFAR10 = ("cifar-10-batches-py", "cifar-10-python.tar.gz")  # what torchvision's reader finds in a data folder


def datastore():
    return Path(os.environ.get("LOCAL_DATASTORE", "."))


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
    """`make upload-data COMPUTE=local`: the data set in DATA_DIR (./data) copied to DATA_PATH (aml.DATA_TARGET)
    in the datastore; a folder without one (a fresh clone's ./data holds .gitkeep) is refused, and so is an
    upload `plan` (what the SDK would call, as its dry run prints it) that would need a storage key."""
    if plan is not None:
        check_upload(plan)
    source = Path(os.environ.get("DATA_DIR") or "data")
    found = [source / name for name in CIFAR10 if (source / name).exists()]
    if not found:
        raise LocalWorkspaceError(
            f"{source}/ holds neither {' nor '.join(CIFAR10)}: put CIFAR-10 there first (`make train` downloads it)"
        )
    target = (os.environ.get("DATA_PATH") or aml.DATA_TARGET).strip("/")
    for item in found:
        copy = shutil.copytree if item.is_dir() else shutil.copy2
        (datastore() / target).mkdir(parents=True, exist_ok=True)
        copy(item, datastore() / target / item.name, **({"dirs_exist_ok": True} if item.is_dir() else {}))
    registry = os.environ.get("REGISTRY") or "HOST:PORT"
    after = "" if os.environ.get("REGISTRY") else " (make registry starts one and prints its address)"
    print(
        f"copied {', '.join(p.name for p in found)} to {datastore() / target}/; "
        f"now: make submit COMPUTE=local REGISTRY={registry} DATA_PATH={target}{after}"
    )


def main(argv):
    if argv[:1] == ["register"] and len(argv) == 2:
        print(f"environment {register(json.loads(Path(argv[1]).read_text()))} registered", file=sys.stderr)
    elif argv[:1] == ["upload-data"] and len(argv) <= 2:
        upload_data(json.loads(Path(argv[1]).read_text()) if len(argv) == 2 else None)
    else:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main(sys.argv[1:]))
    except LocalWorkspaceError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
