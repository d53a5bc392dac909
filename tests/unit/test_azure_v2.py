"""make submit SDK=v2 up to the network: the command job azure-ai-ml would send (runs in the submit-v2 image)."""

import json
import re
import urllib.parse

import pytest

pytest.importorskip("azure.ai.ml", reason="SDK v2 tests run in the submit-v2 image")

import fake_aad  # noqa: E402
import fake_arm  # noqa: E402

import aml  # noqa: E402
import local_workspace  # noqa: E402
import submit  # noqa: E402

SDK = "v2"  # conftest's `source` fixture runs submit.py with this SDK
DIGEST = "sha256:" + "cd34" * 16
REF = f"myws.azurecr.io/cifar10-trainer@{DIGEST}"  # as publish.sh prints it


def test_v2_dry_run_is_a_command_job_on_the_pinned_image(source, capsys):
    assert submit.main(["run", "--image", REF, *"--dry-run --shm-size 4g -- --epochs 1".split()]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["sdk"] == "v2" and plan["experiment_name"] == "day1-experiment-train"  # the Azure tutorial's
    job = plan["job"]
    assert job["type"] == "command" and job["compute"] == "azureml:cpu-cluster"
    # Not v1's name: one version, one definition (v1 registers a python section on the same image)
    version = aml.environment_version({"tags": {}, "image": REF})  # its whole definition, as azure-ai-ml has it
    assert job["environment"] == {"name": "cifar10-trainer-v2", "version": version, "image": REF}
    assert job["component"]["command"] == "/opt/venv/bin/python train.py --epochs 1"
    assert job["environment_variables"] == {"IMAGE_REF": REF}
    assert job["component"]["code"] == str(source)
    assert job["resources"] == {"shm_size": "4g", "instance_count": 1}
    assert "distribution" not in job
    assert plan["compute"]["type"] == "amlcompute" and plan["compute"]["min_instances"] == 0
    assert plan["compute"]["tier"] == "dedicated"
    assert plan["compute"]["identity"] == {"type": "system_assigned"}  # pulls where the admin user is off (R1)


def test_v2_dataset_and_checkpoints_are_datastore_uris(source, capsys):
    flags = "--dry-run --data-path datasets/cifar10 --checkpoint-path checkpoints/cifar10/run-1 --low-priority"
    assert submit.main(["run", "--image", REF, *flags.split(), "--", "--epochs", "2"]) == 0
    plan = json.loads(capsys.readouterr().out)
    job = plan["job"]
    assert job["component"]["command"] == (
        "/opt/venv/bin/python train.py --epochs 2 --data-dir ${{inputs.cifar10}} "
        "--checkpoint-dir ${{outputs.checkpoints}} --resume auto --overwrite"
    )
    assert job["inputs"]["cifar10"] == {
        "mode": "ro_mount",
        "type": "uri_folder",
        "path": "azureml://datastores/workspaceblobstore/paths/datasets/cifar10",
    }
    assert job["outputs"]["checkpoints"]["mode"] == "rw_mount"
    assert job["outputs"]["checkpoints"]["path"].endswith("/paths/checkpoints/cifar10/run-1")
    assert plan["compute"]["tier"] == "low_priority"


def test_v2_one_build_registers_alike_from_any_commit_and_anew_in_another_registry(
    source, capsys, tmp_path, monkeypatch
):
    def environment(ref):
        assert submit.main(["run", "--image", ref, "--dry-run"]) == 0
        return json.loads(capsys.readouterr().out)["job"]["environment"]

    tagged = [environment(REF.replace("@", f":{tag}@")) for tag in ("0123ab", "4567cd")]
    assert tagged[0] == tagged[1] == environment(REF)
    other = environment(REF.replace("myws.azurecr.io", "127.0.0.1:5002"))
    assert other["version"] != tagged[0]["version"]
    monkeypatch.chdir(tmp_path)
    for env in (tagged[0], other):
        local_workspace.register({"sdk": "v2", "job": {"environment": env}})


def test_v2_refuses_stale_source_and_moving_tags(source, capsys):
    assert submit.main(["run", "--image", "myws.azurecr.io/cifar10-trainer:latest", "--dry-run"]) == 1
    assert "is not pinned" in capsys.readouterr().err
    (source / "data.py").write_text("# changed\n")
    assert submit.main(["run", "--image", REF, "--dry-run"]) == 1
    assert "differs from the code baked into this image" in capsys.readouterr().err


def test_v2_missing_credentials_are_named(source, tmp_path, capsys, monkeypatch):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"subscription_id": "0", "resource_group": "rg", "workspace_name": "ws"}))
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "s")
    assert submit.main(["prepare", "--config", str(config)]) == 1
    assert "service principal login needs AZURE_TENANT_ID, AZURE_CLIENT_ID" in capsys.readouterr().err
    monkeypatch.delenv("AZURE_CLIENT_SECRET")
    monkeypatch.setattr("sys.stdin", open("/dev/null"))
    assert submit.main(["prepare", "--config", str(config)]) == 1
    assert "no Azure credentials" in capsys.readouterr().err


