"""Submit the trainer to Azure ML in the image it was built into (run by `make submit`, azure/submit.sh).

    submit.py prepare [--dry-run]              # check the job offline, then log in; prints REGISTRY and TOKEN lines
    submit.py run --image R:T@sha256:... [--dry-run]   # register the Environment and submit (dry run: print it)
    submit.py check-source                     # refuse if ./src differs from the image's code
    submit.py upload-data [--dry-run]          # ./data to the default datastore at DATA_PATH (the tutorial's part 4)
    submit.py attach-registry [--acr NAME|ID] [--dry-run]   # create and attach the workspace's registry (v2)
    submit.py fetch --job NAME [--replace]     # a finished job's ./outputs into outputs/NAME/ (azure/fetch.py)

The job's settings are make's variables (SETTINGS: the one place they are read), or the same-named flags;
what is unset keeps the Intent's default (aml.py). Runs inside a container of the training image (SDK v1)
or the submit-v2 image (SDK v2), with ./src, the workspace config and the Azure token cache mounted;
pushing is left to the host's Docker. The SDK is chosen once, here: aml_v1 and aml_v2 have the same functions.
"""

import argparse
import contextlib
import importlib
import inspect
import json
import os
import re
import shlex
import sys
import urllib.error
from pathlib import Path

import aml
import fetch

SOURCE = Path("src")  # the mounted work tree's src/, what Azure ML would upload
DATA = Path("data")  # the mounted ./data that `make upload-data` sends
OUTPUTS = Path("outputs")  # OUTPUTS_DIR, mounted writable by `make fetch` (azure/fetch.py)
IMAGE_DIGEST_FILE = Path("/app/src.sha256")  # written into the image at build time
CONFIG = Path(".azureml/config.json")
SDK = os.environ.get("AML_SDK", "v1")  # the submit-v2 image sets v2


# Each make variable is checked here, before anything is built or pushed: a value Azure would refuse
# after the push, or one that would silently mean something else (NODES=0 was one node), ends here in
# one `error:` line and exit status 2, like a bad flag.
FLAG_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def flag(text):
    """LOW_PRIORITY, WAIT: 1/true/yes/on or 0/false/no/off (LOW_PRIORITY=0 was low priority)."""
    if text.lower() not in FLAG_WORDS:
        raise argparse.ArgumentTypeError(f"expected 1 or 0 (true/false, yes/no, on/off), got {text!r}")
    return FLAG_WORDS[text.lower()]


def auth_mode(text):
    if text not in ("auto", "interactive", "sp", "msi"):
        raise argparse.ArgumentTypeError(f"expected auto, interactive, sp or msi, got {text!r}")
    return text


