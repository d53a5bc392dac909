"""Submit the trainer to Azure ML in the image it was built into (run by `make submit`, azure/submit.sh).

    submit.py prepare [--dry-run]              # check the job offline, then log in; prints REGISTRY and TOKEN lines
    submit.py run --image R:T@sha256:... [--dry-run]   # register the Environment and submit (dry run: print it)
    submit.py check-source                     # refuse if ./src differs from the image's code
    submit.py upload-data [--dry-run]          # ./data to the default datastore at DATA_PATH (the tutorial's part 4)

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
import shlex
import sys
import urllib.error
from pathlib import Path

import aml

SOURCE = Path("src")  # the mounted work tree's src/, what Azure ML would upload
DATA = Path("data")  # the mounted ./data that `make upload-data` sends
IMAGE_DIGEST_FILE = Path("/app/src.sha256")  # written into the image at build time
CONFIG = Path(".azureml/config.json")
SDK = os.environ.get("AML_SDK", "v1")  # the submit-v2 image sets v2


def flag(text):
    return bool(text)


def auth_mode(text):
    if text not in ("auto", "interactive", "sp", "msi"):
        raise argparse.ArgumentTypeError(f"AUTH={text}: expected auto, interactive, sp or msi")
    return text


def whole(text):
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(text)


# make variable: (type, help). `--name-in-lower-case` on the command line; the environment otherwise.
SETTINGS = {
    "EXPERIMENT": (str, f"experiment ({aml.EXPERIMENT}; with DATA_PATH {aml.EXPERIMENT_DATA})"),
    "COMPUTE": (str, "compute cluster, created if missing; `local`: the rehearsal (azure/local_run.py)"),
    "VM_SIZE": (str, "VM size, if the cluster is created"),
    "MAX_NODES": (whole, "cluster size limit, if created (min is 0); default: 4 (the tutorial's), or NODES when more"),
    "LOW_PRIORITY": (flag, "low-priority VMs, if the cluster is created"),
    "SHM_SIZE": (str, "/dev/shm of the training container"),
    "NODES": (whole, "nodes of a distributed (DDP) run"),
    "PROCS_PER_NODE": (whole, "processes (ranks) per node"),
    "DATASTORE": (str, "datastore of DATA_PATH and CHECKPOINT_PATH"),
    "DATA_PATH": (str, "datastore folder with CIFAR-10: the job's named input, mounted as --data-dir"),
    "CHECKPOINT_PATH": (str, "datastore folder for checkpoints (survives preemption); the run resumes from it"),
    "REGISTRY": (str, "push to this registry, not the workspace's (needs one of the two below)"),
    "REGISTRY_IDENTITY": (str, "v1: resource id of the user-assigned identity that pulls from REGISTRY"),
    "REGISTRY_IDENTITY_CLIENT_ID": (str, "v1: its client id"),
    "REGISTRY_CONNECTION": (str, "v2: the workspace connection (container_registry) that pulls from REGISTRY"),
    "AUTH": (
        auth_mode,
        "auto: service principal if AZURE_CLIENT_ID/SECRET are set, else device code; sp, msi, interactive",
    ),
    "WAIT": (flag, "stream the run's logs until it ends"),
    "TRAIN_ARGS": (shlex.split, "flags for train.py (or after --)"),
}


class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message}\n")


def parse_args(argv):
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, trainer = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    p = Parser(description=__doc__.split("\n")[0], epilog="-- TRAINER FLAGS: flags for train.py (else TRAIN_ARGS)")
    p.add_argument("command", choices=("prepare", "run", "check-source", "upload-data"))
    p.add_argument("--image", help="REPO:TAG@sha256:DIGEST, as pushed (run)")
    p.add_argument("--dry-run", action="store_true", help="print what would be sent; no network, no credentials")
    p.add_argument("--config", default=str(CONFIG), help="workspace config.json (or AZUREML_* variables)")
    for name, (kind, text) in SETTINGS.items():
        value = os.environ.get(name) or None
        if kind is flag:
            p.add_argument(f"--{name.lower().replace('_', '-')}", action="store_true", default=bool(value), help=text)
        else:
            p.add_argument(f"--{name.lower().replace('_', '-')}", type=kind, default=value, help=text)
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


def trainer_parse_args():
    """The trainer's own parse_args, from the checked src/ (cli.py imports no torch; train.py before it)."""
    sys.path.insert(0, str(SOURCE))
    try:
        return importlib.import_module("cli" if (SOURCE / "cli.py").is_file() else "train").parse_args
    finally:
        sys.path.remove(str(SOURCE))


def check_trainer_args(job):
    """The arguments each rank will parse, through the trainer's own parser with the job's WORLD_SIZE: a
    typo ends here, in the trainer's one-line error and its exit status 2, before anything is pushed."""
    parse = trainer_parse_args()
    argv = list(job.trainer_args)
    for mount in job.mounts:
        argv += [mount.flag, f"/mnt/azureml/{mount.name}", *mount.then]
    with contextlib.redirect_stdout(sys.stderr):  # --help would print onto submit.sh's data
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
    settings = {k: getattr(args, k) for k in names if getattr(args, k) not in (None, False)}
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
    """`make submit`'s first container: the job checked offline (with a stand-in digest), then the login.
    stdout: `REGISTRY <where to push>` and, for the workspace's registry, `TOKEN <ACR refresh token>`."""
    registry = args.registry or (aml.WORKSPACE_REGISTRY_STANDIN if args.dry_run else None)
    stand_in = f"{registry or aml.WORKSPACE_REGISTRY_STANDIN}/cifar10-trainer:check@sha256:{'0' * 64}"
    job, _, _ = validate(adapter, args, stand_in)
    token = None
    if not args.dry_run and args.compute != "local":
        with contextlib.redirect_stdout(sys.stderr):  # the SDKs' sign-in prompts reach the terminal
            settings, cred = aml.workspace_settings(args.config), adapter.credential(args.auth or "auto")
            ws = adapter.connect(settings, cred)
            if registry:
                adapter.check_registry(ws, job)
            else:
                registry = aml.registry_login_server(adapter.registry_id(ws), adapter.token(cred, aml.ARM_SCOPE))
                token = aml.acr_refresh_token(registry, adapter.token(cred, aml.REGISTRY_SCOPE))
        print(f"workspace {settings['workspace_name']} in {settings['resource_group']}: logged in", file=sys.stderr)
    print(f"REGISTRY {registry}")
    if token:
        print(f"TOKEN {token}")
    return 0


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


def upload_data(adapter, args):
    """The tutorial's part 4 upload: ./data to the workspace's default datastore, at DATA_PATH."""
    target = (args.data_path or aml.DATA_TARGET).strip("/")
    if not DATA.is_dir() or not any(DATA.iterdir()):
        raise aml.SubmitError(f"./{DATA} is empty: put CIFAR-10 there first (`make train` downloads it)")
    if args.dry_run:
        where = f"at {target}" if adapter.SDK == "v1" else "as data asset cifar10 (azure-ai-ml picks the folder)"
        print(f"would upload ./{DATA} to the default datastore {where}")
        return 0
    ws = adapter.connect(aml.workspace_settings(args.config), adapter.credential(args.auth or "auto"))
    adapter.upload(ws, DATA, target)
    print(f"uploaded ./{DATA}; now: make submit DATA_PATH={target}")
    return 0


def main(argv=None):
    args = parse_args(argv)
    adapter = importlib.import_module({"v1": "aml_v1", "v2": "aml_v2"}[SDK])
    commands = {"prepare": prepare, "run": run, "upload-data": upload_data}
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
