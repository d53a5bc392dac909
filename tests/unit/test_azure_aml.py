"""The SDK-neutral part of `make submit`: the job's intent, and the registry login's two HTTP calls
(ARM for the registry's login server, the ACR token exchange), against servers started here."""

import base64
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

import aml
import local_workspace

DIGEST = "sha256:" + "ef56" * 16
REF = f"registry.example/cifar10-trainer:0123456789ab-fedcba987654@{DIGEST}"  # as publish.sh printed it until R9
PINNED = f"registry.example/cifar10-trainer@{DIGEST}"  # as it prints it now, and as the Environment registers it
REGISTRY_ID = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.ContainerRegistry/registries/myreg"


def jwt(claims):
    encode = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{encode({'alg': 'none'})}.{encode(claims)}.signature"


@pytest.fixture
def server():
    """A local HTTP server that records each request and answers with `reply` as JSON."""
    seen, reply = [], {}

    class Handler(BaseHTTPRequestHandler):
        def answer(self, body):
            seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body})
            data = json.dumps(reply).encode()
            self.send_response(reply.get("status", 200))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.answer(None)

        def do_POST(self):
            self.answer(self.rfile.read(int(self.headers["Content-Length"])).decode())

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}", seen, reply
    httpd.shutdown()


def test_acr_exchange_posts_the_documented_form_with_the_tokens_tenant(server):
    base, seen, reply = server
    reply["refresh_token"] = "acr-refresh-token"
    aad = jwt({"tid": "tenant-guid", "aud": "https://containerregistry.azure.net"})
    assert aml.acr_refresh_token("myreg.registry.example", aad, base=base) == "acr-refresh-token"
    (request,) = seen
    assert request["method"] == "POST" and request["path"] == "/oauth2/exchange"
    assert request["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert dict(urllib.parse.parse_qsl(request["body"])) == {
        "grant_type": "access_token",
        "service": "myreg.registry.example",
        "tenant": "tenant-guid",
        "access_token": aad,
    }


def test_the_exchange_asks_for_the_registry_audience_not_arm():
    assert aml.REGISTRY_SCOPE == "https://containerregistry.azure.net/.default" != aml.ARM_SCOPE


def test_a_token_without_tenant_is_one_clear_error():
    with pytest.raises(aml.SubmitError, match="no tenant"):
        aml.tenant_of("not-a-jwt")


def test_the_login_server_is_read_from_the_registry_resource(server):
    base, seen, reply = server
    # Not NAME.azurecr.io: sovereign clouds and upper-case names differ; ARM says what it is.
    reply.update(id=REGISTRY_ID, name="MyReg", properties={"loginServer": "myreg.registry.sovereign.example"})
    assert aml.registry_login_server(REGISTRY_ID, "arm-token", arm=base) == "myreg.registry.sovereign.example"
    (request,) = seen
    assert request["method"] == "GET"
    assert request["path"] == f"{REGISTRY_ID}?api-version={aml.REGISTRY_API_VERSION}"
    assert request["headers"]["Authorization"] == "Bearer arm-token"


def test_a_workspace_without_registry_is_one_clear_error():
    with pytest.raises(aml.SubmitError, match="no container registry yet"):
        aml.registry_login_server(None, "arm-token")
    with pytest.raises(aml.SubmitError, match="no loginServer yet"):
        aml.login_server_of({"id": REGISTRY_ID, "properties": {}})


def test_the_intent_mounts_data_read_only_and_checkpoints_writable():
    job = aml.intent(REF, "src", ["--epochs", 1], data_path="/datasets/cifar10/", checkpoint_path="ck/run-1")
    # with data: the tutorial's part 4 experiment
    assert job.trainer_args == ("--epochs", "1") and job.experiment == "day1-experiment-data"
    assert job.compute == "cpu-cluster" and job.environment_variables == {"IMAGE_REF": PINNED}
    data, checkpoints = job.mounts
    assert (data.path, data.writable, data.flag, data.then) == ("datasets/cifar10", False, "--data-dir", ())
    assert (checkpoints.writable, checkpoints.then) == (True, ("--resume", "auto", "--overwrite"))


def test_more_nodes_than_the_cluster_allows_is_refused():
    with pytest.raises(aml.SubmitError, match="set MAX_NODES=3"):
        aml.intent(REF, "src", [], nodes=3, max_nodes=2)
    assert aml.intent(REF, "src", [], nodes=3).max_nodes == 4  # the tutorial's cpu-cluster
    assert aml.intent(REF, "src", [], nodes=6).max_nodes == 6  # a cluster created for the run fits it