def count(text):
    """NODES, PROCS_PER_NODE, MAX_NODES: at least one (0 would silently have been the default)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def matching(pattern, rule):
    """An argparse type: the text if it matches pattern (fully), else `rule` in the error."""

    def check(text):
        if not re.fullmatch(pattern, text):
            raise argparse.ArgumentTypeError(f"{rule}, got {text!r}")
        return text

    return check


# azureml-core checks an experiment name as Azure ML does, but only in Experiment(), after the push:
# azureml/_base_sdk_common/common.py, _valid_experiment_name: ^[a-zA-Z0-9][\w\-]{0,254}$ (1 to 255,
# "Its first character has to be alphanumeric, and the rest may contain hyphens and underscores. No
# whitespace is allowed."; Experiment's docstring, learn.microsoft.com azureml.core.experiment: "letters,
# numbers, underscores, and dashes"). v2's experiment_name reaches the same service. \w would also take
# non-ASCII letters: the documented set is taken.
experiment_name = matching(
    r"[A-Za-z0-9][A-Za-z0-9_-]{0,254}",
    "an experiment name is 1 to 255 letters, digits, _ and -, starting with a letter or digit",
)
# Compute names (Microsoft Learn, how-to-create-attach-compute-cluster: "Valid characters are upper and
# lower case letters, digits, and the - character. Name must start with a letter"; 2 to 16 characters
# for clusters in older pages, 3 to 24 in newer ones: the union is taken, the service has the last word).
compute_name = matching(
    r"local|[A-Za-z][A-Za-z0-9-]{1,23}", "a compute name is 2 to 24 letters, digits and -, starting with a letter"
)
# Azure VM sizes: Standard_NC6s_v3, STANDARD_D2_V2 (a typo is the service's to refuse; spaces are not)
vm_size = matching(r"[A-Za-z][A-Za-z0-9_-]*", "a VM size is a name such as STANDARD_D2_V2 or Standard_NC6s_v3")
# azure-ai-ml command(shm_size=...): "in the format of (number)(unit) where the number has to be greater
# than 0 and the unit can be one of b(bytes), k(kilobytes), m(megabytes), or g(gigabytes)"
shm_size = matching(r"[1-9][0-9]*[bkmg]", "expected (number)(unit) with unit b, k, m or g, such as 2g")
# A datastore name (the default is workspaceblobstore); a folder on it, not a URI
datastore_name = matching(r"[A-Za-z0-9_]{1,255}", "a datastore name is letters, digits and _")
folder_on_datastore = matching(
    r"(?!.*://)(?!(.*/)?\.\.(/|$))/*[^\s/][^\s]*", "expected a folder on DATASTORE such as datasets/cifar10 (not a URI)"
)
# A registry's login server as docker names it, lower case as an image reference wants (HOST[:PORT])
registry_host = matching(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?", "expected a registry HOST[:PORT], lower case")
identity_id = matching(
    r"(?i)/subscriptions/[^/]+/(.+/)?userAssignedIdentities/[^/]+",
    "expected the resource id of a user-assigned identity (/subscriptions/.../userAssignedIdentities/NAME)",
)
guid = matching(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}", "expected a client id (a GUID)")
connection_name = matching(r"[A-Za-z0-9_-]{1,255}", "a connection name is letters, digits, _ and -")


def train_args(text):
    try:
        return shlex.split(text)
    except ValueError as e:  # an unbalanced quote
        raise argparse.ArgumentTypeError(f"{e}: quote each flag's value as a shell would") from None


# make variable: (type, help). `--name-in-lower-case` on the command line; the environment otherwise.
SETTINGS = {
    "EXPERIMENT": (experiment_name, f"experiment ({aml.EXPERIMENT}; with DATA_PATH {aml.EXPERIMENT_DATA})"),
    "COMPUTE": (compute_name, "compute cluster, created if missing; `local`: the rehearsal (rehearsal/local_run.py)"),
    "VM_SIZE": (vm_size, "VM size, if the cluster is created"),
    "MAX_NODES": (count, "cluster size limit, if created (min is 0); default: 4 (the tutorial's), or NODES when more"),
    "LOW_PRIORITY": (flag, "low-priority VMs, if the cluster is created"),
    "SHM_SIZE": (shm_size, "/dev/shm of the training container"),
    "NODES": (count, "nodes of a distributed (DDP) run"),
    "PROCS_PER_NODE": (count, "processes (ranks) per node"),
    "DATASTORE": (datastore_name, "datastore of DATA_PATH and CHECKPOINT_PATH"),
    "DATA_PATH": (folder_on_datastore, "datastore folder with CIFAR-10: the job's named input, mounted as --data-dir"),
    "CHECKPOINT_PATH": (folder_on_datastore, "datastore folder for checkpoints: a preempted run resumes from it"),
    "REGISTRY": (registry_host, "push to this registry, not the workspace's (needs one of the two below)"),
    "REGISTRY_IDENTITY": (identity_id, "v1: resource id of the user-assigned identity that pulls from REGISTRY"),
    "REGISTRY_IDENTITY_CLIENT_ID": (guid, "v1: its client id"),
    "REGISTRY_CONNECTION": (connection_name, "v2: the workspace connection (container_registry) pulling from it"),
    "AUTH": (
        auth_mode,
        "auto: service principal if AZURE_CLIENT_ID/SECRET are set, else device code; sp, msi, interactive",
    ),
    "WAIT": (flag, "stream the run's logs until it ends"),
    "TRAIN_ARGS": (train_args, "flags for train.py (or after --)"),
}


class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message}\n")


def parse_args(argv):
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, trainer = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    p = Parser(description=__doc__.split("\n")[0], epilog="-- TRAINER FLAGS: flags for train.py (else TRAIN_ARGS)")
    p.add_argument("command", choices=("prepare", "run", "check-source", "upload-data", "attach-registry", "fetch"))
    p.add_argument("--job", default="", help="fetch: the job's name, as make submit printed it")
    p.add_argument("--image", help="REPO:TAG@sha256:DIGEST, as pushed (run)")
    p.add_argument("--dry-run", action="store_true", help="print what would be sent; no network, no credentials")
    p.add_argument("--config", default=str(CONFIG), help="workspace config.json (or AZUREML_* variables)")
    p.add_argument(
        "--acr", default=os.environ.get("ACR") or None, help="attach-registry: NAME (created if missing) or ID"
    )
    p.add_argument(
        "--replace",
        action="store_true",
        default=flag_env("ATTACH_REPLACE"),
        help="attach-registry: replace the workspace's registry; fetch: replace outputs/JOB/",
    )
    p.add_argument(
        "--azure-resources",
        metavar="JSON",
        help="dry run: what Azure holds, {registry, compute, roleAssignments} in ARM's shapes (AZURE_RESOURCES)",
    )
    for name, (kind, text) in SETTINGS.items():
        value = os.environ.get(name) or None
        if value is not None:  # make's variable, checked as its flag would be, named as the user set it
            try:
                value = kind(value)
            except argparse.ArgumentTypeError as e:
                p.error(f"{name}={os.environ[name]}: {e}")
        option = f"--{name.lower().replace('_', '-')}"
        if kind is flag:
            p.add_argument(option, action="store_true", default=bool(value), help=text)
        else:
            p.add_argument(option, type=kind, default=value, help=text)
    args = p.parse_args(ours)
    args.trainer_args = trainer or args.train_args or []
    if args.command == "run" and not args.image:
        p.error("run needs --image REPO:TAG@sha256:DIGEST")
    return args


def check_source():
    from provenance import source_digest

    source, baked = SOURCE, IMAGE_DIGEST_FILE
    if not baked.is_file():
        raise aml.SubmitError(f"{baked} is missing: this is not the training image; run `make submit`")
    image, local = baked.read_text().strip(), source_digest(source)
    if image != local:
        raise aml.SubmitError(
            f"{source}/ differs from the code baked into this image ({local[:12]} vs {image[:12]}): "
            f"rebuild and push the image (`make submit` does both) before submitting"
        )
    return local


def trainer_module():
    """The trainer's command-line module, from the checked src/ (cli.py imports no torch; train.py before it)."""
    sys.path.insert(0, str(SOURCE))
    try:
        return importlib.import_module("cli" if (SOURCE / "cli.py").is_file() else "train")
    finally:
        sys.path.remove(str(SOURCE))


