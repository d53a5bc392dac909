"""The same weights on another CPU: the image trains natively and under QEMU user-mode emulation of other
x86-64 CPUs, Intel's and AMD's, and the weights' sha256 must agree (docs/runtime.md, "The same weights on any
x86-64 CPU").

    python tests/e2e/test_numerics.py          # the larger matrix (`make numerics-matrix`): paths x CPUs, a table
    python tests/e2e/test_numerics.py --cpus Haswell-v4 --paths default,resume --fake-data 400

Emulation: Debian's qemu-user-static (.ci/run installs it), its static qemu-x86_64 bind-mounted into the
container and run as `/qemu -cpu MODEL /opt/venv/bin/python /app/src/train.py ...`, the entrypoint bypassed (as
Azure ML does). QEMU 7.2's TCG emulates AVX2 but not AVX-512: each model is an AVX2 CPU of its vendor, and CPUID
answers as that model (what the trainer records; /proc/cpuinfo stays the host's). Each emulated run costs about
a minute of imports and ~1 s a step at batch 4, so the test keeps to 25 steps and runs three at a time.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_env import IMAGE, ROOT, UID  # noqa: E402

QEMU = shutil.which("qemu-x86_64-static")
RECIPE = "--fake-data 100 --epochs 1 --threads 1"  # 25 steps of the tutorial's recipe, its evaluation, a checkpoint
INTEL, AMD = "Haswell-v4", "EPYC-Rome"  # AVX2 CPUs of both vendors: MKL takes another path on each
PATHS = {  # name -> (extra trainer flags, how it runs)
    "default": ("", "train"),
    "threads 2": ("--threads 2", "train"),
    "--normalize": ("--normalize", "train"),
    "--pipeline tutorial": ("--pipeline tutorial", "train"),  # DataLoader workers: forked, so emulated too
    "DDP 2 ranks (gloo)": ("", "ddp"),
    "resume": ("--epochs 2", "resume"),  # epoch 2 on this CPU, from the native default run's epoch-1 checkpoint
}

pytestmark = pytest.mark.skipif(
    QEMU is None,
    reason="qemu-x86_64-static is not installed (Debian: apt-get install qemu-user-static; .ci/run installs it)",
)


def host_cpu():
    """(vendor, has AVX-512) of the machine running the tests, from its kernel."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    field = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if v}
    return field.get("vendor_id", "?"), "avx512f" in field.get("flags", "").split()


def train(root, name, cpu="native", flags=RECIPE, numerics=None, kind="train", resume_from=None):
    """The trainer in the image, on this CPU or an emulated one (a QEMU -cpu model); its output folder."""
    out = root / name
    py = "/opt/venv/bin/python" if cpu == "native" else f"/qemu -cpu {cpu} /opt/venv/bin/python"
    where = f"--output-dir /runs/{name} --checkpoint-dir /runs/{name}-checkpoints"
    if kind == "resume":
        where += f" --resume $(ls /runs/{resume_from}-checkpoints/*/step-*.pt | tail -1)"
    if kind == "ddp":  # torchrun would start the ranks natively: each rank starts under QEMU itself
        rank = "MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 WORLD_SIZE=2 RANK={0} LOCAL_RANK={0}"
        script = f"{rank.format(1)} {py} /app/src/train.py {where} {flags} >/dev/null 2>&1 & "
        script += f"{rank.format(0)} {py} /app/src/train.py {where} {flags}; wait"
    else:
        script = f"{py} /app/src/train.py {where} {flags}"
    argv = ["docker", "run", "--rm", "--network", "none", "--user", f"{UID}:{UID}", "--shm-size", "1g"]
    argv += ["-v", f"{root}:/runs", "-v", f"{QEMU}:/qemu:ro", "--entrypoint", "/bin/sh"]
    argv += ["-e", f"NUMERICS={numerics}"] if numerics else []
    t0 = time.monotonic()
    r = subprocess.run([*argv, IMAGE, "-c", script], capture_output=True, text=True, timeout=1500)
    log = "\n".join(line for line in (r.stdout + r.stderr).splitlines() if not line.startswith("qemu: warning"))
    (root / f"{name}.log").write_text(f"{script}\n{time.monotonic() - t0:.0f} s\n{log}\n")
    assert r.returncode == 0 and (out / "summary.json").exists(), f"{name} ({cpu}): exit {r.returncode}\n{log[-3000:]}"
    return out


def summary(folder):
    return json.loads((folder / "summary.json").read_text())


