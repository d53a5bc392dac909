"""A run killed at any write (SIGKILL: no handler runs) is completed by `--resume auto`, equal to one never killed.

The writes are found, in the order they happen, by running the recipe once with every write function
wrapped (WRITERS): run.json and the other atomic writes (checkpoints, model.pt, curves.png, summary.json),
the checkpoint rotation, outputs/latest, and each metrics.jsonl line. Then, for each write, a run is killed
just before it, during it (a part written) and just after it, and `--resume auto` must end with a complete run
whose weights and summary.json equal the uninterrupted run's, timings aside. Each run is a fork of this
process (torch is imported once); the killed process is the one writing: rank 0 in the two-rank case.
"""

import io
import json
import os
import signal
import sys
from pathlib import Path

import pytest
from ports import free_port

import checkpoint
import metrics
import outputs
import runs
import train

# 2 epochs of 6 steps: checkpoints at steps 2 and 4 (interval) and at each epoch's end, so that rotation
# drops files; `loss` every 3 steps.
RECIPE = "--fake-data 24 --epochs 2 --checkpoint-every 2 --log-interval 3 --threads 1 --progress off".split()
RANKS = "--dist-timeout 60".split()  # a rank that loses the others fails the test in a minute, not 30
PHASES = ("before", "during", "after")
TIMINGS = ("train_seconds", "images_per_sec", "wall_seconds", "train/images_per_sec")  # summary keys, metrics
CHILD_SECONDS = 120  # a forked run that hangs is killed by its own alarm, and fails the test