def test_azure_ai_ml_is_not_in_the_training_runtime():
    # Microsoft advises against azure-ai-ml (v2) and azureml-core (v1) in one environment
    with pytest.raises(ModuleNotFoundError):
        import azureml.core  # noqa: F401


def test_v2_two_nodes_use_pytorch_distribution(source, capsys):
    assert submit.main(["run", "--image", REF, "--dry-run", "--nodes", "2", "--max-nodes", "2"]) == 0
    job = json.loads(capsys.readouterr().out)["job"]
    assert job["distribution"] == {"type": "pytorch", "process_count_per_instance": 1}
    assert job["resources"]["instance_count"] == 2


def test_v2_prepare_asks_for_a_registry_audience_token(source, tmp_path, monkeypatch, capsys):
    import aml
    import aml_v2

    asked = []

    class Credential:
        def get_token(self, *scopes):
            asked.extend(scopes)
            return type("AccessToken", (), {"token": "aad-token"})()

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"subscription_id": "0", "resource_group": "rg", "workspace_name": "ws"}))
    monkeypatch.setattr(aml_v2, "credential", lambda mode: Credential())
    monkeypatch.setattr(aml_v2, "registry_id", lambda client: "/subscriptions/0/registries/myreg")
    read = fake_arm.answer(monkeypatch)
    monkeypatch.setattr(aml, "acr_refresh_token", lambda server, token: f"acr-for-{server}-from-{token}")
    assert submit.main(["prepare", "--config", str(config)]) == 0
    assert asked == ["https://management.azure.com/.default", "https://containerregistry.azure.net/.default"]
    assert read == ["myreg", "cpu-cluster", "roleAssignments"]  # the registry, the cluster, who may pull
    assert (
        capsys.readouterr().out
        == "REGISTRY myreg.registry.example\nTOKEN acr-for-myreg.registry.example-from-aad-token\n"
    )