@contextlib.contextmanager
def paths_on_the_cluster(module):
    """`--resume PATH` names a checkpoint on the cluster (a mounted datastore folder), not on this machine:
    while its parser checks TRAIN_ARGS, the trainer's resume_from (which wants an existing file here) takes
    any non-empty PATH. cli.py builds its parser anew at each parse_args and looks resume_from up then."""
    original = getattr(module, "resume_from", None)

    def on_the_cluster(text):
        if not text.strip():
            raise argparse.ArgumentTypeError("expected a checkpoint path on the cluster or 'auto', got ''")
        return text

    if original is not None:
        module.resume_from = on_the_cluster
    try:
        yield module.parse_args
    finally:
        if original is not None:
            module.resume_from = original


def check_trainer_args(job):
    """The arguments each rank will parse, through the trainer's own parser with the job's WORLD_SIZE: a
    typo ends here, in the trainer's one-line error and its exit status 2, before anything is pushed."""
    argv = list(job.trainer_args)
    for mount in job.mounts:
        argv += [mount.flag, f"/mnt/azureml/{mount.name}", *mount.then]
    # --help would print onto submit.sh's data
    with contextlib.redirect_stdout(sys.stderr), paths_on_the_cluster(trainer_module()) as parse:
        try:
            if "environ" in inspect.signature(parse).parameters:
                parse(argv, environ={"WORLD_SIZE": str(job.processes)})
            else:
                parse(argv)
        except SystemExit as e:
            if e.code:
                raise
            raise aml.SubmitError("TRAIN_ARGS asks for the trainer's help only: give it training flags") from None


def job_intent(args, image):
    """The Intent from the settings; a registry other than the workspace's counts outside COMPUTE=local only."""
    names = ("experiment", "compute", "vm_size", "max_nodes", "low_priority", "shm_size", "nodes", "procs_per_node")
    names += ("datastore", "data_path", "checkpoint_path", "registry_connection")
    settings = {k: getattr(args, k) for k in names if getattr(args, k) is not None and getattr(args, k) is not False}
    if args.registry and args.compute != "local":
        settings["registry"] = args.registry
        settings["registry_identity"] = (args.registry_identity, args.registry_identity_client_id)
    return aml.intent(image, SOURCE, args.trainer_args, **settings)


def validate(adapter, args, image):
    """Everything that needs no network, in the order a user fixes it: the Intent, the job, the snapshot."""
    check_source()
    snapshot = aml.check_snapshot(SOURCE)
    job = job_intent(args, image)
    aml.check_pull(adapter.SDK, job)
    check_trainer_args(job)
    return job, adapter.build_job(job), snapshot


