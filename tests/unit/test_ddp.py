"""Data-parallel training: torchrun with 2 processes against one process, on the same global batches,
and two ranks started the way Azure ML starts them (no LOCAL_WORLD_SIZE, no launcher)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ports import free_port

import data
import train

TESTS = Path(__file__).resolve().parents[1]
COMMON = "--fake-data 480 --batch-size 8 --epochs 2 --log-interval 10 --progress off --threads 1"
SRC = Path(train.__file__).parent
# torchrun as `make train-ddp` runs it: through launch.py, which leaves a failing rank's line the last word
TORCHRUN = [sys.executable, str(SRC / "launch.py"), "--standalone", "--nproc-per-node=2"]


def run(tmp_path, name, nproc, script=train.__file__, flags=COMMON, env=None):
    launcher = [sys.executable] if nproc == 1 else TORCHRUN
    where = f"--output-dir {tmp_path / name} --checkpoint-dir {tmp_path / f'c{name}'}"
    r = subprocess.run(
        [*launcher, script, *flags.split(), *where.split()], capture_output=True, text=True, timeout=300, env=env
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def losses(out_dir):
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["value"] for r in rows if r["name"] == "loss"]


def test_two_processes_match_one_process_to_float_tolerance(tmp_path):
    run(tmp_path, "one", 1)
    two = run(tmp_path, "two", 2)
    assert two.count("Finished Training") == 1  # rank 0 alone prints and writes
    a = torch.load(tmp_path / "one" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "model.pt", weights_only=True)
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-5) for k in a)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 12
    assert one == pytest.approx(two, abs=1e-5)
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in (tmp_path / "ctwo").glob("*/step-*.pt")) == ["step-00000060.pt", "step-00000120.pt"]


@pytest.mark.parametrize("problem", ["bad flag", "refused folder"])
def test_under_torchrun_an_error_is_one_line_and_the_ranks_status(problem, tmp_path):
    """Not torchrun's ChildFailedError traceback, and not one line per rank."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.pt").write_bytes(b"an earlier run's weights")
    flags = ["--fake-data", "-5"] if problem == "bad flag" else ["--fake-data", "40", "--output-dir", "out"]
    r = subprocess.run([*TORCHRUN, train.__file__, *flags], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert (r.returncode, r.stdout) == ((2, "") if problem == "bad flag" else (1, ""))
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
    assert ("--fake-data: must be >= 0" if problem == "bad flag" else "out/ already holds results") in r.stderr
    assert (tmp_path / "out" / "model.pt").read_bytes() == b"an earlier run's weights"


def test_ranks_take_disjoint_shares_that_make_up_the_one_process_batch():
    x, y = data.fake_cifar10(21, seed=0)
    order = torch.randperm(21)
    whole = [b[1] for b in data.fast_batches(x, y, 8, order)]
    shares = [[b[1] for b in data.fast_batches(x, y, 8, order, rank, 2)] for rank in (0, 1)]
    for k, batch in enumerate(whole):
        assert torch.equal(torch.cat([shares[0][k], shares[1][k]]), batch)


@pytest.mark.parametrize("flags", ["--pipeline tutorial", "--batch-size 2"])
def test_a_distributed_run_refuses_the_tutorial_pipeline_and_too_small_batches(flags, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(SystemExit) as e:
        train.main(f"--fake-data 40 {flags}".split())
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert ("runs in one process" if "tutorial" in flags else "at least one image per rank (4)") in err


def test_two_ranks_without_data_extract_the_archive_once_and_both_train(tmp_path):
    from cifar_fixture import write_cifar10

    write_cifar10(tmp_path / "data", per_batch=16, archive=True)
    (tmp_path / "scratch").mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path / "scratch")}
    flags = f"--epochs 1 --batch-size 8 --log-interval 5 --no-download --threads 1 --data-dir {tmp_path / 'data'}"
    out = run(tmp_path, "two", 2, script=str(TESTS / "e2e" / "train_on_fixture.py"), flags=flags, env=env)
    assert out.count("data: extracted") == 1  # local rank 0 extracted; rank 1 waited, then read it
    assert "Finished Training" in out and len(losses(tmp_path / "two")) == 2  # 80 images / batch 8 = 10 steps
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["cifar-10-python.tar.gz"]
    made = sorted(p.name for p in (tmp_path / "scratch").iterdir() if p.name.startswith("cifar10-"))
    assert made == ["cifar10-extracted"]  # and no partial extraction left behind


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores to tell cpu_count from cpu_count // 2")
def test_ranks_started_as_azure_ml_does_share_the_cores_without_local_world_size(tmp_path):
    # Azure ML sets MASTER_ADDR/PORT, WORLD_SIZE, RANK, LOCAL_RANK for each process, not LOCAL_WORLD_SIZE.
    base = {k: v for k, v in os.environ.items() if k not in ("LOCAL_WORLD_SIZE", "OMP_NUM_THREADS")}
    base.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    flags = "--fake-data 128 --batch-size 64 --epochs 1 --progress off".split()  # 32 per rank: cores shared
    ranks = [
        subprocess.Popen(
            [sys.executable, train.__file__, *flags, "--output-dir", str(tmp_path / f"o{rank}")],
            env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outs = [p.communicate(timeout=300)[0] for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], outs
    config = json.loads(next(line for line in outs[0].splitlines() if line.startswith("config: "))[8:])
    assert config["ranks_on_node"] == 2
    assert config["threads_per_rank"] == [os.cpu_count() // 2] * 2


def test_a_rank_waits_30_minutes_for_its_peers_by_default(monkeypatch):
    # On a fresh cluster each node pulls the 3.5 GB image on its own: PyTorch's own default, not 2 minutes.
    from datetime import timedelta

    import distributed

    seen = {}

    class Stop(Exception):
        pass

    def init_process_group(backend, timeout):
        seen.update(backend=backend, timeout=timeout)
        raise Stop

    monkeypatch.setattr(distributed.dist, "init_process_group", init_process_group)
    args = train.parse_args([], environ={"WORLD_SIZE": "2"})
    with pytest.raises(Stop):
        distributed.Distributed({"WORLD_SIZE": "2", "RANK": "1"}).init("cpu", args.dist_timeout)
    assert seen == {"backend": "gloo", "timeout": timedelta(minutes=30)}


def test_gloo_gets_the_interface_that_reaches_the_master_where_the_hostname_is_loopback(monkeypatch):
    """Debian-style /etc/hosts maps the hostname to 127.0.1.1: gloo would bind there (pytorch#15592)."""
    import distributed

    routed = [
        name for _, name in socket.if_nameindex() if (distributed.interface_address(name) or "").startswith("127.")
    ]
    assert "lo" in routed or routed  # the loopback interface is found by its address
    real = socket.gethostbyname
    monkeypatch.setattr(socket, "gethostbyname", lambda h: "127.0.1.1" if h == socket.gethostname() else real(h))
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert distributed.gloo_interface(env) is None  # a master on this host: loopback is right
    outward = next(
        (a for _, n in socket.if_nameindex() if (a := distributed.interface_address(n)) and not a.startswith("127.")),
        None,
    )
    if outward is None:
        pytest.skip("this machine has no interface besides loopback")
    name = distributed.gloo_interface({**env, "MASTER_ADDR": outward})
    assert distributed.interface_address(name) == outward
    assert distributed.gloo_interface({**env, "MASTER_ADDR": outward, "GLOO_SOCKET_IFNAME": "eth9"}) is None
    monkeypatch.setattr(socket, "gethostbyname", real)
    if not real(socket.gethostname()).startswith("127."):
        assert distributed.gloo_interface({**env, "MASTER_ADDR": outward}) is None  # gloo's own choice works