def test_v2_a_registry_other_than_the_workspaces_needs_a_connection(source, tmp_path, monkeypatch, capsys):
    """SDK v2 has no per-environment registry credential; a container_registry workspace connection
    pulls (azure-sdk-for-python#40122). Refused before any push without one; checked in the workspace."""
    from azure.ai.ml import MLClient
    from azure.ai.ml.entities import ManagedIdentityConfiguration, WorkspaceConnection
    from azure.core.exceptions import ResourceNotFoundError

    import aml_v2

    monkeypatch.setenv("REGISTRY", "other.registry.example")
    assert submit.main(["prepare", "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "SDK v2 pulls with a workspace connection" in err and "REGISTRY_CONNECTION" in err
    monkeypatch.setenv("REGISTRY_IDENTITY", "/subscriptions/0/userAssignedIdentities/puller")  # v1's way
    monkeypatch.setenv("REGISTRY_IDENTITY_CLIENT_ID", "0c1e7d00-0000-4000-8000-00000000c1d0")
    assert submit.main(["prepare", "--dry-run"]) == 1
    monkeypatch.setenv("REGISTRY_CONNECTION", "other-acr")
    assert submit.main(["prepare", "--dry-run"]) == 0
    assert capsys.readouterr().out.endswith("REGISTRY other.registry.example\n")

    connections = {}

    def get(self, name, **kwargs):  # the network edge: GET the workspace's connection
        if name not in connections:
            raise ResourceNotFoundError("not found")
        return connections[name]

    client = MLClient(object(), "0", "rg", "ws")
    monkeypatch.setattr(type(client.connections), "get", get)
    job, _, _ = submit.validate(aml_v2, submit.parse_args(["prepare"]), f"other.registry.example/c:t@sha256:{'0' * 64}")
    with pytest.raises(submit.aml.SubmitError, match="no container_registry connection 'other-acr'"):
        aml_v2.check_registry(client, job)
    credentials = ManagedIdentityConfiguration(client_id="cid", resource_id="/rid")
    connections["other-acr"] = WorkspaceConnection(
        name="other-acr", type="container_registry", target="https://other.registry.example", credentials=credentials
    )
    aml_v2.check_registry(client, job)


ADAPTER = "aml_v2"
# The scopes make submit's first container asks the login for (submit.py prepare: ARM, then the registry's for the
# ACR exchange), and its second's (submit.py run: ARM).
PREPARE = (aml.ARM_SCOPE, aml.REGISTRY_SCOPE)
RUN = (aml.ARM_SCOPE,)
# compose.yaml's submit-v2 service mounts ${AZURE_CONFIG_DIR:-~/.azure} at both (HOME=/tmp): the account record
# in ~/.azure, azure-identity's cache in ~/.IdentityService (azure/identity/_persistent_cache.py, _get_persistence)
MOUNTS = (".azure", ".IdentityService")


@pytest.mark.parametrize("mounts", [MOUNTS, MOUNTS[:1]], ids=["as-compose-mounts", "without-identityservice"])
def test_v2_one_device_code_per_make_submit_and_none_at_the_next(tmp_path, mounts):
    """azure-identity's DeviceCodeCredential with a persistent cache (msal-extensions' plain file where no
    keyring is, allow_unencrypted_storage) and the AuthenticationRecord it returned, saved and passed back, in
    processes that each lose their HOME but the mounted folders: one device code, then none. Without the
    ~/.IdentityService mount the cache is lost and the second container asks again."""
    azure = tmp_path / "host-azure"
    azure.mkdir()
    first = fake_aad.in_a_container(tmp_path, azure, mounts, ADAPTER, PREPARE)
    assert first.count("devicecode") == 1
    asked = []
    for scopes in (RUN, PREPARE):
        asked += fake_aad.in_a_container(tmp_path, azure, mounts, ADAPTER, scopes)
    if mounts == MOUNTS:
        assert "devicecode" not in asked and "token:urn:ietf:params:oauth:grant-type:device_code" not in asked
        assert {p.name for p in azure.iterdir()} == {"azure-ai-ml-account.json", "cifar10-trainer.nocae"}
    else:
        assert asked.count("devicecode") == 2


WORKSPACE = "/subscriptions/0/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws"


def upload_with_a_login(tmp_path, monkeypatch, credentials):
    """`make upload-data` (SDK v2) of a stand-in archive with a login's bearer token, against a workspace whose
    datastore holds `credentials` ("None": identity-based); (the requests sent, submit's exit status)."""
    from azure.ai.ml import MLClient
    from azure.core.credentials import AccessToken

    import aml_v2

    class Login:  # what aml_v2.credential returns: a TokenCredential
        def get_token(self, *scopes, **kwargs):
            return AccessToken("the-logins-token", 4102444800)

    sent = answer_workspace_and_storage(monkeypatch, credentials)
    monkeypatch.setattr(aml_v2, "credential", lambda mode: Login())
    monkeypatch.setattr(aml_v2, "connect", lambda settings, cred: MLClient(cred, "0", "rg", "ws"))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"subscription_id": "0", "resource_group": "rg", "workspace_name": "ws"}))
    data = tmp_path / "data"
    data.mkdir()
    (data / "cifar-10-python.tar.gz").write_bytes(b"stands in for the archive")
    monkeypatch.setattr(submit, "DATA", data)
    return sent, submit.main(["upload-data", "--config", str(config)])


