"""`make submit` up to Azure: the push and pull by digest against a real registry on 127.0.0.1 (compose's
`registry` service, as `make registry` starts it), the refusals that must push nothing, and the containers it
starts (at most three: check and log in, push from the host, register and submit)."""

import json
import os
import shutil
import subprocess

import pytest

from e2e_env import IMAGE, ROOT, copy_submit_tree, submit_env, submit_sh
from local_registry import tags


def test_publish_pushes_an_immutable_tag_and_the_digest_pulls_the_same_image(registry):
    ref = subprocess.run(
        ["bash", "azure/publish.sh", IMAGE, registry], cwd=ROOT, check=True, capture_output=True, text=True, timeout=900
    ).stdout.strip()
    repo, digest = ref.split("@")
    # The digest alone (R9): the Environment registers it, so one build from any commit registers alike
    assert repo == f"{registry}/cifar10-trainer" and digest.startswith("sha256:")
    local_id = subprocess.check_output(["docker", "image", "inspect", "-f", "{{.Id}}", IMAGE], text=True).strip()
    # The push needed a tag: it names the image it points at (other tests may have pushed it from a copy of
    # the tree, without git: a tag of theirs ends the same)
    ours = [t for t in tags(registry) if t.endswith(local_id[7:19])]
    assert ours, tags(registry)
    subprocess.run(["docker", "pull", "--quiet", ref], check=True, capture_output=True, timeout=600)
    pulled_id = subprocess.check_output(["docker", "image", "inspect", "-f", "{{.Id}}", ref], text=True).strip()
    assert pulled_id == local_id
    r = subprocess.run(["docker", "run", "--rm", ref, "--help"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "--fake-data" in r.stdout
    subprocess.run(["docker", "image", "rm", *(f"{repo}:{t}" for t in ours), ref], capture_output=True)  # names only


@pytest.fixture
def worktree(tmp_path):
    return copy_submit_tree(tmp_path)


def test_stale_src_is_refused_before_anything_is_pushed(worktree, registry):
    before = tags(registry)
    with (worktree / "src" / "train.py").open("a") as f:
        f.write("# edited after the image was built\n")
    r = submit_sh(worktree, registry)
    assert r.returncode != 0
    assert "differs from the code baked into this image" in r.stderr and "rebuild and push" in r.stderr
    assert tags(registry) == before


# A registry other than the workspace's (REGISTRY=) needs a pulling identity (SDK=v1); these tests push there.
CLIENT_ID = "0c1e7d00-0000-4000-8000-00000000c1d0"
PULLER = {
    "REGISTRY_IDENTITY": "/subscriptions/0/userAssignedIdentities/puller",
    "REGISTRY_IDENTITY_CLIENT_ID": CLIENT_ID,
}


def test_missing_workspace_config_is_refused_before_anything_is_pushed(worktree, registry):
    before = tags(registry)
    r = submit_sh(worktree, registry, SDK="v1", **PULLER)
    assert r.returncode != 0 and "no Azure ML workspace configured" in r.stderr
    assert tags(registry) == before


def test_missing_credentials_are_refused_before_anything_is_pushed(worktree, registry):
    before = tags(registry)
    (worktree / ".azureml" / "config.json").write_text(
        json.dumps({"subscription_id": "0000", "resource_group": "rg", "workspace_name": "ws"})
    )
    r = submit_sh(worktree, registry, SDK="v1", AUTH="sp", **PULLER)
    assert r.returncode != 0 and "service principal login needs AZURE_TENANT_ID" in r.stderr
    r = submit_sh(worktree, registry, SDK="v1", **PULLER)
    assert r.returncode != 0 and "no Azure credentials" in r.stderr
    assert tags(registry) == before


# SDK=v1's one line before anything else it prints (R11); SDK v2 is the default and prints none.
SDK_V1_NOTE = (
    "note: SDK v1 (azureml-core) is past its end of support (2026-06-30, "
    "https://learn.microsoft.com/azure/machine-learning/how-to-migrate-from-v1): SDK=v2 is the default"
)


def errors(r, sdk):
    """stderr's lines after SDK=v1's note, which must come first and once (and never with v2)."""
    lines = r.stderr.strip().splitlines()
    assert (lines[:1] == [SDK_V1_NOTE]) == (sdk == "v1") and r.stderr.count(SDK_V1_NOTE) <= 1, r.stderr
    return lines[1:] if sdk == "v1" else lines


def test_make_submit_dry_run_with_no_sdk_prints_an_azure_ai_ml_command_job(worktree, registry):
    r = submit_sh(worktree, registry, DRY_RUN="1", TRAIN_ARGS="--epochs 1", REGISTRY_CONNECTION="other-acr")
    assert r.returncode == 0, r.stderr
    errors(r, "v2")
    plan = json.loads(r.stdout[r.stdout.index("{") :])
    assert plan["sdk"] == "v2" and plan["experiment_name"] == "day1-experiment-train"
    assert plan["job"]["type"] == "command" and plan["job"]["compute"].endswith("cpu-cluster")
    assert plan["job"]["environment"]["image"].startswith(f"{registry}/cifar10-trainer@sha256:")
    assert plan["job"]["component"]["command"].endswith("train.py --epochs 1")
    assert "timing: check and login" in r.stderr and ", push " in r.stderr


def test_make_submit_sdk_v1_dry_run_notes_its_end_of_support_and_prints_the_definitions(worktree, registry):
    r = submit_sh(worktree, registry, SDK="v1", DRY_RUN="1", TRAIN_ARGS="--epochs 1", **PULLER)
    assert r.returncode == 0, r.stderr
    errors(r, "v1")
    assert f"would run: docker tag {IMAGE} {registry}/cifar10-trainer:" in r.stderr
    plan = json.loads(r.stdout[r.stdout.index("{") :])
    assert plan["environment"]["docker"]["baseImage"].startswith(f"{registry}/cifar10-trainer@sha256:")
    assert plan["environment"]["docker"]["baseImageRegistry"]["registryIdentity"]["clientId"] == CLIENT_ID
    assert plan["runConfiguration"]["arguments"] == ["--epochs", "1"]
    assert "timing: check and login" in r.stderr and ", push " in r.stderr
    plan = json.loads(r.stdout[r.stdout.index("{") :])
    assert plan["environment"]["docker"]["baseImage"].startswith(f"{registry}/cifar10-trainer@sha256:")
    assert plan["environment"]["docker"]["baseImageRegistry"]["registryIdentity"]["clientId"] == CLIENT_ID
    assert plan["runConfiguration"]["arguments"] == ["--epochs", "1"]
    assert "timing: check and login" in r.stderr and ", push " in r.stderr


@pytest.mark.parametrize("sdk", ["v1", "v2"])
def test_another_registry_without_a_way_to_pull_is_refused_before_anything_is_pushed(worktree, registry, sdk):
    before = tags(registry)
    r = submit_sh(worktree, registry, SDK=sdk, TRAIN_ARGS="--epochs 1")
    assert r.returncode == 1 and "is not the workspace's registry" in r.stderr
    assert ("REGISTRY_IDENTITY" if sdk == "v1" else "REGISTRY_CONNECTION") in r.stderr
    assert len(errors(r, sdk)) == 1, r.stderr  # one line, and nothing pushed
    assert tags(registry) == before


@pytest.mark.parametrize("sdk", ["v1", "v2"])
def test_bad_train_args_end_in_the_trainers_error_exit_2_before_anything_is_pushed(worktree, registry, sdk):
    """COMPUTE=local pushes for real: a typo must stop it before the multi-GB push, not on the cluster."""
    before = tags(registry)
    r = submit_sh(worktree, registry, SDK=sdk, COMPUTE="local", TRAIN_ARGS="--epochs zero")
    assert r.returncode == 2, r.stderr
    assert errors(r, sdk) == ["error: argument --epochs: expected an integer, got 'zero' (see --help)"]
    assert tags(registry) == before


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("SDK", "v3", "error: SDK=v3: expected v1 (azureml-core) or v2 (azure-ai-ml)"),  # ran v1
        ("NODES", "0", "error: NODES=0: expected a whole number >= 1, got '0'"),  # was one node
        ("EXPERIMENT", "bad/name", "error: EXPERIMENT=bad/name: an experiment name is 1 to 255 letters"),
    ],
)
def test_a_make_variable_azure_would_refuse_ends_in_one_line_exit_2_before_any_push(
    worktree, registry, variable, value, says
):
    before = tags(registry)
    r = submit_sh(worktree, registry, COMPUTE="local", TRAIN_ARGS="--epochs 1", **{variable: value})
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(says), line
    assert tags(registry) == before


