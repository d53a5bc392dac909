"""The product as a user runs it, against the Azure tutorial's train.py: whole commands, side by side.

    make bench                                  # 2 epochs, 2 rounds (11 min on 2 busy shared cores)
    make bench ARGS="--epochs 1 --rounds 3"     # shorter epochs, more rounds
    make bench ARGS="--product-flags=--threads 1"   # extra trainer flags for the product rounds
    make bench ARGS="--before cifar10-trainer:OLD"  # also an earlier build of the image, same rounds

Runs on the host (Python's standard library only) and drives `docker compose run` against the built
image. Both programs train on the same generated 50,000-image data set in the real CIFAR-10 on-disk
format, with torchvision's md5 check satisfied (bench/on_fixture.py), in the same image:
- tutorial: bench/tutorial_train.py, the Azure tutorial's train.py (ToTensor, DataLoader batch 4,
  shuffle, 2 workers, SGD(0.001, 0.9), a loss line every 2000 mini-batches);
- product:  `docker compose run train` with default flags (src/train.py).
With --before IMAGE, an earlier build of the product runs the same command in the same rounds (its
own /app/src, default flags), for before/after figures measured side by side. Rounds rotate which
goes first. Printed: each whole command's wall time, their ratio with its range
over rounds, training images/s, where the product's time goes (from when each output line arrived),
and both loss trajectories. Then, in one container: a float32 2048x2048 matmul rate, the trainer at
batch 512 (images/s and its share of that rate) and the test-set evaluation time (bench/kernels.py).
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOSS = re.compile(r"epoch=(\d+), batch=\s*(\d+): loss ([\d.]+)")
MOUNTS = ["-v", f"{ROOT / 'bench'}:/app/bench:ro", "-v", f"{ROOT / 'tests'}:/app/tests:ro"]


def compose_run(env, *command):
    """Run `docker compose run --rm train COMMAND`; return (seconds, [(seconds since start, line)], rc)."""
    argv = ["docker", "compose", "run", "--rm", "-T", *MOUNTS, "train", *command]
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [(time.perf_counter() - t0, line.rstrip()) for line in p.stdout]
    rc = p.wait()
    return time.perf_counter() - t0, lines, rc


def folders(env, work, name):
    """Fresh output and checkpoint folders per run (the trainer refuses to overwrite a finished run)."""
    run_env = dict(env)
    for key, sub in (("OUTPUTS_DIR", "outputs"), ("CHECKPOINTS_DIR", "checkpoints")):
        path = work / name / sub
        path.mkdir(parents=True)
        path.chmod(0o777)  # whichever uid the container runs as may write there
        run_env[key] = str(path)
    return run_env


def at(lines, pattern):
    """Seconds at which the first line matching pattern arrived, or None."""
    return next((t for t, line in lines if re.search(pattern, line)), None)


def losses(lines):
    return [(int(e), int(b), v) for _, line in lines for e, b, v in LOSS.findall(line)]


def steady_rate(lines, args):
    """Images/s between the first and the last loss line (every 2000 steps of 4 images)."""
    marks = [(t, int(e), int(b)) for t, line in lines for e, b, _ in LOSS.findall(line)]
    (t1, e1, b1), (t2, e2, b2) = marks[0], marks[-1]
    steps_per_epoch = -(-args.images // 4)
    return ((e2 - e1) * steps_per_epoch + b2 - b1) * 4 / (t2 - t1)


def must(rc, lines, what):
    if rc != 0:
        sys.exit(f"error: {what} exited with {rc}; its last lines:\n" + "\n".join(line for _, line in lines[-15:]))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=2, help="epochs for both programs (the tutorial's is 2)")
    p.add_argument("--rounds", type=int, default=2, help="tutorial/product pairs, order alternating")
    p.add_argument("--images", type=int, default=50000, help="generated training images (test set: a fifth)")
    p.add_argument(
        "--product-flags",
        default="",
        help='extra trainer flags for the product rounds, e.g. "--threads 1" (printed with the results)',
    )
    p.add_argument("--before", metavar="IMAGE", help="an earlier build of the image, timed in the same rounds")
    p.add_argument("--no-kernels", action="store_true", help="skip the matmul / batch 512 / evaluation figures")
    p.add_argument("--loop", action="store_true", help="also the bare-loop detail (bench/throughput.py)")
    args = p.parse_args()
    if args.images % 5 or args.images < 5 * 4:
        sys.exit("error: --images must be a multiple of 5 (five batch files) and at least 20")

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        env = {**os.environ, "LOCAL_UID": str(os.getuid()), "LOCAL_GID": str(os.getgid())}
        env["DATA_DIR"] = str(work / "data")
        (work / "data").mkdir()
        (work / "data").chmod(0o777)
        env = folders(env, work, "setup")
        _, lines, rc = compose_run(env, "python", "/app/tests/cifar_fixture.py", "data", str(args.images // 5))
        must(rc, lines, "writing the data set")
        load = os.getloadavg()[0]
        print(f"{args.images} generated images in CIFAR-10's format; {os.cpu_count()} cores, load {load:.1f}")
        flags = args.product_flags or "default flags"
        image = env.get("IMAGE", "cifar10-trainer:local")
        print(f"image {image}; {args.epochs} epoch(s), {args.rounds} rounds; product: {flags}\n")

        # the tutorial runs its fixed 2 epochs; --epochs 1 stops it after the first (see tutorial_epochs)
        tutorial = ["python", "/app/bench/on_fixture.py", "/app/bench/tutorial_train.py"]
        before = ["python", "/app/bench/on_fixture.py", "/app/src/train.py"]  # default flags
        if args.epochs != 2:
            tutorial = ["env", f"TUTORIAL_EPOCHS={args.epochs}", *tutorial]
            before += ["--epochs", str(args.epochs)]
        product = [*before, *args.product_flags.split()]
        _, lines, rc = compose_run(env, "true")
        commands = {"tutorial": tutorial, "product": product, **({"before": before} if args.before else {})}
        results = {name: [] for name in commands}
        overhead = []
        for r in range(args.rounds):
            names = list(commands)
            for name in names[r % len(names) :] + names[: r % len(names)]:
                run_env = folders(env, work, f"{name}-{r}")
                if name == "before":
                    run_env["IMAGE"] = args.before
                seconds, lines, rc = compose_run(run_env, *commands[name])
                must(rc, lines, name)
                summary = {}
                if name != "tutorial":
                    summary = json.loads((Path(run_env["OUTPUTS_DIR"]) / "summary.json").read_text())
                results[name].append({"wall": seconds, "lines": lines, "summary": summary})
                print(f"round {r + 1}: {name:8s} {seconds:6.1f} s   (load {os.getloadavg()[0]:.1f})", flush=True)
            overhead.append(compose_run(env, "true")[0])
        report(results, args, statistics.median(overhead))
        if not args.no_kernels:
            print()
            kernel_env = folders(env, work, "kernels")
            _, lines, rc = compose_run(kernel_env, "python", "/app/bench/kernels.py", "--data", "data")
            must(rc, lines, "bench/kernels.py")
            print("\n".join(line for _, line in lines))
        if args.loop:
            print("\nbare training loops, no start-up (bench/throughput.py):", flush=True)
            _, lines, rc = compose_run(env, "python", "/app/bench/throughput.py")
            must(rc, lines, "bench/throughput.py")
            print("\n".join(line for _, line in lines))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ratio_line(label, slower, faster):
    """Best over best, and the range of the per-round ratios (programs of one round ran back to back)."""
    per_round = [a["wall"] / b["wall"] for a, b in zip(slower, faster, strict=True)]
    best = min(r["wall"] for r in slower) / min(r["wall"] for r in faster)
    print(f"  {label}: {best:.2f}x (per round {min(per_round):.2f}x-{max(per_round):.2f}x)")


def report(results, args, overhead):
    tut, prod, before = results["tutorial"], results["product"], results.get("before")
    names = {
        "tutorial": "tutorial train.py (same image)",
        "product": f"docker compose run train {args.product_flags or '(default flags)'}",
        "before": f"the same, image {args.before}",
    }
    print(f"\nwhole command, {args.epochs} epoch(s) of {args.images} images, best of {args.rounds} rounds:")
    for name, runs in results.items():
        print(f"  {names[name] + ':':44s} {min(r['wall'] for r in runs):6.1f} s")
    ratio_line("ratio tutorial/product", tut, prod)
    if before:
        ratio_line("ratio tutorial/before", tut, before)
        ratio_line("product speed-up over before", before, prod)
    print(f"  of each, `docker compose run train true` (container start and stop): {overhead:.1f} s")

    print("\ntraining images/s, best round, from the first to the last loss line's arrival (all alike):")
    for name, runs in results.items():
        print(f"  {name:8s} {max(steady_rate(r['lines'], args) for r in runs):7.0f}")
    for name, runs in results.items():
        if name != "tutorial":
            loop = max(r["summary"]["images_per_sec"] for r in runs)
            print(f"  {name}, its training loop alone (summary.json images_per_sec): {loop:7.0f}")

    for name, runs in results.items():
        if name == "tutorial":
            continue
        best = min(runs, key=lambda r: r["wall"])
        lines, s = best["lines"], best["summary"]
        finished = at(lines, "Finished Training")
        first_loss = at(lines, LOSS.pattern) or finished
        print(f"\nwhere the {name}'s time goes (fastest round; seconds from the command's start):")
        print(f"  first output line (config; imports, data set opened and decoded): {lines[0][0]:6.1f}")
        print(f"  first loss line:                                                  {first_loss:6.1f}")
        print(f"  'Finished Training':                                              {finished:6.1f}")
        print(f"  command done (weights, plot, summary, container removed):         {best['wall']:6.1f}")
        print(f"  of which the training loop itself: {s['train_seconds']:.1f} s; threads {s.get('threads')}")

    print("\nloss every 2000 mini-batches (first round of each):")
    trajectories = {name: losses(runs[0]["lines"]) for name, runs in results.items()}
    print("  epoch batch  " + "  ".join(f"{name:>8s}" for name in trajectories))
    for rows in zip(*trajectories.values(), strict=False):
        e, i, _ = rows[0]
        print(f"  {e:5d} {i:5d}  " + "  ".join(f"{v:>8s}" for *_, v in rows))
    values = [[v for *_, v in t] for t in trajectories.values()]
    same = all(v == values[0] for v in values)
    counts = " vs ".join(str(len(v)) for v in values)
    print(f"  trajectories agree to the printed digits: {'yes' if same else 'NO'} ({counts} lines)")


if __name__ == "__main__":
    main()