def answer_workspace_and_storage(monkeypatch, credentials_type):
    """Azure ML's REST API and blob storage at requests' adapter, where azure-core's transport sends every call of
    azure-ai-ml and azure-storage-blob: the datastore (identity-based with credentials_type "None", as on storage
    that refuses shared keys), no data asset yet, blob writes answered 201/200, the asset version's PUT echoed.
    Shapes: the REST API's Datastores_Get and DataVersions_CreateOrUpdate, Blob service's Put Blob and Set Blob
    Metadata (learn.microsoft.com/rest/api/azureml, /rest/api/storageservices). [(method, URL, Authorization)]"""
    import io

    import requests

    sent = []
    datastore = {"datastoreType": "AzureBlob", "accountName": "account", "containerName": "container"}
    datastore.update(endpoint="core.windows.net", protocol="https", isDefault=True)
    datastore["credentials"] = {"credentialsType": credentials_type}

    def reply(method, url, body):
        path = urllib.parse.urlsplit(url).path
        if method == "GET" and path == f"{WORKSPACE}/datastores/workspaceblobstore":
            return 200, {"id": path, "name": "workspaceblobstore", "properties": datastore}
        if method == "POST" and path == f"{WORKSPACE}/datastores/workspaceblobstore/listSecrets":
            return 200, {"secretsType": "Sas", "sasToken": "sv=2025-01-05&sr=c&sp=rcw&sig=c2lnbmVkLXdpdGgtYS1rZXk%3D"}
        if "sig=" in url:  # a SAS made from the account key, on storage that refuses shared keys
            return 403, "KeyBasedAuthenticationNotPermitted"
        if method == "PUT" and path.startswith(f"{WORKSPACE}/data/cifar10/versions/"):
            return 200, {**json.loads(body), "id": path, "name": path.rsplit("/", 1)[1]}
        if urllib.parse.urlsplit(url).netloc == "account.blob.core.windows.net" and method == "PUT":
            return (200 if "comp=metadata" in url else 201), None
        return 404, {"error": {"code": "NotFound", "message": f"{method} {path}"}}

    def send(adapter, request, **kwargs):
        sent.append((request.method, request.url, request.headers.get("Authorization", "")))
        status, reply_body = reply(request.method, request.url, request.body)
        response = requests.Response()
        response.status_code, response.url, response.request, response.reason = status, request.url, request, "-"
        response._content = json.dumps(reply_body).encode() if reply_body else b""
        response.headers.update({"Content-Type": "application/json", "ETag": '"0x1"'})
        if isinstance(reply_body, str):  # Storage's error: its code in a header and in XML
            message = "Key based authentication is not permitted on this storage account."
            response._content = f"<Error><Code>{reply_body}</Code><Message>{message}</Message></Error>".encode()
            response.headers.update({"Content-Type": "application/xml", "x-ms-error-code": reply_body})
        response.raw = io.BytesIO(response._content)
        response.headers["Last-Modified"] = "Mon, 07 Dec 2026 00:00:00 GMT"
        return response

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    return sent