def test_a_dry_run_told_of_an_admin_off_registry_and_a_bare_cluster_refuses_before_the_push(worktree, tmp_path):
    """R1 in a dry run, which reads nothing from Azure: AZURE_RESOURCES says what Azure holds, in ARM's shapes
    (`az resource show --ids ...`), and the dry run judges it as the real run judges what it reads."""
    resources = tmp_path / "azure.json"
    registry = {"id": "/subscriptions/0/resourceGroups/rg/providers/Microsoft.ContainerRegistry/registries/myreg"}
    registry |= {"name": "myreg", "properties": {"loginServer": "myreg.azurecr.io", "adminUserEnabled": False}}
    cluster = {"identity": {"type": "None"}, "properties": {"computeType": "AmlCompute", "properties": {}}}
    resources.write_text(json.dumps({"registry": registry, "compute": cluster}))
    r = submit_sh(worktree, "", DRY_RUN="1", AZURE_RESOURCES=str(resources))
    assert r.returncode == 1 and "would run: docker tag" not in r.stderr, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "admin user off and cluster cpu-cluster has no managed identity" in line and "--admin-enabled true" in line
    r = submit_sh(worktree, "", DRY_RUN="1")  # not told: it says what the real run checks, and goes on
    assert r.returncode == 0, r.stderr
    assert "dry run: before the push, make submit reads the workspace registry's admin user" in r.stderr