def test_the_two_sdks_register_under_names_of_their_own():
    """Environment versions are immutable and the SDKs' definitions differ: a name each."""
    assert aml.environment_name("v1") != aml.environment_name("v2")
    assert not any(n.lower().startswith(("azureml", "microsoft")) for n in aml.ENV_NAMES.values())  # reserved


def test_the_registered_image_is_the_digest_without_the_tag_publish_sh_pushed():
    """R9: the same digest pushed from two commits (publish.sh's tag names the commit) is one definition."""
    assert aml.pinned_image(REF) == aml.pinned_image(REF.replace("0123456789ab", "ba9876543210")) == PINNED
    assert aml.pinned_image(PINNED) == PINNED
    assert aml.pinned_image(f"127.0.0.1:5001/cifar10-trainer@{DIGEST}") == f"127.0.0.1:5001/cifar10-trainer@{DIGEST}"
    assert aml.intent(REF, "src", []).image == PINNED


def test_the_version_follows_the_whole_definition():
    """The same build in a second registry (another ACR; the rehearsal's :5002 after :5001) is another
    definition: under the digest-only version it was refused as 'already registered and cannot be changed'."""
    first = {"image": f"127.0.0.1:5001/cifar10-trainer@{DIGEST}"}
    second = {"image": f"127.0.0.1:5002/cifar10-trainer@{DIGEST}"}
    assert aml.environment_version(first) != aml.environment_version(second)
    assert aml.environment_version(first) == aml.environment_version(dict(first))  # the same again: accepted
    assert len(aml.environment_version(first)) == 16
    assert aml.definition_of({"name": "n", "version": "1", **first}) == first


def test_a_registry_other_than_the_workspaces_is_refused_unless_the_sdks_documented_way_is_set():
    job = aml.intent(REF, "src", [], registry="other.registry.example")
    for sdk, fix in (("v1", "REGISTRY_IDENTITY"), ("v2", "REGISTRY_CONNECTION")):
        with pytest.raises(aml.SubmitError, match=f"not the workspace's registry.*{fix}"):
            aml.check_pull(sdk, job)
    identity = aml.intent(REF, "src", [], registry="other.registry.example", registry_identity=("/rid", "cid"))
    aml.check_pull("v1", identity)
    with pytest.raises(aml.SubmitError, match="REGISTRY_CONNECTION"):
        aml.check_pull("v2", identity)  # v2 has no per-environment identity
    aml.check_pull("v2", aml.intent(REF, "src", [], registry="other.registry.example", registry_connection="acr"))
    aml.check_pull("v1", aml.intent(REF, "src", []))  # the workspace's own registry needs nothing


def plan(sdk, definition):
    env = {"name": aml.environment_name(sdk), "version": aml.environment_version(definition), **definition}
    return {"sdk": sdk, "environment": env} if sdk == "v1" else {"sdk": sdk, "job": {"environment": env}}


