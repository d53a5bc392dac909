"""make submit, SDK v1, up to the network: what azureml-core would send, and what is refused."""

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("azureml.core", reason="SDK v1 tests run in the training image")

import fake_aad  # noqa: E402
import fake_arm  # noqa: E402

import aml  # noqa: E402
import aml_v1  # noqa: E402
import local_workspace  # noqa: E402
import submit  # noqa: E402
from provenance import source_digest  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src"
SDK = "v1"  # conftest's `source` fixture runs submit.py with this SDK
DIGEST = "sha256:" + "ab12" * 16
REF = f"myws.azurecr.io/cifar10-trainer@{DIGEST}"  # as publish.sh prints it


def dry_run(capsys, *extra):
    rc = submit.main(["run", "--image", REF, "--dry-run", *extra])
    out = capsys.readouterr().out
    assert rc == 0
    return json.loads(out)


def test_dry_run_prints_the_environment_and_run_configuration_field_by_field(source, capsys):
    plan = dry_run(capsys, *"--compute gpu-cluster --shm-size 8g -- --epochs 1 --batch-size 8".split())
    assert plan["experiment"] == "day1-experiment-train"  # the Azure tutorial's
    env = plan["environment"]
    assert env["name"] == "cifar10-trainer" and not env["name"].lower().startswith(("azureml", "microsoft"))
    assert env["version"] == aml.environment_version(aml.definition_of(env))  # from the whole definition
    assert env["docker"]["baseImage"] == REF
    assert env["python"]["userManagedDependencies"] is True
    assert env["python"]["interpreterPath"] == "/opt/venv/bin/python"
    assert "condaDependencies" not in env["python"]
    rc = plan["runConfiguration"]
    # IMAGE_REF on the run configuration: azureml-core deprecates variables on the Environment
    assert rc["environmentVariables"] == {"IMAGE_REF": REF}
    assert env["environmentVariables"] == {} and rc["environment"]["environmentVariables"] == {}
    assert rc["script"] == "train.py"
    assert rc["arguments"] == ["--epochs", "1", "--batch-size", "8"]
    assert rc["target"] == "gpu-cluster"
    assert rc["docker"] == {"useDocker": True, "sharedVolumes": True, "arguments": [], "shmSize": "8g"}
    assert rc["environment"]["docker"]["baseImage"] == REF
    # one process on one node: no distribution
    assert rc["framework"] == "Python" and rc["communicator"] == "None" and rc["nodeCount"] == 1
    assert rc["dataReferences"] == {}
    assert plan["compute"] == {
        "name": "gpu-cluster",
        "if_missing": {
            "vm_size": "STANDARD_D2_V2",
            "vm_priority": "dedicated",
            "min_nodes": 0,
            "max_nodes": 4,  # the tutorial's cpu-cluster
            "idle_seconds_before_scaledown": 2400,
            "identity_type": "SystemAssigned",  # pulls where the registry's admin user is off (R1)
        },
    }
    assert plan["snapshot"]["files"] <= 20 and plan["snapshot"]["bytes"] < 1_000_000