DOCKER_SHIM = """#!/bin/sh
# Counts the containers make submit starts, then runs the real docker.
case " $* " in *" run "*) echo "$*" >>"$CONTAINER_LOG";; esac
exec {docker} "$@"
"""


@pytest.mark.parametrize("sdk", ["v1", "v2"])
def test_make_submit_dry_run_starts_at_most_three_containers(worktree, registry, tmp_path, sdk):
    shim = tmp_path / "bin" / "docker"
    shim.parent.mkdir()
    shim.write_text(DOCKER_SHIM.format(docker=shutil.which("docker")))
    shim.chmod(0o755)
    log = tmp_path / "containers.log"
    path = f"{shim.parent}:{os.environ['PATH']}"
    r = submit_sh(worktree, registry, SDK=sdk, DRY_RUN="1", PATH=path, CONTAINER_LOG=str(log), **PULLER_FOR[sdk])
    assert r.returncode == 0, r.stderr
    started = log.read_text().splitlines()
    assert 1 <= len(started) <= 3, started
    assert all(line.startswith("compose --profile azure run") for line in started), started


PULLER_FOR = {"v1": PULLER, "v2": {"REGISTRY_CONNECTION": "other-acr"}}


FAKE_DOCKER = r"""#!/bin/sh
# Stands in for docker on the way to Azure (nothing of Azure is reachable here): logs each call, answers
# the prepare container as a logged-in workspace would, and pushes nowhere.
echo "$*" >>"$CONTAINER_LOG"
digest=$(printf 'cd%.0s' $(seq 32))
case " $* " in
  *" prepare "*) printf 'REGISTRY myws.registry.example\nTOKEN acr-token\n' ;;
  *" inspect --format {{.Id}} "*) echo "sha256:$(printf 'ab%.0s' $(seq 32))" ;;
  *" inspect --format {{range .RepoDigests}}"*) echo "myws.registry.example/cifar10-trainer@sha256:$digest" ;;
  *" login "*) cat >/dev/null ;;
esac
"""


