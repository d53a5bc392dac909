"""The image as other CI systems start it (docs/ci.md): each test starts a container the way that
system's runner does, then runs a short training and unit tests in it, as a job's steps would.

- GitHub Actions container jobs (actions/runner, src/Runner.Worker/ContainerOperationProvider.cs):
  `docker create --entrypoint tail ... IMAGE -f /dev/null` with the runner's work folder on /__w,
  then every step is `docker exec` of the step's script as the image's default user (root).
- GitLab CI, Docker executor (docs.gitlab.com/ee/ci/docker/using_docker_images.html, "Override the
  entrypoint of an image"): the image's ENTRYPOINT is kept, the command is a shell (the runner's
  shell-detection `sh -c 'if [ -x /usr/local/bin/bash ]; then exec ...'`), and the job's script
  arrives on that shell's stdin; the project is cloned into /builds/<group>/<project>.
- Azure Pipelines container jobs (microsoft/azure-pipelines-agent, src/Agent.Worker/
  ContainerOperationProvider.cs and Handlers/StepHost.cs): ENTRYPOINT kept, command the agent's
  own node running `setInterval` from /__a/externals; as the default user it runs useradd/groupadd/
  usermod and appends to /etc/sudoers, then runs every step with `docker exec -i -u <agent uid>`.

These need the image's default user to be root (docs/runtime.md).
"""

import os
import shutil
import subprocess

import pytest

from e2e_env import IMAGE, ROOT

# The uid GitHub's and Azure's hosted runners run as, owner of the checkout (the tests' own uid where
# they do not run as root, as on a hosted runner); GitLab's helper clones as root.
RUNNER_UID = 1001 if os.getuid() == 0 else os.getuid()
CLONER_UID = 0 if os.getuid() == 0 else os.getuid()
STEPS = """set -e
/app/entrypoint.sh --epochs 1 --fake-data 100 --log-interval 25 --output-dir outputs/ci --checkpoint-dir checkpoints/ci
python -m pytest -p no:cacheprovider -q tests/unit/test_model.py
"""
# GitLab Runner's shell detection (shells/bash.go, BashDetectShellScript), which it passes as the command.
GITLAB_DETECT_SHELL = (
    "if [ -x /usr/local/bin/bash ]; then exec /usr/local/bin/bash; "
    "elif [ -x /usr/bin/bash ]; then exec /usr/bin/bash; "
    "elif [ -x /bin/bash ]; then exec /bin/bash; "
    "elif [ -x /usr/local/bin/sh ]; then exec /usr/local/bin/sh; "
    "elif [ -x /usr/bin/sh ]; then exec /usr/bin/sh; "
    "elif [ -x /bin/sh ]; then exec /bin/sh; "
    "else echo shell not found; exit 1; fi"
)


def checkout(folder, uid):
    """What a runner checks out: this repository's code and tests, owned by the runner's uid."""
    folder.mkdir(parents=True)
    for part in ("src", "tests"):
        shutil.copytree(ROOT / part, folder / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", folder)
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, uid, uid)
    return folder


def docker(*args, stdin=None, timeout=900, check=True):
    r = subprocess.run(["docker", *args], input=stdin, capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, f"docker {' '.join(args)}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture
def container():
    """A container name that is removed whatever the test does."""
    name = f"cifar10-ci-{os.getpid()}-{os.urandom(3).hex()}"
    yield name
    docker("rm", "--force", name, check=False)


def assert_trained_and_tested(result, workspace):
    assert "Finished Training" in result.stdout and " passed" in result.stdout, result.stdout + result.stderr
    assert (workspace / "outputs" / "ci" / "summary.json").is_file()


def test_github_actions_container_job(tmp_path, container):
    work = tmp_path / "work"  # the runner's work folder, mounted at /__w
    workspace = checkout(work / "repo" / "repo", RUNNER_UID)
    (work / "_temp").mkdir()
    (work / "_temp" / "step.sh").write_text(STEPS)
    (work / "_temp" / "_github_home").mkdir()
    os.chown(work / "_temp" / "_github_home", RUNNER_UID, RUNNER_UID)
    docker(
        "create", "--name", container, "--workdir", "/__w/repo/repo",
        "-e", "HOME=/github/home", "-e", "GITHUB_ACTIONS=true", "-e", "CI=true",
        "-v", f"{work}:/__w", "-v", f"{work / '_temp' / '_github_home'}:/github/home",
        "--entrypoint", "tail", IMAGE, "-f", "/dev/null",
    )  # fmt: skip
    docker("start", container)
    assert docker("exec", container, "id", "-u").stdout.strip() == "0"  # steps run as the image's user
    step = docker(
        "exec", "-i", "--workdir", "/__w/repo/repo", container,
        "bash", "--noprofile", "--norc", "-eo", "pipefail", "/__w/_temp/step.sh",
    )  # fmt: skip
    assert_trained_and_tested(step, workspace)
    # The entrypoint, called by the step, ran training as the checkout's owner: the runner can clean up.
    assert (workspace / "outputs" / "ci" / "summary.json").stat().st_uid == RUNNER_UID


def test_gitlab_ci_docker_executor(tmp_path, container):
    workspace = checkout(tmp_path / "builds" / "group" / "project", CLONER_UID)
    script = f"cd /builds/group/project\n{STEPS}"
    job = docker(
        "run", "-i", "--name", container, "-v", f"{tmp_path / 'builds'}:/builds",
        IMAGE, "sh", "-c", GITLAB_DETECT_SHELL, stdin=script,
    )  # fmt: skip
    assert_trained_and_tested(job, workspace)


def test_azure_pipelines_container_job(tmp_path, container):
    workspace = checkout(tmp_path / "w" / "1" / "s", RUNNER_UID)
    node = tmp_path / "externals" / "node" / "bin" / "node"  # the agent brings its own node
    node.parent.mkdir(parents=True)
    # It stands in for the agent's `node -e "setInterval(...)"`: it keeps the container up.
    node.write_text("#!/bin/sh\nexec sleep infinity\n")
    node.chmod(0o755)
    docker(
        "create", "--name", container,
        "-v", f"{tmp_path / 'w'}:/__w", "-v", f"{tmp_path / 'externals'}:/__a/externals:ro",
        IMAGE, "/__a/externals/node/bin/node", "-e", "setInterval(function(){}, 24 * 60 * 60 * 1000);",
    )  # fmt: skip
    docker("start", container)
    # The agent's set-up, as the image's default user: a user with its own uid and password-less sudo.
    docker("exec", container, "sh", "-c", "command -v bash")
    user = "vsts_azpcontainer"
    docker("exec", container, "useradd", "-m", "-u", str(RUNNER_UID), user)
    docker("exec", container, "groupadd", "azure_pipelines_sudo")
    docker("exec", container, "usermod", "-a", "-G", "azure_pipelines_sudo", user)
    docker("exec", container, "su", "-c", "echo '%azure_pipelines_sudo ALL=(ALL:ALL) NOPASSWD:ALL' >> /etc/sudoers")
    step = docker("exec", "-i", "-u", str(RUNNER_UID), "-w", "/__w/1/s", container, "bash", "-e", stdin=STEPS)
    assert_trained_and_tested(step, workspace)
    assert (workspace / "outputs" / "ci" / "summary.json").stat().st_uid == RUNNER_UID
