"""Submit the trainer to Azure ML in the image it was built into (run by `make submit`).

    submit.py check-source               # refuse if ./src differs from the image's code
    submit.py login                      # workspace config and credentials; device-code login if needed
    submit.py registry                   # the workspace registry's login server
    submit.py acr-token --registry R     # a token for `docker login --password-stdin`
    submit.py run --image R:T@sha256:... [--dry-run] [options] -- TRAINER FLAGS

Runs inside a container of the training image (azureml-core is there), with ./src, the
workspace config and the Azure token cache mounted; pushing is left to the host's Docker.
"""

import argparse
import json
import os
import sys
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
            s.add_argument("--registry", required=True, help="login server, e.g. NAME.azurecr.io")
    run = sub.choices["run"]
    run.add_argument("--image", required=True, help="REPO:TAG@sha256:DIGEST, as pushed")
    run.add_argument("--dry-run", action="store_true", help="print what would be sent; no network, no credentials")
    run.add_argument("--experiment", default="cifar10", help="experiment name")
    run.add_argument("--compute", default="cpu-cluster", help="compute cluster, created if missing")
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


def run(args):
    check_source()
    files, size = aml.check_snapshot(SOURCE)
    if not 1 <= args.nodes <= args.max_nodes or args.procs_per_node < 1:
        raise aml.SubmitError(
            f"NODES={args.nodes} needs a cluster of at least that many nodes: set MAX_NODES={args.nodes}"
        )
    job_args = dict(
        shm_size=args.shm_size,
        datastore=args.datastore,
        data_path=args.data_path,
        checkpoint_path=args.checkpoint_path,
        nodes=args.nodes,
        procs_per_node=args.procs_per_node,
    )
    if SDK == "v2":
        import aml_v2

        job = aml_v2.build_job(
            aml_v2.build_environment(args.image), SOURCE, args.compute, args.trainer_args, args.experiment, **job_args
        )
        compute = aml_v2.compute_config(args.compute, args.vm_size, args.max_nodes, args.low_priority)
        plan = {"compute": compute._to_dict(), **aml_v2.describe(job)}
    else:
        src = aml.build_run_config(
            aml.build_environment(args.image), SOURCE, args.compute, args.trainer_args, **job_args
        )
        compute = aml.compute_config(args.vm_size, args.max_nodes, args.low_priority)
        scale = compute.scale_settings
        plan = {
            "experiment": args.experiment,
            "compute": {
                "name": args.compute,
                "if_missing": {
                    "vm_size": compute.vm_size,
                    "vm_priority": compute.vm_priority,
                    "min_nodes": scale.minimum_node_count,
                    "max_nodes": scale.maximum_node_count,
                    "idle_seconds_before_scaledown": scale.idle_seconds_before_scaledown,
                },
            },
            **aml.describe(src),
        }
    if args.dry_run:
        snapshot = {"source_directory": str(SOURCE), "files": files, "bytes": size}
        print(json.dumps({"sdk": SDK, "snapshot": snapshot, **plan}, indent=2, default=str))
        return 0
    settings = aml.workspace_settings(args.config)
    if SDK == "v2":
        client = aml_v2.ml_client(settings, aml_v2.credential(args.auth))
        aml_v2.get_or_create_compute(client, compute)
        aml_v2.submit(client, job, args.wait)
    else:
        ws = aml.connect_workspace(settings, aml.authentication(args.auth))
        src.run_config.target = aml.get_or_create_compute(ws, args.compute, compute)
        aml.submit(ws, args.experiment, src, args.wait)
    return 0


def login_server(settings, auth_mode):  # network
    if SDK == "v2":
        import aml_v2

        return aml_v2.registry_login_server(aml_v2.ml_client(settings, aml_v2.credential(auth_mode)))
    return aml.registry_login_server(aml.connect_workspace(settings, aml.authentication(auth_mode)))


def arm_token(auth_mode):  # network
    if SDK == "v2":
        import aml_v2

        return aml_v2.arm_token(aml_v2.credential(auth_mode))
    return aml.arm_token(aml.authentication(auth_mode))


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.command == "check-source":
            print(f"src/ matches the image's code ({check_source()[:12]})")
            return 0
        if args.command == "run":
            return run(args)
        settings = aml.workspace_settings(args.config)
        if args.command == "login":
            arm_token(args.auth)  # logs in now (device code if needed) and caches the token
            print(f"workspace {settings['workspace_name']} in {settings['resource_group']}: logged in")
        elif args.command == "registry":
            print(login_server(settings, args.auth))
        elif args.command == "acr-token":
            print(aml.acr_refresh_token(arm_token(args.auth), args.registry))
        return 0
    except aml.SubmitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