def test_v2_upload_data_is_a_data_asset_written_with_the_logins_token(source, tmp_path, monkeypatch, capsys):
    """azure-ai-ml's own create_or_update, up to HTTP: on an identity-based datastore it asks the workspace for no
    secret (no listSecrets) and writes every blob with the login's bearer token, never a shared key or SAS; the
    asset lands in LocalUpload/<hash>/data, which is what DATA_PATH must name."""
    sent, code = upload_with_a_login(tmp_path, monkeypatch, "None")
    assert code == 0
    blobs = [(method, url) for method, url, auth in sent if "blob.core.windows.net" in url]
    assert [method for method, _ in blobs] == ["HEAD", "PUT", "PUT"]  # exists?, Put Blob, Set Blob Metadata
    assert {auth for _, url, auth in sent if "blob.core.windows.net" in url} == {"Bearer the-logins-token"}
    assert not any("listSecrets" in url or "sig=" in url for _, url, _ in sent)
    uploaded = urllib.parse.urlsplit(blobs[1][1]).path
    assert re.fullmatch(r"/container/LocalUpload/[0-9a-f]{64}/data/cifar-10-python.tar.gz", uploaded)
    assert (
        f"now: make submit DATA_PATH={uploaded.removeprefix('/container/').rsplit('/', 1)[0]}\n"
        in capsys.readouterr().out
    )


def test_v2_a_key_signed_datastore_on_storage_that_refuses_keys_is_one_line_naming_the_way_out(
    source, tmp_path, monkeypatch, capsys
):
    """A datastore registered with the account key (the workspace's own, by default): azure-ai-ml lists a SAS made
    from it, which storage without shared-key access refuses (403 KeyBasedAuthenticationNotPermitted, "This SAS
    token is derived from an account key", github.com/microsoft/rag-experiment-accelerator/issues/866)."""
    sent, code = upload_with_a_login(tmp_path, monkeypatch, "AccountKey")
    assert code == 1
    assert any(url.endswith("listSecrets?api-version=2024-10-01-preview") for _, url, _ in sent)
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "KeyBasedAuthenticationNotPermitted" in err
        and "how-to-disable-local-auth-storage" in err
    )