def test_data_is_the_tutorials_named_input_and_checkpoints_a_mount_the_run_resumes_from(source, capsys):
    """DATA_PATH as part 4 passes it: Dataset.File.from_files(path=(datastore, path)).as_named_input(...)
    .as_mount(), in the form Experiment.submit sends (the saved dataset's id is the service's to give)."""
    flags = "--datastore cifarstore --data-path datasets/cifar10 --checkpoint-path checkpoints/cifar10/run-1"
    plan = dry_run(capsys, *flags.split(), "--low-priority", "--", "--epochs", "2")
    rc = plan["runConfiguration"]
    assert (
        rc["arguments"]
        == (
            "--epochs 2 --data-dir DatasetConsumptionConfig:cifar10 "
            "--checkpoint-dir $AZUREML_DATAREFERENCE_checkpoints --resume auto --overwrite"
        ).split()
    )
    data = rc["data"]["cifar10"]
    assert (data["mechanism"], data["environmentVariableName"], data["dataLocation"]["dataset"]["name"]) == (
        "mount",
        "cifar10",
        "cifar10",
    )
    (path,) = plan["datasets"]["cifar10"]
    assert path.startswith("azureml://subscriptions/") and path.endswith(
        "/datastores/cifarstore/paths/datasets/cifar10"
    )
    assert list(rc["dataReferences"]) == ["checkpoints"]
    refs = rc["dataReferences"]["checkpoints"]
    assert refs == {
        "dataStoreName": "cifarstore",
        "pathOnDataStore": "checkpoints/cifar10/run-1",
        "mode": "mount",
        "overwrite": False,
        "pathOnCompute": None,
    }
    assert plan["compute"]["if_missing"]["vm_priority"] == "lowpriority"
    assert plan["experiment"] == "day1-experiment-data"  # part 4's
    # COMPUTE=local mounts it read-only where the placeholder stands, as a saved dataset resolves
    mount = ("datasets/cifar10", True, "DatasetConsumptionConfig:cifar10")
    assert local_workspace.named_inputs(plan) == {"cifar10": mount}


@pytest.mark.parametrize(
    "ref",
    [
        "myws.azurecr.io/cifar10-trainer:latest",
        "myws.azurecr.io/cifar10-trainer",
        "myws.azurecr.io/cifar10-trainer:v1@sha256:123",
    ],
)
def test_a_moving_or_malformed_image_reference_is_refused(source, capsys, ref):
    assert submit.main(["run", "--image", ref, "--dry-run"]) == 1
    assert "is not pinned as REPO@sha256:DIGEST" in capsys.readouterr().err


def test_one_build_registers_alike_from_any_commit_and_anew_in_another_registry(source, capsys, tmp_path, monkeypatch):
    """R9: publish.sh's tag names the commit, the Environment registers the digest alone; and the version
    follows the whole definition, so the same build in a second registry is a new version, not a refusal."""
    tagged = [dry_run(capsys, "--image", REF.replace("@", f":{tag}@"))["environment"] for tag in ("0123ab", "4567cd")]
    assert tagged[0] == tagged[1] == dry_run(capsys)["environment"]
    assert tagged[0]["docker"]["baseImage"] == REF
    other = dry_run(capsys, "--image", REF.replace("myws.azurecr.io", "other.azurecr.io"))["environment"]
    assert other["version"] != tagged[0]["version"]
    monkeypatch.chdir(tmp_path)  # the rehearsal's registry takes both, as Azure would
    for env in (tagged[0], other, tagged[1]):
        local_workspace.register({"sdk": "v1", "environment": env})


def test_src_that_differs_from_the_image_is_refused(source, capsys):
    with (source / "model.py").open("a") as f:
        f.write("# an edit after the image was built\n")
    assert submit.main(["run", "--image", REF, "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "differs from the code baked into this image" in err and "rebuild and push" in err
    assert submit.main(["check-source"]) == 1


def test_check_source_passes_for_the_image_itself(source, capsys):
    assert submit.main(["check-source"]) == 0
    assert "matches the image's code" in capsys.readouterr().out


@pytest.mark.skipif(not Path("/app/src.sha256").is_file(), reason="runs inside the training image")
def test_the_image_carries_the_digest_of_its_own_code():
    assert Path("/app/src.sha256").read_text().strip() == source_digest("/app/src")


def test_missing_workspace_config_is_one_clear_error(source, tmp_path, capsys):
    assert submit.main(["prepare", "--config", str(tmp_path / "nope.json")]) == 1
    err = capsys.readouterr().err
    assert "no Azure ML workspace configured" in err and "AZUREML_SUBSCRIPTION_ID" in err


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"subscription_id": "0000", "resource_group": "rg", "workspace_name": "ws"}))
    return path


def test_missing_service_principal_variables_are_named(source, config, capsys, monkeypatch):
    monkeypatch.setenv("AZURE_CLIENT_ID", "app-id")
    assert submit.main(["prepare", "--config", str(config)]) == 1
    assert "service principal login needs AZURE_TENANT_ID, AZURE_CLIENT_SECRET" in capsys.readouterr().err


