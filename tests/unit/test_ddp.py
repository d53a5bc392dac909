"""Data-parallel training: torchrun with 2 processes against one process, on the same global batches."""

import json
import subprocess
import sys

import pytest
import torch

import data
import train

COMMON = ["--fake-data", "480", "--batch-size", "8", "--epochs", "2", "--log-interval", "10", "--progress", "off"]


def run(tmp_path, name, nproc):
    launcher = (
        [sys.executable]
        if nproc == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    )
    flags = [
        *COMMON,
        "--threads",
        "1",
        "--output-dir",
        str(tmp_path / name),
        "--checkpoint-dir",
        str(tmp_path / f"c{name}"),
    ]
    r = subprocess.run([*launcher, train.__file__, *flags], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_two_processes_match_one_process_to_float_tolerance(tmp_path):
    run(tmp_path, "one", 1)
    two = run(tmp_path, "two", 2)
    assert two.count("Finished Training") == 1  # rank 0 alone prints and writes
    a = torch.load(tmp_path / "one" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "model.pt", weights_only=True)
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-5) for k in a)
    losses = [
        [
            json.loads(line)["value"]
            for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["name"] == "train/loss"
        ]
        for d in ("one", "two")
    ]
    assert len(losses[0]) == len(losses[1]) == 12
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in (tmp_path / "ctwo").iterdir()) == ["step-00000060.pt", "step-00000120.pt"]


def test_ranks_take_disjoint_shares_that_make_up_the_one_process_batch():
    x, y = data.fake_cifar10(21, seed=0)
    order = torch.randperm(21)
    whole = [b[1] for b in data.fast_batches(x, y, 8, order)]
    shares = [[b[1] for b in data.fast_batches(x, y, 8, order, rank, 2)] for rank in (0, 1)]
    for k, batch in enumerate(whole):
        assert torch.equal(torch.cat([shares[0][k], shares[1][k]]), batch)


def test_a_distributed_run_refuses_the_tutorial_pipeline_and_too_small_batches(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    base = ["--fake-data", "40", "--output-dir", str(tmp_path / "o"), "--checkpoint-dir", str(tmp_path / "c")]
    assert train.main([*base, "--pipeline", "tutorial"]) == 1
    assert "--pipeline tutorial runs in one process" in capsys.readouterr().err
    assert train.main([*base, "--batch-size", "2"]) == 1
    assert "at least one image per rank (4 ranks)" in capsys.readouterr().err