def prepare(adapter, args):
    """`make submit`'s first container: the job checked offline (with a stand-in digest), then the login, and
    what Azure would refuse only once a node is up: the cluster and who may pull from the registry (R1, R7).
    stdout: `REGISTRY <where to push>` and, for the workspace's registry, `TOKEN <ACR refresh token>`."""
    registry = args.registry or (aml.WORKSPACE_REGISTRY_STANDIN if args.dry_run else None)
    stand_in = f"{registry or aml.WORKSPACE_REGISTRY_STANDIN}/cifar10-trainer@sha256:{'0' * 64}"
    job, _, _ = validate(adapter, args, stand_in)
    token = None
    if args.compute == "local":
        pass
    elif args.dry_run:
        check_dry_run_state(job, args)
    else:
        with contextlib.redirect_stdout(sys.stderr):  # the SDKs' sign-in prompts reach the terminal
            if args.azure_resources:
                print("note: AZURE_RESOURCES describes Azure to a dry run only; this run reads Azure")
            settings, cred = aml.workspace_settings(args.config), adapter.credential(args.auth or "auto")
            ws = adapter.connect(settings, cred)
            if registry:
                adapter.check_registry(ws, job)
                say(
                    aml.check_cluster(
                        job, aml.read_state(settings, None, job.compute, adapter.token(cred, aml.ARM_SCOPE))
                    )
                )
            else:
                arm_token = adapter.token(cred, aml.ARM_SCOPE)
                resource = aml.registry_resource(adapter.registry_id(ws), arm_token)
                registry = aml.login_server_of(resource)
                say(aml.check_cluster(job, aml.read_state(settings, resource, job.compute, arm_token)))
                token = aml.acr_refresh_token(registry, adapter.token(cred, aml.REGISTRY_SCOPE))
        print(f"workspace {settings['workspace_name']} in {settings['resource_group']}: logged in", file=sys.stderr)
    print(f"REGISTRY {registry}")
    if token:
        print(f"TOKEN {token}")
    return 0


def say(lines):
    for line in lines:
        print(line, file=sys.stderr)


def check_dry_run_state(job, args):
    """A dry run reads nothing from Azure, so it judges what AZURE_RESOURCES says Azure holds (the shapes
    the real run reads: aml.read_state), or says what the real run will check before the push."""
    if args.registry or not args.azure_resources:
        say(aml.check_cluster(job, {}))  # what the settings alone tell (R5)
    if args.registry:
        return
    if not args.azure_resources:
        print(
            f"dry run: before the push, make submit reads the workspace registry's admin user and cluster "
            f"{job.compute} (size, identity, AcrPull); AZURE_RESOURCES=FILE checks them here (docs/azure.md)",
            file=sys.stderr,
        )
        return
    say(aml.check_cluster(job, aml.state_from(args.azure_resources)))


def run(adapter, args):
    """The samples' job.py, in a straight line: intent, job, (dry run: print it), workspace, compute, submit."""
    job, built, snapshot = validate(adapter, args, args.image)
    if args.dry_run:
        print(json.dumps({"sdk": SDK, "snapshot": snapshot, **adapter.describe(built, job)}, indent=2, default=str))
        return 0
    ws = adapter.connect(aml.workspace_settings(args.config), adapter.credential(args.auth or "auto"))
    adapter.compute(ws, job)
    adapter.submit(ws, adapter.build_job(job, ws), job, args.wait)  # v1's named input names the workspace
    return 0


def flag_env(name):
    try:
        return flag(os.environ.get(name) or "0")
    except argparse.ArgumentTypeError as e:
        Parser().error(f"{name}={os.environ[name]}: {e}")