def atomic_during(original):
    def write(path, produce, *rest):
        buffer = io.BytesIO()
        produce(buffer)
        with open(Path(path).with_name(Path(path).name + outputs.TORN), "wb") as f:
            f.write(buffer.getvalue()[: buffer.tell() // 2])  # a torn file, as a kill mid-write leaves
        die()

    return write


def rotate_during(original):
    def rotate(newest):
        found = sorted(newest.parent.glob("step-*.pt"))
        doomed = [p for p in found if p != newest][: -(checkpoint.KEEP - 1) or None]
        if doomed:
            doomed[0].unlink()
        die()

    return rotate


def latest_during(original):
    def point(root, name):
        (Path(root) / f".{runs.LATEST}.{os.getpid()}").symlink_to(name)
        die()

    return point


def line_during(original):
    def append(path, line):
        with open(path, "a") as f:
            f.write(line[: len(line) // 2])
        die()

    return append


# module, function name, what the write is called in the census, how to tear it.
WRITERS = [
    (outputs, "atomic_write", lambda args: Path(args[0]).name, atomic_during),
    (checkpoint, "rotate", lambda args: "rotation after " + Path(args[0]).name, rotate_during),
    (runs, "point_latest", lambda args: "outputs/latest", latest_during),
    (metrics, "append_line", lambda args: "metrics.jsonl: " + json.loads(args[1])["name"], line_during),
]


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def wrap(patch, census, kill_at=None, phase=None):
    """Wrap every writer (patch: a MonkeyPatch): record each write's name in census; at write number
    kill_at, die in phase."""
    for module, name, label, during in WRITERS:
        original = getattr(module, name)

        def wrapper(*args, _original=original, _label=label, _during=during):
            census.append(_label(args))
            if len(census) - 1 == kill_at:
                if phase == "before":
                    die()
                if phase == "during":
                    _during(_original)(*args)
            result = _original(*args)
            if len(census) - 1 == kill_at:
                die()
            return result

        # Modules that imported the function by name hold their own reference.
        for user in (train, checkpoint, runs, metrics, outputs):
            if getattr(user, name, None) is original:
                patch.setattr(user, name, wrapper)


def fork_run(folder, argv, census_file=None, kill_at=None, phase=None, env=None):
    """train.main(argv) in a forked child working in folder; its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        signal.alarm(CHILD_SECONDS)
        os.chdir(folder)
        out = os.open(folder / f"log-{os.getpid()}.txt", os.O_WRONLY | os.O_CREAT, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        sys.stdout = sys.stderr = os.fdopen(out, "w", buffering=1)
        os.environ.update(env or {})
        census = []
        wrap(pytest.MonkeyPatch(), census, kill_at, phase)
        code = train.main(argv)
        if census_file:
            Path(census_file).write_text(json.dumps(census))
    finally:
        os._exit(code)


def wait(pids):
    """[(exit code or -signal)] of each pid. Once rank 0 is killed, so are the others, as a job's
    container or VM is: left alone, they would wait out --dist-timeout for it."""
    results = []
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        results.append(os.waitstatus_to_exitcode(status))
        if results[0] == -signal.SIGKILL and len(results) == 1:
            for other in pids[1:]:
                os.kill(other, signal.SIGKILL)
    return results


def ranks(world):
    """The environment of each rank of a world of `world` processes on this host (none for one)."""
    if world == 1:
        return [{}]
    common = {"WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    return [{**common, "RANK": str(r), "LOCAL_RANK": str(r)} for r in range(world)]


def start(folder, argv, world, **kw):
    """One run of `world` ranks in folder (rank 0 takes kw: the census, the kill); their exit codes."""
    folder.mkdir(parents=True, exist_ok=True)
    pids = [fork_run(folder, argv, env=env, **(kw if env.get("RANK", "0") == "0" else {})) for env in ranks(world)]
    return wait(pids)


def finished(folder):
    """(summary.json without timings and run name, metrics.jsonl without times) of folder's latest run."""
    run_dir = folder / "outputs" / runs.latest_name(folder / "outputs")
    summary = json.loads((run_dir / outputs.SUMMARY).read_text())
    for key in (*TIMINGS, "run"):
        summary.pop(key, None)
        summary["final"].pop(key, None)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, [{k: v for k, v in r.items() if k != "time"} for r in rows if r["name"] not in TIMINGS], run_dir


def leftovers(run_dir):
    """Torn files still in the finished run's output and checkpoint folders."""
    folders = (run_dir, run_dir.parents[1] / runs.DEFAULT_CHECKPOINTS / run_dir.name)
    return sorted(p.name for folder in folders for p in folder.glob(f"*{outputs.TORN}"))


def differences(folder, whole_summary, whole_rows):
    """(what of folder's completed run differs from the uninterrupted one, [] if nothing; its summary)."""
    summary, rows, run_dir = finished(folder)
    problems = [
        what
        for what, bad in (
            ("weights", summary["weights_sha256"] != whole_summary["weights_sha256"]),
            ("summary.json", summary != whole_summary),
            ("metrics.jsonl", rows != whole_rows),
            (f"torn files {leftovers(run_dir)}", leftovers(run_dir)),
            ("curves.png", not (run_dir / "curves.png").is_file()),
        )
        if bad
    ]
    return problems, summary


def log_of(folder):
    return "\n".join(p.read_text() for p in sorted(folder.glob("log-*.txt")))


@pytest.fixture(scope="module")
def census(tmp_path_factory):
    """{world: (the writes in order, the uninterrupted run)}. One process's census runs in this process:
    what it imports and prepares (matplotlib, oneDNN's kernels) every fork then finds ready."""
    found = {}
    for world in (1, 2):
        folder = tmp_path_factory.mktemp(f"whole-{world}")
        if world == 1:
            writes, here = [], os.getcwd()
            with pytest.MonkeyPatch.context() as patch:
                wrap(patch, writes)
                os.chdir(folder)
                try:
                    assert train.main(RECIPE) == 0
                finally:
                    os.chdir(here)
        else:
            done = start(folder, [*RECIPE, *RANKS], world, census_file=folder / "census.json")
            assert done == [0] * world, log_of(folder)
            writes = json.loads((folder / "census.json").read_text())
        found[world] = writes, finished(folder)
    return found


def test_the_census_lists_every_kind_of_write_in_order(census):
    writes = census[1][0]
    # run.json first, each checkpoint then its rotation, the outputs in finish() last, summary.json the very last.
    assert writes[:2] == ["outputs/latest", "run.json"]
    assert writes[-3:] == ["model.pt", "curves.png", "summary.json"]
    steps = [w for w in writes if w.startswith("step-")]
    assert steps == [f"step-{s:08d}.pt" for s in (2, 4, 6, 8, 10, 12)]
    assert [w for w in writes if w.startswith("rotation")] == [f"rotation after {s}" for s in steps]
    assert "metrics.jsonl: loss" in writes and "metrics.jsonl: test/accuracy" in writes
    assert census[2][0] == writes  # rank 0 of two ranks writes the same files in the same order


# With two ranks (each run a few seconds of process group set-up), rank 0 is killed in the middle of each
# file write it makes, the case that leaves most behind; metrics.jsonl's lines are the one-process case's
# code, which a second rank does not change.
CASES = [(1, phase) for phase in PHASES] + [(2, "during")]


@pytest.mark.parametrize(("world", "phase"), CASES, ids=[f"{w} rank(s), {p}" for w, p in CASES])
def test_a_run_killed_at_any_write_is_completed_by_resume_auto(census, world, phase, tmp_path):
    writes, (whole_summary, whole_rows, _) = census[world]
    argv = [*RECIPE, *(RANKS if world > 1 else [])]
    failures = []
    for k, write in enumerate(writes):
        if world > 1 and write.startswith("metrics.jsonl"):
            continue
        folder = tmp_path / f"{k:03d}"
        codes = start(folder, argv, world, kill_at=k, phase=phase)
        assert codes[0] == -signal.SIGKILL, f"write {k} ({write}): rank 0 was not killed: {codes}"
        resumed = start(folder, [*argv, "--resume", "auto"], world)
        if resumed != [0] * world:
            failures.append(f"write {k} ({write}), {phase}: --resume auto exited {resumed}:\n{log_of(folder)[-2000:]}")
            continue
        problems, summary = differences(folder, whole_summary, whole_rows)
        if problems:
            diff = {k: (v, whole_summary.get(k)) for k, v in summary.items() if v != whole_summary.get(k)}
            failures.append(f"write {k} ({write}), {phase}: {', '.join(problems)} differ: {diff}")
    assert not failures, "\n".join(failures)