def test_v2_upload_plan_is_the_data_asset_the_rehearsal_takes(source, upload_folders, monkeypatch, capsys):
    """`make upload-data DRY_RUN=1`: the call and the asset as azure-ai-ml serializes it; the rehearsal's datastore
    (identity-based, shared keys refused) takes it and uploads the data set to DATA_PATH."""
    data, handed = upload_folders
    monkeypatch.setattr(submit, "DATA", data)
    monkeypatch.setenv("DATASTORE", "cifarstore")
    assert submit.main(["upload-data", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (
        plan["sdk"] == "v2"
        and plan["call"] == "azure.ai.ml.operations._data_operations.DataOperations.create_or_update"
    )
    assert plan["asset"] == {
        "name": "cifar10",
        "tags": {},
        "datastore": "cifarstore",
        "path": str(data),
        "properties": {},
        "type": "uri_folder",
    }
    local_workspace.upload_data(plan)
    assert handed == [([data / "cifar-10-python.tar.gz"], "datasets/cifar10")]


def test_v2_the_cluster_azure_ai_ml_would_create_reads_back_as_asked_by_our_arm_reader(source):
    """R1, R7: aml.check_cluster reads ARM's shapes; azure-ai-ml's own REST models write them. A cluster as
    make submit creates it (system-assigned identity) shows no difference; one without identity, on a
    registry whose admin user is off, is refused before the push."""
    from azure.ai.ml._restclient.arm_ml_service import models as rest
    from azure.ai.ml.entities import AmlCompute

    import aml_v2

    for low_priority in (False, True):
        job = aml.intent(REF, str(source), [], vm_size="Standard_NC4as_T4_v3", low_priority=low_priority, nodes=2)
        created = aml_v2.compute_config(job)._to_rest_object()
        arm = created.as_dict()
        assert arm["identity"]["type"] == "SystemAssigned" and arm["properties"]["computeType"] == "AmlCompute"
        registry = {"id": "/r/myreg", "name": "myreg", "properties": {"adminUserEnabled": False}}
        roles = [{"properties": {"roleDefinitionId": f"/roleDefinitions/{fake_arm.ACR_PULL}"}}]
        arm["identity"]["principalId"] = "p-1"  # ARM fills it in once created
        assert aml.check_cluster(job, {"registry": registry, "compute": arm, "roleAssignments": roles}) == []
        # and the SDK reads the same JSON back as the cluster it is
        back = AmlCompute._load_from_rest(rest.ComputeResource(arm))
        assert (back.size, back.max_instances, back.identity.type) == ("Standard_NC4as_T4_v3", 4, "system_assigned")
    bare = rest.ComputeResource(
        identity=rest.ManagedServiceIdentity(type="None"),
        properties=rest.AmlCompute(properties=rest.AmlComputeProperties(vm_size="STANDARD_D2_V2")),
    ).as_dict()
    with pytest.raises(aml.SubmitError, match="no managed identity"):
        aml.check_cluster(aml.intent(REF, str(source), []), {"registry": registry, "compute": bare})


def test_v2_attach_registry_creates_and_attaches_with_the_confirmation_azure_ai_ml_asks_for(
    source, tmp_path, monkeypatch, capsys
):
    """R2: `az ml workspace update --container-registry ID` without -u is refused by azure-ai-ml's begin_update;
    make attach-registry makes the same call with update_dependent_resources=True, in the submit-v2 container."""
    from azure.ai.ml import MLClient
    from azure.ai.ml.entities import Workspace
    from azure.ai.ml.exceptions import ValidationException

    import aml_v2

    client = MLClient(object(), "0000", "rg", "ws")
    workspace = Workspace(name="ws", location="westeurope")
    sent = []

    class Poller:
        def result(self):
            return workspace

    def rest_update(resource_group, name, parameters, **kwargs):  # the network edge: the workspace's PATCH
        sent.append((resource_group, name, parameters.container_registry))
        return Poller()

    monkeypatch.setattr(type(client.workspaces), "get", lambda self, name=None, **kw: workspace)
    monkeypatch.setattr(client.workspaces._operation, "begin_update", rest_update)
    rid = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.ContainerRegistry/registries/myreg12345"
    with pytest.raises(ValidationException, match="--update-dependent-resources/-u"):  # the documented command
        client.workspaces.begin_update(Workspace(name="ws", container_registry=rid))
    assert sent == []

    created, config = [], tmp_path / "config.json"
    config.write_text(json.dumps({"subscription_id": "0000", "resource_group": "rg", "workspace_name": "ws"}))
    registry = {"id": rid, "name": "myreg12345", "properties": {"loginServer": "myreg12345.azurecr.io"}}
    monkeypatch.setattr(aml_v2, "credential", lambda mode: object())
    monkeypatch.setattr(aml_v2, "token", lambda cred, scope: "arm-token")
    monkeypatch.setattr(aml_v2, "connect", lambda settings, cred: client)
    monkeypatch.setattr(aml, "arm_get", lambda path, token, version, arm=aml.ARM, query="": None)  # missing
    monkeypatch.setattr(aml, "create_registry", lambda rid, where, token: created.append((rid, where)) or registry)
    assert submit.main(["attach-registry", "--acr", "myreg12345", "--config", str(config)]) == 0
    assert created == [(rid, "westeurope")] and sent == [("rg", "ws", rid)]
    assert "registry myreg12345.azurecr.io attached to workspace ws" in capsys.readouterr().out
    # attached already: nothing sent; another one: refused unless asked to replace
    workspace.container_registry = rid
    monkeypatch.setattr(aml, "arm_get", lambda path, token, version, arm=aml.ARM, query="": registry)
    assert submit.main(["attach-registry", "--acr", rid, "--config", str(config)]) == 0 and len(sent) == 1
    assert "already attached" in capsys.readouterr().out
    other = rid.replace("myreg12345", "other12345")
    assert submit.main(["attach-registry", "--acr", other, "--config", str(config)]) == 1
    assert "set ATTACH_REPLACE=1" in capsys.readouterr().err and len(sent) == 1
    assert submit.main(["attach-registry", "--acr", "my-reg", "--config", str(config)]) == 1
    assert "a registry name is 5 to 50 letters and digits" in capsys.readouterr().err
