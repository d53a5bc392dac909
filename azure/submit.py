"""Submit the trainer to Azure ML in the image it was built into (run by `make submit`).

    submit.py check-source               # refuse if ./src differs from the image's code
    submit.py login                      # workspace config and credentials; device-code login if needed
    submit.py registry                   # the workspace registry's login server (from its ARM resource)
    submit.py acr-token --registry R     # a token for `docker login --password-stdin`
    submit.py run --image R:T@sha256:... [--dry-run] [options] -- TRAINER FLAGS

Runs inside a container of the training image (SDK v1) or the submit-v2 image (SDK v2), with
./src, the workspace config and the Azure token cache mounted; pushing is left to the host's
Docker. The SDK is chosen once, here: aml_v1 and aml_v2 have the same functions.
"""

import argparse
import importlib
import json
import os
import sys
import urllib.error
from pathlib import Path

import aml

SOURCE = Path("src")  # the mounted work tree's src/, what Azure ML would upload
IMAGE_DIGEST_FILE = Path("/app/src.sha256")  # written into the image at build time
CONFIG = Path(".azureml/config.json")
SDK = os.environ.get("AML_SDK", "v1")  # the submit-v2 image sets v2


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("check-source", help="refuse when src/ differs from the code baked into this image")
    for name in ("login", "registry", "acr-token", "run"):
        s = sub.add_parser(name)
        s.add_argument("--config", default=str(CONFIG), help="workspace config.json (or AZUREML_* variables)")
        s.add_argument(
            "--auth",
            choices=("auto", "interactive", "sp", "msi"),
            default="auto",
            help="auto: service principal if AZURE_CLIENT_ID/SECRET are set, else device-code login",
        )
        if name == "acr-token":
            s.add_argument("--registry", required=True, help="the registry's login server")
    run = sub.choices["run"]
    run.add_argument("--image", required=True, help="REPO:TAG@sha256:DIGEST, as pushed")
    run.add_argument("--dry-run", action="store_true", help="print what would be sent; no network, no credentials")
    run.add_argument("--experiment", default=aml.EXPERIMENT, help="experiment name")
    run.add_argument("--compute", default=aml.COMPUTE, help="compute cluster, created if missing")
    run.add_argument("--vm-size", default="STANDARD_D2_V2", help="VM size, if the cluster is created")
    run.add_argument("--max-nodes", type=int, default=1, help="cluster size limit, if created (min is 0)")
    run.add_argument("--low-priority", action="store_true", help="low-priority VMs, if the cluster is created")
    run.add_argument("--shm-size", default="2g", help="/dev/shm of the training container")
    run.add_argument("--datastore", default="workspaceblobstore", help="datastore of --data-path and --checkpoint-path")
    run.add_argument("--data-path", default=None, help="datastore folder with CIFAR-10, mounted as --data-dir")
    run.add_argument(
        "--checkpoint-path",
        default=None,
        help="datastore folder for checkpoints (survives preemption); the run resumes from it",
    )
    run.add_argument("--nodes", type=int, default=1, help="nodes of a distributed (DDP) run")
    run.add_argument("--procs-per-node", type=int, default=1, help="processes (ranks) per node")
    run.add_argument("--wait", action="store_true", help="stream the run's logs until it ends")
    run.add_argument("trainer_args", nargs=argparse.REMAINDER, help="after --: flags for train.py")
    args = p.parse_args(argv)
    if getattr(args, "trainer_args", None) and args.trainer_args[0] == "--":
        args.trainer_args = args.trainer_args[1:]
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


def run(adapter, args):
    """The samples' job.py, in a straight line: intent, job, (dry run: print it), workspace, compute, submit."""
    check_source()
    snapshot = aml.check_snapshot(SOURCE)
    intent = aml.intent(
        args.image,
        SOURCE,
        args.trainer_args,
        datastore=args.datastore,
        data_path=args.data_path,
        checkpoint_path=args.checkpoint_path,
        experiment=args.experiment,
        compute=args.compute,
        vm_size=args.vm_size,
        max_nodes=args.max_nodes,
        low_priority=args.low_priority,
        shm_size=args.shm_size,
        nodes=args.nodes,
        procs_per_node=args.procs_per_node,
    )
    job = adapter.build_job(intent)
    if args.dry_run:
        plan = {"sdk": SDK, "snapshot": snapshot, **adapter.describe(job, intent)}
        print(json.dumps(plan, indent=2, default=str))
        return 0
    ws = adapter.connect(aml.workspace_settings(args.config), adapter.credential(args.auth))
    adapter.compute(ws, intent)
    adapter.submit(ws, job, intent, args.wait)
    return 0


def main(argv=None):
    args = parse_args(argv)
    adapter = importlib.import_module({"v1": "aml_v1", "v2": "aml_v2"}[SDK])
    try:
        if args.command == "check-source":
            print(f"src/ matches the image's code ({check_source()[:12]})")
            return 0
        if args.command == "run":
            return run(adapter, args)
        settings = aml.workspace_settings(args.config)
        cred = adapter.credential(args.auth)
        if args.command == "login":
            adapter.token(cred, aml.ARM_SCOPE)  # logs in now (device code if needed) and caches the token
            print(f"workspace {settings['workspace_name']} in {settings['resource_group']}: logged in")
        elif args.command == "registry":
            ws = adapter.connect(settings, cred)
            print(aml.registry_login_server(adapter.registry_id(ws), adapter.token(cred, aml.ARM_SCOPE)))
        elif args.command == "acr-token":
            print(aml.acr_refresh_token(args.registry, adapter.token(cred, aml.REGISTRY_SCOPE)))
        return 0
    except aml.SubmitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except urllib.error.HTTPError as e:  # ARM or the registry said no: its status names the cause
        where = e.url.split("?")[0]
        print(f"error: {where} answered {e.code} {e.reason}: check AUTH and your role on it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