def make_compare(a, b):
    """`make compare A=a B=b`: (exit status, its last line)."""
    r = subprocess.run(["make", "-s", "compare", f"A={a}", f"B={b}"], cwd=ROOT, capture_output=True, text=True)
    return r.returncode, (r.stdout.strip().splitlines() or [r.stderr])[-1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The recipe natively, on an emulated Intel and AMD CPU, and with NUMERICS=native natively and on the
    emulated Intel CPU: five runs, three at a time (about 3 minutes on 2 busy cores)."""
    root = tmp_path_factory.mktemp("numerics")
    os.chown(root, UID, UID)
    plan = {
        "native": {},
        "intel": {"cpu": INTEL},
        "amd": {"cpu": AMD},
        "native-unpinned": {"numerics": "native"},
        "intel-unpinned": {"cpu": INTEL, "numerics": "native"},
    }
    with ThreadPoolExecutor(3) as pool:
        done = {name: pool.submit(train, root, name, **kw) for name, kw in plan.items()}
    return {name: future.result() for name, future in done.items()}


def test_portable_numerics_give_the_same_weights_on_intel_and_amd_cpus(runs):
    s = {name: summary(runs[name]) for name in ("native", "intel", "amd")}
    assert {name: x["weights_sha256"] for name, x in s.items()} == dict.fromkeys(s, s["native"]["weights_sha256"])
    assert {x["numerics"] for x in s.values()} == {"portable"}
    assert {x["aten_cpu_capability"] for x in s.values()} == {"AVX2"}
    # Each run names the CPU it computed on: CPUID answers as the emulated model, not as the host.
    assert (s["intel"]["cpu_vendor"], s["intel"]["cpu_isa"]) == ("GenuineIntel", "AVX2")
    assert "Haswell" in s["intel"]["cpu_model"]
    assert (s["amd"]["cpu_vendor"], s["amd"]["cpu_isa"]) == ("AuthenticAMD", "AVX2")
    assert "EPYC-Rome" in s["amd"]["cpu_model"]
    assert s["native"]["cpu_vendor"] == host_cpu()[0]


def test_make_compare_says_a_native_and_an_emulated_haswell_run_are_the_same_run(runs):
    assert make_compare(runs["native"], runs["intel"]) == (0, "the same run: bit-identical weights")


def test_without_the_pins_the_cpu_changes_the_weights(runs):
    """What the pins prevent, seen here: on an AVX-512 host ATen and oneDNN take AVX-512 kernels; on an AMD
    host MKL takes its AMD path; an emulated Haswell does neither."""
    native, intel = summary(runs["native-unpinned"]), summary(runs["intel-unpinned"])
    assert (native["numerics"], intel["numerics"]) == ("native", "native")
    vendor, avx512 = host_cpu()
    if not avx512 and vendor != "AuthenticAMD":
        pytest.skip(f"an AVX2 {vendor} host: unpinned, it may well compute what an emulated Haswell does")
    assert native["weights_sha256"] != intel["weights_sha256"]
    code, line = make_compare(runs["native-unpinned"], runs["intel-unpinned"])
    cpus = f"{vendor} {'AVX512' if avx512 else 'AVX2'} vs GenuineIntel AVX2"
    assert code == 1 and line.startswith(f"differs: numerics native on different CPUs ({cpus})"), line


def matrix(args):
    """`make numerics-matrix`: every path on every CPU, portable, and the default path with NUMERICS=native;
    prints the weights' sha256 as a table; exit 1 when a portable row disagrees."""
    root = Path(args.out or tempfile.mkdtemp(prefix="numerics-matrix-"))
    root.mkdir(parents=True, exist_ok=True)
    os.chown(root, UID, UID)
    cpus = ["native", *args.cpus.split(",")]
    paths = list(PATHS) if args.paths == "all" else [p for p in PATHS if p in args.paths.split(",")]
    recipe = f"--fake-data {args.fake_data} --epochs 1 --threads 1"
    rows = [(mode, path) for mode in args.modes.split(",") for path in (paths if mode == "portable" else ["default"])]
    jobs = {}
    for mode, path in rows:
        flags, kind = PATHS[path]
        for cpu in cpus:
            kw = {"cpu": cpu, "flags": f"{recipe} {flags}", "numerics": mode, "kind": kind}
            kw["resume_from"] = f"{mode}-default-native"  # the native default run's checkpoint
            jobs[(mode, path, cpu)] = (f"{mode}-{slug(path)}-{cpu}", kw)
    vendor, avx512 = host_cpu()
    print(f"image {IMAGE}; recipe {recipe}; host {vendor}{', AVX-512' if avx512 else ''}; runs in {root}", flush=True)
    first = [k for k in jobs if k[1] == "default" and k[2] == "native"]  # a resume starts from their checkpoint
    shas = {}
    with ThreadPoolExecutor(args.parallel) as pool:
        for group in (first, [k for k in jobs if k not in first]):
            futures = {k: pool.submit(sha, root, *jobs[k]) for k in group}
            shas.update({k: future.result() for k, future in futures.items()})
    width = max(14, *(len(c) + 2 for c in cpus))
    print(f"\n{'numerics, path':34s}" + "".join(f"{c:{width}s}" for c in cpus) + "agree")
    disagree = 0
    for mode, path in rows:
        row = [shas[(mode, path, cpu)] for cpu in cpus]
        agree = len(set(row)) == 1 and "FAILED" not in row
        disagree += mode == "portable" and not agree
        print(f"{mode + ', ' + path:34s}" + "".join(f"{s:{width}s}" for s in row) + ("yes" if agree else "NO"))
    print("(weights sha256, first 12 hex digits; portable: the image's default; native: NUMERICS=native)")
    return 1 if disagree else 0


def slug(path):
    return "-".join("".join(c if c.isalnum() else " " for c in path).split())


def sha(root, name, kw):
    try:
        return summary(train(root, name, **kw))["weights_sha256"][:12]
    except AssertionError as e:
        print(f"failed: {e}", file=sys.stderr)
        return "FAILED"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpus", default=f"{INTEL},{AMD},Skylake-Client-v4,EPYC-Milan", help="QEMU -cpu models")
    p.add_argument("--paths", default="all", help=f"comma-separated, of: {', '.join(PATHS)} (default: all)")
    p.add_argument("--modes", default="portable,native", help="portable: every path; native: the default path")
    p.add_argument("--fake-data", type=int, default=200, help="images, 4 a step (default: 200, 50 steps)")
    p.add_argument("--parallel", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="runs at a time")
    p.add_argument("--out", help="where the runs go (default: a new temporary folder, kept)")
    args = p.parse_args(argv)
    if QEMU is None:
        p.error("qemu-x86_64-static is not installed (Debian: apt-get install qemu-user-static)")
    return matrix(args)


if __name__ == "__main__":
    raise SystemExit(main())