def attach_registry(adapter, args):
    """`make attach-registry` (R2): create the registry if ACR names one that does not exist (Basic, admin user
    off, in the workspace's resource group and region), then attach it to the workspace through azure-ai-ml,
    with the confirmation (`-u`) it asks for. In the submit-v2 container: the host needs Docker and make."""
    if adapter.SDK != "v2":
        raise aml.SubmitError("attach-registry runs in the submit-v2 image (azure-ai-ml): make attach-registry")
    if args.dry_run:
        what = f"registry {args.acr}" if args.acr else "the workspace's registry"
        print(
            f"would read {what} from ARM, create it if ACR names a missing one (Basic, admin user off), and attach "
            f"it: ml_client.workspaces.begin_update(workspace, update_dependent_resources=True)"
        )
        return 0
    settings = aml.workspace_settings(args.config)
    if args.acr:
        registry_id, create = aml.registry_target(args.acr, settings)
    with contextlib.redirect_stdout(sys.stderr):
        cred = adapter.credential(args.auth or "auto")
        client = adapter.connect(settings, cred)
        if not args.acr:
            current = adapter.registry_id(client)
            if not current:
                raise aml.SubmitError(
                    "the workspace has no container registry: make attach-registry ACR=NAME creates one"
                )
            print(f"the workspace's registry is {current}")
            return 0
        arm_token = adapter.token(cred, aml.ARM_SCOPE)
        registry = aml.arm_get(registry_id, arm_token, aml.REGISTRY_API_VERSION)
        if registry is None and not create:
            raise aml.SubmitError(f"ACR={args.acr}: no such registry (give a name to create one)")
        if registry is None:
            print(f"creating registry {create} (Basic, admin user off)")
            registry = aml.create_registry(registry_id, adapter.workspace_location(client), arm_token)
        before = adapter.attach_registry(client, registry_id, args.replace)
    done = "already attached" if before and before.lower() == registry_id.lower() else "attached"
    print(
        f"registry {aml.login_server_of(registry)} {done} to workspace {settings['workspace_name']}; now: make submit"
    )
    return 0


def upload_data(adapter, args):
    """The tutorial's part 4 upload: ./data to DATASTORE (unset: the workspace's default), at DATA_PATH (v1), with
    this login's identity where the datastore is identity-based (adapter.upload). A dry run prints the call and
    its arguments as JSON (the rehearsal's datastore checks them: rehearsal/local_workspace.py upload-data)."""
    target = (args.data_path or aml.DATA_TARGET).strip("/")
    if not DATA.is_dir() or not any(DATA.iterdir()):
        raise aml.SubmitError(f"./{DATA} is empty: put CIFAR-10 there first (`make train` downloads it)")
    if args.dry_run:
        print(json.dumps({"sdk": adapter.SDK, **adapter.upload_plan(DATA, args.datastore, target)}, indent=2))
        return 0
    ws = adapter.connect(aml.workspace_settings(args.config), adapter.credential(args.auth or "auto"))
    try:
        adapter.upload(ws, DATA, args.datastore, target)
    except Exception as e:  # azure-ai-ml raises it as a bare Exception of many lines (_blob_storage_helper.py)
        if "KeyBasedAuthenticationNotPermitted" not in str(e):
            raise
        raise aml.SubmitError(
            f"datastore {args.datastore or '(the default)'} signs with its storage account's key, which the account "
            f"refuses (KeyBasedAuthenticationNotPermitted): make the workspace's datastores identity-based "
            f"(learn.microsoft.com/azure/machine-learning/how-to-disable-local-auth-storage, 'Update an existing "
            f"workspace'), or name an identity-based one with DATASTORE="
        ) from None
    if adapter.SDK == "v1":  # v2's asset lands in a folder azure-ai-ml picks: aml_v2.upload printed it
        print(f"uploaded ./{DATA}; now: make submit SDK=v1 DATA_PATH={target}")
    return 0


def fetch_outputs(adapter, args):
    """`make fetch JOB=NAME`: the job's ./outputs files, flat, in outputs/NAME/ (azure/fetch.py mounts it)."""
    dest = fetch.destination(OUTPUTS, args.job, args.replace)
    with contextlib.redirect_stdout(sys.stderr):  # the SDKs' sign-in prompts and download progress
        ws = adapter.connect(aml.workspace_settings(args.config), adapter.credential(args.auth or "auto"))
        fetch.fetched(dest, lambda folder: adapter.download_outputs(ws, args.job, folder), f"job {args.job}")
    return 0


def main(argv=None):
    args = parse_args(argv)
    adapter = importlib.import_module({"v1": "aml_v1", "v2": "aml_v2"}[SDK])
    commands = {"prepare": prepare, "run": run, "upload-data": upload_data, "attach-registry": attach_registry}
    commands["fetch"] = fetch_outputs
    try:
        if args.command == "check-source":
            print(f"src/ matches the image's code ({check_source()[:12]})")
            return 0
        return commands[args.command](adapter, args)
    except aml.SubmitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except urllib.error.HTTPError as e:  # ARM or the registry said no: its status names the cause
        where = e.url.split("?")[0]
        print(f"error: {where} answered {e.code} {e.reason}: check AUTH and your role on it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