def test_no_credentials_and_no_terminal_is_refused_before_any_login(source, config, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", open("/dev/null"))
    monkeypatch.delenv("AML_TERMINAL", raising=False)
    assert submit.main(["prepare", "--config", str(config)]) == 1
    assert "no Azure credentials" in capsys.readouterr().err


def test_workspace_from_environment_variables(monkeypatch, tmp_path):
    for var, value in zip(aml.WORKSPACE_VARS, ("sub", "rg", "ws"), strict=True):
        monkeypatch.setenv(var, value)
    assert aml.workspace_settings(tmp_path / "absent.json") == {
        "subscription_id": "sub",
        "resource_group": "rg",
        "workspace_name": "ws",
    }


def test_service_principal_from_environment_is_azureml_core_auth(monkeypatch):
    from azureml.core.authentication import ServicePrincipalAuthentication

    for var in aml.SP_VARS:
        monkeypatch.setenv(var, "x")
    assert isinstance(aml_v1.credential("auto"), ServicePrincipalAuthentication)


def test_snapshot_honours_amlignore_and_refuses_oversize(tmp_path):
    shutil.copytree(SRC, tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "src" / "outputs").mkdir()
    (tmp_path / "src" / "outputs" / "model.pt").write_bytes(b"0" * 1000)
    snapshot = aml.check_snapshot(tmp_path / "src")
    assert snapshot["paths"] == sorted(p.name for p in SRC.iterdir() if p.is_file())
    assert "outputs/model.pt" not in snapshot["paths"] and snapshot["files"] == len(snapshot["paths"])
    for i in range(aml.SNAPSHOT_MAX_FILES):
        (tmp_path / "src" / f"extra_{i}.txt").write_text("x")
    with pytest.raises(aml.SubmitError, match="add what is not code to .*amlignore"):
        aml.check_snapshot(tmp_path / "src")


def test_azure_ai_ml_is_not_in_the_training_runtime():
    # Microsoft advises against azure-ai-ml (v2) and azureml-core (v1) in one environment
    with pytest.raises(ModuleNotFoundError):
        import azure.ai.ml  # noqa: F401


def test_two_nodes_use_pytorch_configuration(source, capsys):
    plan = dry_run(capsys, "--nodes", "2", "--procs-per-node", "2")
    rc = plan["runConfiguration"]
    assert rc["framework"] == "PyTorch" and rc["nodeCount"] == 2
    assert rc["pytorch"] == {"communicationBackend": "nccl", "processCount": 4, "nodeCount": 2}
    assert plan["compute"]["if_missing"]["max_nodes"] == 4  # the tutorial's; more nodes get more (test_azure_aml)
    assert submit.main(["run", "--image", REF, "--dry-run", "--nodes", "3", "--max-nodes", "2"]) == 1
    assert "set MAX_NODES=3" in capsys.readouterr().err


def test_prepare_logs_in_and_asks_azureml_core_for_a_registry_audience_token(source, config, monkeypatch, capsys):
    from azureml.core.authentication import ServicePrincipalAuthentication

    asked, exchanged = [], []

    class Credential:  # what ServicePrincipalAuthentication wraps: azure-identity's ClientSecretCredential
        def get_token(self, *scopes):
            asked.extend(scopes)
            return type("AccessToken", (), {"token": "aad-token"})()

    for var in aml.SP_VARS:
        monkeypatch.setenv(var, "x")
    monkeypatch.setattr(ServicePrincipalAuthentication, "_get_sp_credential_object", lambda self: Credential())
    monkeypatch.setattr(ServicePrincipalAuthentication, "get_token", lambda self: Credential().get_token("arm"))
    monkeypatch.setattr(aml_v1, "connect", lambda settings, auth: "workspace")
    monkeypatch.setattr(aml_v1, "registry_id", lambda ws: "/subscriptions/0/registries/myreg")
    read = fake_arm.answer(monkeypatch)
    monkeypatch.setattr(aml, "acr_refresh_token", lambda server, token: exchanged.append((server, token)) or "acr")
    assert submit.main(["prepare", "--config", str(config)]) == 0
    assert asked == ["arm", "https://containerregistry.azure.net/.default"]
    assert exchanged == [("myreg.registry.example", "aad-token")]
    assert read == ["myreg", "cpu-cluster", "roleAssignments"]  # the registry, the cluster, who may pull
    assert capsys.readouterr().out == "REGISTRY myreg.registry.example\nTOKEN acr\n"  # what submit.sh reads


def test_interactive_login_with_service_principal_variables_gets_a_registry_token(monkeypatch, tmp_path):
    """AZUREML_SERVICE_PRINCIPAL_* make InteractiveLoginAuthentication defer to an ambient
    ServicePrincipalAuthentication, whose missing _get_resource_token raised NotImplementedError."""
    from azureml.core.authentication import InteractiveLoginAuthentication, ServicePrincipalAuthentication

    for var, value in (("TENANT_ID", "tenant"), ("ID", "app-id"), ("PASSWORD", "secret")):
        monkeypatch.setenv(f"AZUREML_SERVICE_PRINCIPAL_{var}", value)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AML_TERMINAL", "1")
    monkeypatch.setenv("AZUREML_AUTH_CONFIG_DIR", "")  # credential() sets it: undone after the test
    asked = []

    class Credential:  # the network edge: azure-identity's token call
        def get_token(self, *scopes):
            asked.extend(scopes)
            return type("AccessToken", (), {"token": "aad-token"})()

    monkeypatch.setattr(ServicePrincipalAuthentication, "_get_sp_credential_object", lambda self: Credential())
    auth = aml_v1.credential("interactive")
    assert isinstance(auth, InteractiveLoginAuthentication)
    assert isinstance(auth._ambient_auth, ServicePrincipalAuthentication)
    assert aml_v1.token(auth, aml.REGISTRY_SCOPE) == "aad-token"
    assert asked == [aml.REGISTRY_SCOPE]


ADAPTER = "aml_v1"
# The scopes make submit's first container asks the login for (submit.py prepare: ARM, then the registry's for the
# ACR exchange), and its second's (submit.py run: ARM).
PREPARE = (aml.ARM_SCOPE, aml.REGISTRY_SCOPE)
RUN = (aml.ARM_SCOPE,)
MOUNTS = (".azure",)  # compose.yaml's submit service: ${AZURE_CONFIG_DIR:-~/.azure} at /tmp/.azure (HOME=/tmp)


def test_one_device_code_per_make_submit_and_none_at_the_next(tmp_path):
    """azureml-core's own device-code login (msal, the vendored Azure CLI profile), in processes that each
    lose their HOME but the mounted ~/.azure: the first container signs in once, the second and a later
    make submit's find the login in the mounted folder. azureml-core's default folder, ~/.azureml/auth, is
    the container's tmpfs: there, the second container asks for another device code."""
    azure = tmp_path / "host-azure"
    azure.mkdir()
    first = fake_aad.in_a_container(tmp_path, azure, MOUNTS, ADAPTER, PREPARE)
    assert first.count("devicecode") == 1
    for scopes in (RUN, PREPARE):  # no terminal needed once signed in
        again = fake_aad.in_a_container(tmp_path, azure, MOUNTS, ADAPTER, scopes, terminal=False)
        assert "devicecode" not in again and not any(call.startswith("token:urn") for call in again), again
    assert (azure / "msal_token_cache.json").is_file()  # msal-extensions' plain file on Linux (no encryption)


def test_without_a_terminal_only_a_token_cache_counts_as_a_login(source, config, capsys, monkeypatch, tmp_path):
    """azureml-core's Azure CLI code writes ~/.azure/azureProfile.json on its own, before any login: that file
    alone, with no terminal to show a device code, is refused up front in one line."""
    (tmp_path / ".azure").mkdir()
    (tmp_path / ".azure" / "azureProfile.json").write_text('{"installationId": "0", "subscriptions": []}')
    monkeypatch.setattr("sys.stdin", open("/dev/null"))
    assert submit.main(["prepare", "--config", str(config)]) == 1
    assert "no Azure credentials: interactive login needs a terminal" in capsys.readouterr().err


def test_a_registry_other_than_the_workspaces_needs_a_pulling_identity(source, capsys, monkeypatch):
    monkeypatch.setenv("REGISTRY", "other.registry.example")
    assert submit.main(["run", "--image", REF, "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "is not the workspace's registry" in err and "REGISTRY_IDENTITY" in err and err.count("\n") == 1
    assert submit.main(["prepare", "--dry-run"]) == 1  # what submit.sh runs before any push
    capsys.readouterr()
    monkeypatch.setenv("REGISTRY_IDENTITY", "/subscriptions/0/userAssignedIdentities/puller")
    monkeypatch.setenv("REGISTRY_IDENTITY_CLIENT_ID", "0c1e7d00-0000-4000-8000-00000000c1d0")
    registry = dry_run(capsys)["environment"]["docker"]["baseImageRegistry"]
    assert registry == {
        "address": "other.registry.example",
        "username": None,
        "password": None,
        "registryIdentity": {
            "resourceId": "/subscriptions/0/userAssignedIdentities/puller",
            "clientId": "0c1e7d00-0000-4000-8000-00000000c1d0",
        },
    }
    monkeypatch.setenv("COMPUTE", "local")  # the rehearsal pulls from any registry the host's Docker can
    assert dry_run(capsys)["environment"]["docker"]["baseImageRegistry"]["address"] is None


def test_bad_train_args_end_in_the_trainers_own_error_before_anything(source, capsys):
    with pytest.raises(SystemExit) as e:
        submit.main(["prepare", "--dry-run", "--", "--epochs", "zero"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --epochs: expected an integer") and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:  # checked against the job's WORLD_SIZE, as each rank will
        submit.main(["prepare", "--dry-run", "--nodes", "2", "--", "--batch-size", "1"])
    assert e.value.code == 2 and "give at least one image per rank (2)" in capsys.readouterr().err


def test_settings_come_from_makes_variables_with_the_intents_defaults(source, capsys, monkeypatch):
    for var, value in {"NODES": "2", "SHM_SIZE": "4g", "TRAIN_ARGS": "--epochs 3", "LOW_PRIORITY": "1"}.items():
        monkeypatch.setenv(var, value)
    plan = dry_run(capsys)
    rc = plan["runConfiguration"]
    assert rc["arguments"] == ["--epochs", "3"] and rc["docker"]["shmSize"] == "4g" and rc["nodeCount"] == 2
    assert plan["compute"]["if_missing"] == {
        **plan["compute"]["if_missing"],
        "max_nodes": 4,
        "vm_priority": "lowpriority",
    }
    assert plan["compute"]["name"] == "cpu-cluster" and plan["experiment"] == "day1-experiment-train"


def test_data_path_is_the_tutorials_part_4_experiment_unless_one_is_given(source, capsys, monkeypatch):
    assert dry_run(capsys, "--data-path", "datasets/cifar10")["experiment"] == "day1-experiment-data"
    monkeypatch.setenv("EXPERIMENT", "mine")
    assert dry_run(capsys, "--data-path", "datasets/cifar10")["experiment"] == "mine"


def rslex_upload(monkeypatch):
    """Where Dataset.File.upload_directory leaves Python: rslex's Copier (the Rust engine that resolves the
    datastore and writes the blobs), recorded with the locations it is given. [(destination, source, volume)]"""
    import azureml.dataprep.rslex as rslex

    copies = []

    class Location:  # rslex.PyLocationInfo, readable
        def __init__(self, kind, path, options):
            self.where = path if kind == "uri" else f"{kind}:{path}"

        @classmethod
        def from_uri(cls, uri):
            return cls("uri", uri, {})

    class Copier:
        def __init__(self, destination, source, if_exists):
            self.copy = [destination.where, source, if_exists == rslex.PyIfDestinationExists.MERGE_WITH_OVERWRITE]

        def copy_volume(self, volume, base, show_progress, *rest):
            copies.append((*self.copy, volume.where))

    monkeypatch.setattr(rslex, "PyLocationInfo", Location)
    monkeypatch.setattr(rslex, "Copier", Copier)
    return copies


@pytest.mark.parametrize("datastore", ["", "cifarstore"], ids=["default-datastore", "DATASTORE"])
def test_upload_data_signs_with_the_login_not_a_storage_key(source, config, monkeypatch, tmp_path, capsys, datastore):
    """Part 4's upload through Dataset.File.upload_directory: the datastore's azureml:// URI goes to rslex, which
    writes with the login's identity where the datastore is identity-based. datastore.upload (what the tutorial
    calls) needs the datastore's account key or SAS, which an identity-based datastore does not hold."""
    from azureml.core import Datastore, Workspace
    from azureml.data.azure_storage_datastore import AzureBlobDatastore

    ws = Workspace("0000", "rg", "ws", auth=aml_v1.NoLogin(), _disable_service_check=True)
    # Identity-based: no account key, no SAS (credential_type "None"), as a datastore on key-refusing storage is
    stores = {name: AzureBlobDatastore(ws, name, "container", "account") for name in ("workspaceblobstore", datastore)}
    assert stores["workspaceblobstore"].credential_type == "None"
    monkeypatch.setattr(aml_v1, "credential", lambda mode: aml_v1.NoLogin())
    monkeypatch.setattr(aml_v1, "connect", lambda settings, auth: ws)
    monkeypatch.setattr(Workspace, "get_default_datastore", lambda self: stores["workspaceblobstore"])  # a GET
    monkeypatch.setattr(Datastore, "get", staticmethod(lambda ws, name: stores[name]))  # a GET

    def key_signed(self, *args, **kwargs):
        raise AssertionError("datastore.upload signs with the datastore's account key or SAS: this one has neither")

    monkeypatch.setattr(AzureBlobDatastore, "upload", key_signed)
    copies = rslex_upload(monkeypatch)
    data = tmp_path / "data"
    data.mkdir()
    (data / "cifar-10-python.tar.gz").write_bytes(b"stands in for the archive")
    monkeypatch.setattr(submit, "DATA", data)
    monkeypatch.setenv("DATASTORE", datastore)
    assert submit.main(["upload-data", "--config", str(config)]) == 0
    uri = f"azureml://subscriptions/0000/resourcegroups/rg/workspaces/ws/datastores/{datastore or 'workspaceblobstore'}"
    assert copies == [(f"{uri}/paths/datasets/cifar10", str(data), True, f"Local:{data}/")]
    assert "now: make submit SDK=v1 DATA_PATH=datasets/cifar10" in capsys.readouterr().out


def test_the_rehearsals_datastore_takes_the_upload_plan_and_refuses_a_key_signed_one(
    source, monkeypatch, upload_folders, capsys
):
    """`make upload-data DRY_RUN=1` prints the SDK call and its arguments; the rehearsal's datastore, identity-based
    on storage that refuses shared keys, uploads after this plan and refuses datastore.upload's, uploading nothing."""
    from azureml.data.azure_storage_datastore import AzureBlobDatastore

    data, handed = upload_folders
    monkeypatch.setattr(submit, "DATA", data)
    assert submit.main(["upload-data", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan == {
        "sdk": "v1",
        "call": "azureml.data.dataset_factory.FileDatasetFactory.upload_directory",
        "src_dir": str(data),
        "target": {"datastore": None, "path": "datasets/cifar10"},  # the workspace's default
    }
    keyed = {**plan, "call": f"{AzureBlobDatastore.upload.__module__}.{AzureBlobDatastore.upload.__qualname__}"}
    with pytest.raises(local_workspace.LocalWorkspaceError, match="refuses shared-key access and azureml.data.azure"):
        local_workspace.upload_data(keyed)
    assert handed == []
    local_workspace.upload_data(plan)
    assert handed == [([data / "cifar-10-python.tar.gz"], "datasets/cifar10")]
