"""`make bench`: the product as a user runs it against the Azure tutorial's train.py, whole commands side by side.

    make bench                                      # 2 epochs of 50,000 images, 2 rounds
    make bench ARGS="--epochs 1 --rounds 3 --images 20000"
    make bench ARGS="--product-flags='--threads 2'" # extra trainer flags for the product
    make bench ARGS="--loop"                        # each round also: a step at batch 4, the tutorial's kernels' share
    make bench ARGS="--numerics --epochs 1"         # the product with its numerics pins and without, batch 4 and 512

Runs on the host (standard library only), driving `docker compose run` with the built image: in it, on one generated
data set in CIFAR-10's format (torchvision's md5 check expecting its files: tests/cifar_fixture.py --on), the tutorial's
script (bench/tutorial_train.py) and `docker compose run train` (src/train.py). Rounds interleave and rotate which
goes first; each figure comes with its range over rounds. Past figures, and those of retired benches: docs/perf.md.
With --numerics the rounds run the product only, portable (the image's default) and NUMERICS=native (docs/runtime.md,
"The same weights on any x86-64 CPU"), at the tutorial's batch of 4 and at 512.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOSS = re.compile(r"epoch=(\d+), batch=\s*(\d+): loss ([\d.]+)")
MOUNTS = ["-v", f"{ROOT / 'bench'}:/app/bench:ro", "-v", f"{ROOT / 'tests'}:/app/tests:ro"]
ON_FIXTURE = ["python", "/app/tests/cifar_fixture.py", "--on", "data"]  # the generated files pass torchvision's check


def compose_run(env, *command):
    """Run `docker compose run --rm train COMMAND`; return (seconds, [(seconds since start, line)]), or exit."""
    argv = ["docker", "compose", "run", "--rm", "-T", *MOUNTS, "train", *command]
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [(time.perf_counter() - t0, line.rstrip()) for line in p.stdout]
    if p.wait():
        sys.exit(f"error: {' '.join(command)} exited with {p.returncode}:\n" + "\n".join(ln for _, ln in lines[-15:]))
    return time.perf_counter() - t0, lines


def machine():
    """Cores and CPU model, to stand next to every figure (the containers run on this host's CPU)."""
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return f"{os.cpu_count()} cores, {model}"


LOSS_EVERY = 2000  # mini-batches between the tutorial's loss lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=2, help="epochs for both programs (default: 2, the tutorial's)")
    p.add_argument("--rounds", type=int, default=2, help="rounds, each running every program once (default: 2)")
    p.add_argument("--images", type=int, default=50000, help="generated training images (default: 50000)")
    p.add_argument("--product-flags", default="", help='extra trainer flags for the product, e.g. "--threads 2"')
    p.add_argument("--loop", action="store_true", help="each round also takes a step at batch 4 apart (step_share)")
    p.add_argument("--step-share", action="store_true", help="inside the image: what --loop runs, one JSON line")
    p.add_argument("--numerics", action="store_true", help="the product portable vs NUMERICS=native, batch 4 and 512")
    args = p.parse_args(argv)
    if args.images % 5 or args.images < 5 * 4:
        p.error("--images must be a multiple of 5 (five batch files) and at least 20")
    # The tutorial prints its loss every 2000 mini-batches of 4: a rate between loss lines needs two an epoch.
    if not args.numerics and args.images < LOSS_EVERY * 4 * 2:
        p.error(f"--images must be at least {LOSS_EVERY * 4 * 2} (two loss lines an epoch; or use --numerics)")
    return args


def programs(args):
    """name -> the command a round runs for it; TUTORIAL_EPOCHS stops the tutorial's fixed 2 epochs early."""
    tutorial = ["env", f"TUTORIAL_EPOCHS={args.epochs}", *ON_FIXTURE, "/app/bench/tutorial_train.py"]
    product = [*ON_FIXTURE, "/app/src/train.py", "--epochs", str(args.epochs), *args.product_flags.split()]
    loop = ["python", "/app/bench/product.py", "--step-share"]
    if args.numerics:  # NUMERICS is read by the trainer (src/device.py), so `env` in front of it is the switch
        switch = {"portable": [], "native": ["env", "NUMERICS=native"]}
        return {f"{m}, batch {b}": [*switch[m], *product, "--batch-size", str(b)] for b in BATCHES for m in switch}
    return {"tutorial": tutorial, "product": product, **({"loop": loop} if args.loop else {})}


def prepare(work, args):
    """Write the data set (in the image: numpy) and return the environment every run shares."""
    env = {**os.environ, **{key: str(work / key.lower()) for key in ("DATA_DIR", "OUTPUTS_DIR", "CHECKPOINTS_DIR")}}
    for key in ("DATA_DIR", "OUTPUTS_DIR", "CHECKPOINTS_DIR"):
        Path(env[key]).mkdir()
        Path(env[key]).chmod(0o777)  # the container runs as the outputs' owner (this user); 0777 lets any uid write
    compose_run(env, "python", "/app/tests/cifar_fixture.py", "data", str(args.images // 5))
    compose_run(env, "true")  # the first container start after a build is slower; no round should pay for it
    image, start_stop = env.get("IMAGE", "cifar10-trainer:local"), compose_run(env, "true")[0]
    print(f"image {image}, {args.images} generated images; {machine()}; load {os.getloadavg()[0]:.1f}")
    print(f"of each command, a container's start and stop (`docker compose run train true`): {start_stop:.1f} s\n")
    return env


def run_rounds(env, args):
    """Every program once per round, the first one rotating; returns {name: [per-round result]}."""
    commands = programs(args)
    results = {name: [] for name in commands}
    for r in range(args.rounds):
        for name in list(commands)[r % len(commands) :] + list(commands)[: r % len(commands)]:
            seconds, lines = compose_run(env, *commands[name])
            summary = {}
            if "/app/src/train.py" in commands[name]:  # each run writes outputs/<run>/, and outputs/latest names it
                summary = json.loads((Path(env["OUTPUTS_DIR"]) / "latest" / "summary.json").read_text())
            results[name].append({"wall": seconds, "lines": lines, "summary": summary})
            print(f"round {r + 1}: {name:8s} {seconds:6.1f} s   (load {os.getloadavg()[0]:.1f})", flush=True)
    return results


def main(argv=None):
    args = parse_args(argv)
    if args.step_share:
        return step_share()
    with tempfile.TemporaryDirectory(prefix="bench-", ignore_cleanup_errors=True) as work:
        results = run_rounds(prepare(Path(work), args), args)
    if args.numerics:
        return report_numerics(results, args)
    report(results, args)
    if args.loop:
        report_loop([json.loads(r["lines"][-1][1]) for r in results["loop"]])


def spread(values, fmt="{:.1f}", best=min):
    """The best round's figure, and the range over rounds."""
    return f"{fmt.format(best(values))} (rounds {fmt.format(min(values))}-{fmt.format(max(values))})"


def steady_rate(lines, images):
    """Images/s between the first and the last loss line's arrival (they come every 2000 steps of 4 images)."""
    marks = [(t, int(e), int(b)) for t, line in lines for e, b, _ in LOSS.findall(line)]
    if len(marks) < 2:
        return float("nan")  # under 16,000 images an epoch, one loss line or none
    (t1, e1, b1), (t2, e2, b2) = marks[0], marks[-1]
    return ((e2 - e1) * -(-images // 4) + b2 - b1) * 4 / (t2 - t1)


def seconds_to(runs, pattern):
    """Seconds from each run's start to its first line matching pattern (to its first line, for "")."""
    return [next(t for t, line in r["lines"] if re.search(pattern, line)) for r in runs]


def report(results, args):
    tut, prod = results["tutorial"], results["product"]
    wall = [[r["wall"] for r in runs] for runs in (tut, prod)]
    rate = [[steady_rate(r["lines"], args.images) for r in runs] for runs in (tut, prod)]
    summary = {key: [r["summary"][key] for r in prod] for key in ("images_per_sec", "train_seconds")}
    rows = [  # label, per-round values, format, which round is the best
        ("whole command, the tutorial's train.py, s", wall[0], "{:.1f}", min),
        (f"whole command, docker compose run train {args.product_flags or '(defaults)'}, s", wall[1], "{:.1f}", min),
        ("ratio tutorial/product, each round's pair", [a / b for a, b in zip(*wall, strict=True)], "{:.2f}x", max),
        ("images/s, tutorial, first to last loss line", rate[0], "{:.0f}", max),
        ("images/s, product, first to last loss line", rate[1], "{:.0f}", max),
        ("images/s, product's training loop (summary.json)", summary["images_per_sec"], "{:.0f}", max),
        ("product, s to its first line (config)", seconds_to(prod, ""), "{:.1f}", min),
        ("product, s to its first loss line", seconds_to(prod, LOSS.pattern), "{:.1f}", min),
        ("product, s to 'Finished Training'", seconds_to(prod, "Finished Training"), "{:.1f}", min),
        ("product, s in its training loop (summary.json)", summary["train_seconds"], "{:.1f}", min),
    ]
    print(f"\n{args.epochs} epoch(s) of {args.images} images; the best round, and the range over rounds:")
    for label, values, fmt, best in rows:
        print(f"  {label:58s} {spread(values, fmt, best)}")
    losses = [[v for _, line in runs[0]["lines"] for *_, v in LOSS.findall(line)] for runs in (tut, prod)]
    print(f"  loss every 2000 mini-batches, first round ({'the same' if losses[0] == losses[1] else 'NOT the same'}):")
    for name, values in zip(("tutorial", "product"), losses, strict=True):
        print(f"    {name:8s} {' '.join(values)}")


BATCHES = (4, 512)  # the tutorial's batch (one thread), and one that gets every core (src/device.py)
MODES = ("portable", "native")


def report_numerics(results, args):
    """images/s of the product's training loop (summary.json), portable vs native, and each round's ratio."""
    print(f"\n{args.epochs} epoch(s) of {args.images} images; images/s of the training loop, best round and range:")
    for batch in BATCHES:
        rates = {m: [r["summary"]["images_per_sec"] for r in results[f"{m}, batch {batch}"]] for m in MODES}
        threads = results[f"portable, batch {batch}"][0]["summary"]["threads"]
        for mode in MODES:
            print(f"  batch {batch:3d} ({threads} thread(s)), {mode:8s}  {spread(rates[mode], '{:.0f}', max)}")
        pairs = [p / n for p, n in zip(rates["portable"], rates["native"], strict=True)]
        print(f"  batch {batch:3d}, portable/native, each round's pair  {spread(pairs, '{:.2f}x', max)}")
    shas = {name: {r["summary"]["weights_sha256"][:12] for r in runs} for name, runs in results.items()}
    print("  weights sha256 by run: " + "; ".join(f"{name}: {' '.join(sorted(s))}" for name, s in shas.items()))


# The tutorial's arithmetic, by the aten ops that do it (forward and backward), as torch.profiler names them.
KERNELS = {
    "convolutions (oneDNN)": "mkldnn_convolution convolution_backward",
    "max pooling": "max_pool2d_with_indices max_pool2d_with_indices_backward",
    "linear layers": "addmm mm sum",
    "ReLU": "clamp_min threshold_backward",
    "cross-entropy": "_log_softmax nll_loss_forward nll_loss_backward _log_softmax_backward_data",
}


def step_share(steps=2000):
    """In the image, 1 thread: microseconds a step of the trainer's at batch 4 (src/step.py), then the same step
    under torch.profiler: the self time of the tutorial's kernels, and the profiled step's own time (one stretch
    of a busy machine for both). The rest of a step is the optimizer's update, dispatch, allocation and Python."""
    sys.path.insert(0, "/app/src")
    import torch
    from torch.nn.functional import cross_entropy
    from torch.profiler import profile

    import data
    import train
    from model import Net
    from step import DirectStep, make_step

    torch.set_num_threads(1)
    batches = list(data.fast_batches(*data.fake_cifar10(1000, seed=0), 4, torch.arange(1000)))  # before the clock
    net, cpu = Net(), train.Device("cpu", nullcontext(), torch.contiguous_format)
    step = make_step(net, train.make_optimizer(net, lr=0.001, momentum=0.9), cpu, False)
    for inputs, labels in batches[:20]:  # warm-up: the allocator, oneDNN's primitives
        step(inputs, labels, cross_entropy).item()
    t0 = time.perf_counter()
    for i in range(steps):
        step(*batches[i % len(batches)], cross_entropy).item()  # .item(), as the tutorial's running loss
    step_us = (time.perf_counter() - t0) * 1e6 / steps
    with profile() as prof:
        t0 = time.perf_counter()
        for inputs, labels in batches:
            step(inputs, labels, cross_entropy).item()
        profiled_us = (time.perf_counter() - t0) * 1e6 / len(batches)
    self_us = {e.key: e.self_cpu_time_total / len(batches) for e in prof.key_averages()}
    kernels = {group: sum(self_us.get(f"aten::{op}", 0.0) for op in ops.split()) for group, ops in KERNELS.items()}
    kind = "DirectStep" if isinstance(step, DirectStep) else "autograd's step"  # which make_step chose here
    print(json.dumps({"step_us": step_us, "profiled_us": profiled_us, "kernels_us": kernels, "kind": kind}))


def report_loop(rounds):
    step = [r["step_us"] for r in rounds]
    shares = [sum(r["kernels_us"].values()) / r["profiled_us"] for r in rounds]
    best = {group: min(r["kernels_us"][group] for r in rounds) for group in KERNELS}  # each the least disturbed
    print(f"\na step at batch 4 on 1 thread, in the image ({rounds[0]['kind']}); {machine()}:")
    print(f"  the trainer's step: {spread(step, '{:.0f}')} us; in the tutorial's kernels (self time, best round each):")
    print("    " + ", ".join(f"{group} {us:.0f}" for group, us in best.items()) + " us")
    inside = sum(best.values())
    print(f"    together {inside:.0f} us, {inside / min(step):.0%} of the best step; within each profiled round")
    print(f"    {min(shares):.0%}-{max(shares):.0%} (a floor: the profiler's own cost counts against it)")


if __name__ == "__main__":
    raise SystemExit(main())