def test_the_local_workspace_keeps_environments_and_refuses_a_changed_definition(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    v1 = {"docker": {"baseImage": PINNED}, "python": {"interpreterPath": "/opt/venv/bin/python"}}
    v1_key = local_workspace.register(plan("v1", v1))
    assert v1_key == f"cifar10-trainer:{aml.environment_version(v1)}"
    assert local_workspace.register(plan("v2", {"image": PINNED})).startswith("cifar10-trainer-v2:")
    local_workspace.register(plan("v1", v1))  # the same definition again: fine, as on Azure
    changed = plan("v1", {**v1, "python": {"interpreterPath": "python"}})
    local_workspace.register(changed)  # another definition is another version
    changed["environment"]["version"] = aml.environment_version(v1)  # ... unless registered by something else
    with pytest.raises(local_workspace.LocalWorkspaceError) as e:
        local_workspace.register(changed)
    # Azure ML's own words (github.com/Azure/azure-cli-extensions/issues/5440), and what is true here
    version = aml.environment_version(v1)
    assert f"Environment cifar10-trainer with version {version} is already registered and cannot be changed" in (
        str(e.value)
    )
    assert "registered by something else" in str(e.value) and f"remove cifar10-trainer:{version}" in str(e.value)
    assert len(json.loads((tmp_path / ".azureml" / "local-environments.json").read_text())) == 3


def test_the_local_workspace_takes_one_build_pushed_to_a_second_registry(tmp_path, monkeypatch):
    """The rehearsal's bug: make submit COMPUTE=local REGISTRY=127.0.0.1:5001, then :5002, one build."""
    monkeypatch.chdir(tmp_path)
    for port in (5001, 5002):
        local_workspace.register(plan("v2", {"image": f"127.0.0.1:{port}/cifar10-trainer@{DIGEST}"}))
    assert len(json.loads((tmp_path / ".azureml" / "local-environments.json").read_text())) == 2


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("NODES", "0", "NODES=0: expected a whole number >= 1"),  # was silently one node
        ("PROCS_PER_NODE", "0", "PROCS_PER_NODE=0: expected a whole number >= 1"),
        ("MAX_NODES", "two", "MAX_NODES=two: expected a whole number >= 1"),
        ("EXPERIMENT", "bad/name", "EXPERIMENT=bad/name: an experiment name is 1 to 255 letters, digits, _ and -"),
        ("EXPERIMENT", "-leading-dash", "starting with a letter or digit"),
        ("EXPERIMENT", "x" * 256, "1 to 255"),
        ("COMPUTE", "cpu_cluster", "COMPUTE=cpu_cluster: a compute name is 2 to 24 letters, digits and -"),
        ("SHM_SIZE", "2 GB", "SHM_SIZE=2 GB: expected (number)(unit) with unit b, k, m or g"),
        ("SHM_SIZE", "0g", "SHM_SIZE=0g"),
        ("LOW_PRIORITY", "maybe", "LOW_PRIORITY=maybe: expected 1 or 0"),
        ("DATASTORE", "my-store", "DATASTORE=my-store: a datastore name is letters, digits and _"),
        ("DATA_PATH", "azureml://datastores/x/paths/y", "expected a folder on DATASTORE"),
        ("CHECKPOINT_PATH", "../elsewhere", "expected a folder on DATASTORE"),
        ("REGISTRY", "https://myreg.azurecr.io", "REGISTRY=https://myreg.azurecr.io: expected a registry HOST[:PORT]"),
        ("REGISTRY_IDENTITY_CLIENT_ID", "not-a-guid", "expected a client id (a GUID)"),
        ("AUTH", "password", "AUTH=password: expected auto, interactive, sp or msi"),
        ("TRAIN_ARGS", "--epochs '1", "TRAIN_ARGS=--epochs '1: No closing quotation"),
    ],
)
def test_each_make_variable_is_checked_in_one_line_exit_2(monkeypatch, capsys, variable, value, says):
    """Before anything is pushed: a value Azure refuses after the push, or one that silently meant another."""
    import submit

    for name in submit.SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as e:
        submit.parse_args(["prepare", "--dry-run"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert says in err


def test_valid_make_variables_keep_their_values(monkeypatch):
    import submit

    for name in submit.SETTINGS:
        monkeypatch.delenv(name, raising=False)
    values = {"NODES": "2", "EXPERIMENT": "day1-experiment_2", "COMPUTE": "gpu-cluster", "SHM_SIZE": "16g"}
    values |= {"LOW_PRIORITY": "0", "WAIT": "yes", "DATASTORE": "workspaceblobstore", "DATA_PATH": "/datasets/c10/"}
    values |= {"REGISTRY": "127.0.0.1:5001", "TRAIN_ARGS": "--epochs 3 --resume 'ck/a b.pt'"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    args = submit.parse_args(["prepare"])
    assert (args.nodes, args.experiment, args.compute, args.shm_size) == (2, "day1-experiment_2", "gpu-cluster", "16g")
    assert args.low_priority is False and args.wait is True  # LOW_PRIORITY=0 was low priority
    assert args.trainer_args == ["--epochs", "3", "--resume", "ck/a b.pt"]
    with pytest.raises(SystemExit) as e:  # the same check for the flags themselves
        submit.parse_args(["prepare", "--nodes", "0"])
    assert e.value.code == 2


def test_a_resume_path_is_one_on_the_cluster_not_checked_here(monkeypatch, capsys):
    """--resume PATH names a checkpoint on the cluster: the trainer's parser checks it for existence on the
    machine it runs on, which for `make submit` is the submitting one; the other checks still apply."""
    import cli
    import submit

    monkeypatch.setattr(submit, "SOURCE", Path(cli.__file__).parent)
    job = aml.intent(REF, "src", ["--resume", "/mnt/azureml/checkpoints/run-1/last.pt"])
    submit.check_trainer_args(job)
    assert cli.resume_from.__name__ == "resume_from"  # put back: the trainer's own check is unchanged
    for bad in (["--resume", ""], ["--resume", "x", "--epochs", "0"]):
        with pytest.raises(SystemExit) as e:
            submit.check_trainer_args(aml.intent(REF, "src", bad))
        assert e.value.code == 2
    assert "expected a checkpoint path on the cluster" in capsys.readouterr().err


# ARM's shapes, as the public REST API docs give them: Registries - Get (containerregistry 2023-07-01,
# RegistryGet.json), Compute - Get (machinelearningservices 2024-04-01, AmlCompute), Role Assignments - List.
REGISTRY = {
    "id": REGISTRY_ID,
    "name": "myreg",
    "type": "Microsoft.ContainerRegistry/registries",
    "properties": {"loginServer": "myreg.azurecr.io", "adminUserEnabled": False},
}
CLUSTER = {
    "id": "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws"
    "/computes/cpu-cluster",
    "name": "cpu-cluster",
    "identity": {"type": "None"},
    "properties": {
        "computeType": "AmlCompute",
        "properties": {
            "vmSize": "STANDARD_D2_V2",
            "vmPriority": "Dedicated",
            "scaleSettings": {"maxNodeCount": 4, "minNodeCount": 0, "nodeIdleTimeBeforeScaleDown": "PT40M"},
        },
    },
}
SYSTEM_IDENTITY = {"type": "SystemAssigned", "principalId": "11111111-2222-3333-4444-555555555555", "tenantId": "t"}


def assignment(role):
    return {
        "properties": {
            "roleDefinitionId": f"/subscriptions/0000/providers/Microsoft.Authorization/roleDefinitions/{role}"
        }
    }


def state(registry=REGISTRY, compute=CLUSTER, roles=()):
    return {"registry": registry, "compute": compute, "roleAssignments": roles if roles is None else list(roles)}


def test_admin_off_and_a_cluster_without_identity_is_refused_naming_both_ways_out():
    job = aml.intent(PINNED, "src", [])
    with pytest.raises(aml.SubmitError) as e:
        aml.check_cluster(job, state())
    message = str(e.value)
    assert "registry myreg has its admin user off and cluster cpu-cluster has no managed identity" in message
    assert "`az acr update --name myreg --admin-enabled true`" in message
    assert "`az ml compute update --name cpu-cluster --identity-type SystemAssigned`" in message
    assert f"az role assignment create --role AcrPull --scope {REGISTRY_ID}" in message and "\n" not in message


def test_admin_on_a_missing_cluster_or_an_identity_with_acrpull_pulls():
    job = aml.intent(PINNED, "src", [])
    admin = {**REGISTRY, "properties": {**REGISTRY["properties"], "adminUserEnabled": True}}
    assert aml.check_cluster(job, state(registry=admin)) == [
        "note: cluster cpu-cluster exists with identity None, "
        "not SystemAssigned: it is used as it is (a cluster "
        "created here would have SystemAssigned)"
    ]
    assert aml.check_cluster(job, state(compute=None)) == []  # created here, with a system-assigned identity
    with_identity = {**CLUSTER, "identity": SYSTEM_IDENTITY}
    for role in aml.PULL_ROLES:
        assert aml.check_cluster(job, state(compute=with_identity, roles=[assignment(role)])) == []
    # az role assignment list prints the flattened shape: taken too
    flat = [{"roleDefinitionId": f"/providers/Microsoft.Authorization/roleDefinitions/{next(iter(aml.PULL_ROLES))}"}]
    assert aml.check_cluster(job, state(compute=with_identity, roles=flat)) == []


def test_an_identity_without_a_pull_role_is_refused_and_unread_roles_are_said():
    job = aml.intent(PINNED, "src", [])
    with_identity = {**CLUSTER, "identity": SYSTEM_IDENTITY}
    reader = "acdd72a7-3385-48ef-bd42-f606fba81ae7"  # Reader: no pull
    with pytest.raises(
        aml.SubmitError, match=r"identity \(11111111-.*\) has no AcrPull on it.*--assignee-object-id 1111"
    ):
        aml.check_cluster(job, state(compute=with_identity, roles=[assignment(reader)]))
    (line,) = aml.check_cluster(job, state(compute=with_identity, roles=None))
    assert line.startswith("note: could not read who may pull from myreg")


def test_an_existing_cluster_is_read_back_one_line_per_difference_and_too_few_nodes_refused():
    """R7: VM_SIZE, LOW_PRIORITY, MAX_NODES and the identity of a cluster that exists are not changed."""
    job = aml.intent(PINNED, "src", [], vm_size="Standard_NC6s_v3", low_priority=True, max_nodes=8, nodes=2)
    admin = {**REGISTRY, "properties": {**REGISTRY["properties"], "adminUserEnabled": True}}
    lines = aml.check_cluster(job, state(registry=admin))
    assert [line.split(" exists with ")[1].split(",")[0] for line in lines] == [
        "VM_SIZE STANDARD_D2_V2",
        "LOW_PRIORITY Dedicated",
        "MAX_NODES 4",
        "identity None",
    ]
    assert all(line.startswith("note: cluster cpu-cluster exists with ") for line in lines)
    same = aml.intent(PINNED, "src", [], vm_size="standard_d2_v2")  # sizes compare as Azure does: any case
    assert aml.check_cluster(same, state(registry=admin, compute={**CLUSTER, "identity": SYSTEM_IDENTITY})) == []
    with pytest.raises(aml.SubmitError, match="NODES=6 but cluster cpu-cluster has at most 4 nodes"):
        aml.check_cluster(aml.intent(PINNED, "src", [], nodes=6), state(registry=admin))


def test_a_compute_of_another_kind_is_not_judged_as_a_cluster():
    job = aml.intent(PINNED, "src", [])
    kubernetes = {"identity": {"type": "None"}, "properties": {"computeType": "Kubernetes", "properties": {}}}
    (line,) = aml.check_cluster(job, state(compute=kubernetes))
    assert "is a Kubernetes of its own" in line


def test_prepare_reads_the_cluster_and_its_pull_roles_from_arm(server):
    """The thin network edge: Compute - Get (404: missing), then each identity's role assignments."""
    base, seen, reply = server
    reply.update(CLUSTER, identity=SYSTEM_IDENTITY, value=[assignment("7f951dda-4ed3-4680-a7ca-43fe172d538d")])
    settings = {"subscription_id": "0000", "resource_group": "rg", "workspace_name": "ws"}
    read = aml.read_state(settings, REGISTRY, "cpu-cluster", "arm-token", arm=base)
    assert read["compute"]["identity"] == SYSTEM_IDENTITY and len(read["roleAssignments"]) == 1
    compute, roles = seen
    assert compute["path"] == f"{CLUSTER['id']}?api-version={aml.COMPUTE_API_VERSION}"
    assert roles["path"] == (
        f"{REGISTRY_ID}/providers/Microsoft.Authorization/roleAssignments?api-version=2022-04-01"
        f"&$filter=principalId%20eq%20%27{SYSTEM_IDENTITY['principalId']}%27"
    )
    assert {r["headers"]["Authorization"] for r in seen} == {"Bearer arm-token"}


def test_a_missing_cluster_is_a_404_and_nothing_more_is_read(server):
    base, seen, reply = server
    reply.update(status=404, error={"code": "ResourceNotFound"})
    settings = {"subscription_id": "0000", "resource_group": "rg", "workspace_name": "ws"}
    assert aml.read_state(settings, REGISTRY, "cpu-cluster", "t", arm=base) == state(compute=None)
    assert len(seen) == 1


def test_azure_resources_for_a_dry_run_is_the_same_shapes():
    assert aml.state_from(json.dumps(state())) == state()
    with pytest.raises(aml.SubmitError, match="AZURE_RESOURCES is not a JSON object"):
        aml.state_from("[]")


@pytest.mark.parametrize("size", ["Standard_NC6s_v3", "STANDARD_NC24RS_V3", "Standard_NC12s_v3", "Standard_ND40rs_v2"])
def test_v100_sizes_are_warned_of_in_one_line_before_the_push(size):
    """R5: torch 2.14.1's CUDA 13 build has no sm_70 kernels; the job would fail at its first GPU operation."""
    (line,) = aml.check_cluster(aml.intent(PINNED, "src", [], vm_size=size), {})
    assert line.startswith(f"warning: VM_SIZE is {size}, with V100 GPUs (sm_70)") and "\n" not in line
    existing = {**CLUSTER, "identity": SYSTEM_IDENTITY}
    existing["properties"] = {"computeType": "AmlCompute", "properties": {"vmSize": size}}
    admin = {**REGISTRY, "properties": {"adminUserEnabled": True}}
    lines = aml.check_cluster(aml.intent(PINNED, "src", []), state(registry=admin, compute=existing))
    assert lines[-1].startswith(f"warning: cluster cpu-cluster is {size}, with V100 GPUs")  # the size it has


@pytest.mark.parametrize("size", ["STANDARD_D2_V2", "Standard_NC4as_T4_v3", "Standard_NC24ads_A100_v4", "Standard_NC6"])
def test_other_sizes_are_not_warned_of(size):
    assert aml.check_cluster(aml.intent(PINNED, "src", [], vm_size=size), {}) == []