def test_make_submit_to_azure_starts_two_containers_and_pushes_from_the_host(worktree, tmp_path):
    """Check and log in, push from the host, register and submit: one container each for the first and
    the last (it was five: check-source, login, registry, acr-token, run)."""
    shim = tmp_path / "bin" / "docker"
    shim.parent.mkdir()
    shim.write_text(FAKE_DOCKER)
    shim.chmod(0o755)
    log = tmp_path / "docker.log"
    path = f"{shim.parent}:{os.environ['PATH']}"
    r = submit_sh(worktree, "", PATH=path, CONTAINER_LOG=str(log), REGISTRY="")
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    started = [c for c in calls if f" {c} ".count(" run ")]
    assert [c.split()[-1] if "prepare" in c else c.split()[-2:] for c in started] == [
        "prepare",
        ["--image", f"myws.registry.example/cifar10-trainer@sha256:{'cd' * 32}"],
    ], calls
    assert any(c.startswith("login myws.registry.example") for c in calls)
    assert f"push --quiet myws.registry.example/cifar10-trainer:norev-dirty-{'ab' * 6}" in calls  # a tag to push
    assert "timing: check and login " in r.stderr and ", register and submit " in r.stderr


TLS_PROBE = """
import http.server, os, ssl, threading, urllib.request
import requests
server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain("/work/.azureml/server.pem", "/work/.azureml/server.key")
server.socket = context.wrap_socket(server.socket, server_side=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = f"https://localhost:{server.server_port}/"
print("proxy", os.environ.get("HTTPS_PROXY"), os.environ.get("NO_PROXY"))
for name, get in (("urllib", lambda: urllib.request.urlopen(url, timeout=10)), ("requests", lambda: requests.get(url))):
    try:
        get()
        print(name, "trusted")
    except Exception as e:
        print(name, "refused", "CERTIFICATE_VERIFY_FAILED" in str(e))
"""


@pytest.mark.parametrize("service", ["submit", "submit-v2"])
def test_ca_cert_and_the_proxy_settings_reach_the_submit_containers(worktree, tmp_path, service):
    """R6: behind a TLS-intercepting proxy, the SDKs' calls (requests) and ours (urllib) trust CA_CERT, as the
    build does; HTTPS_PROXY and NO_PROXY pass through. A server in the container, with a certificate from a CA
    made here, stands in for the proxy: trusted with CA_CERT, refused without."""
    ca, server = tmp_path / "ca", worktree / ".azureml" / "server"
    openssl = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj"]
    subprocess.run([*openssl, "/CN=test proxy CA", "-keyout", f"{ca}.key", "-out", f"{ca}.pem"], check=True)
    subprocess.run(
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", f"{server}.key",
         "-out", f"{server}.csr"], check=True, capture_output=True,
    )  # fmt: skip
    (tmp_path / "ext").write_text("subjectAltName=DNS:localhost\n")
    subprocess.run(
        ["openssl", "x509", "-req", "-in", f"{server}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-days", "2",
         "-CAcreateserial", "-extfile", str(tmp_path / "ext"), "-out", f"{server}.pem"],
        check=True, capture_output=True,
    )  # fmt: skip
    os.chmod(f"{server}.key", 0o644)  # read by the container's user
    proxy = {"HTTPS_PROXY": "http://proxy.invalid:3128", "NO_PROXY": "127.0.0.1,localhost"}
    probe = ["--profile", "azure", "run", "--rm", "-T", "--entrypoint", "python", service, "-c", TLS_PROBE]
    results = {}
    for ca_cert in (str(ca) + ".pem", ""):
        env = submit_env(worktree, "", CA_CERT=ca_cert, **proxy)
        r = subprocess.run(["docker", "compose", *probe], cwd=worktree, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        results[bool(ca_cert)] = r.stdout.splitlines()
    assert results[True] == [
        "proxy http://proxy.invalid:3128 127.0.0.1,localhost",
        "urllib trusted",
        "requests trusted",
    ]
    assert results[False][1:] == ["urllib refused True", "requests refused True"]
