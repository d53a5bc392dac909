"""azure/compare.py (`make compare`) on the folders real short trainer runs write."""

import json

import compare
import pytest

FAST = "--epochs 1 --fake-data 64 --batch-size 8 --log-interval 2"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three trainer runs: seed 1 twice, then seed 2; their output folders."""
    from runner import run_main

    tmp = tmp_path_factory.mktemp("runs")
    for out, seed in (("first", 1), ("again", 1), ("other", 2)):
        assert run_main(tmp, f"{FAST} --seed {seed}", out=out) == 0
    return {name: tmp / name for name in ("first", "again", "other")}


def test_the_same_recipe_twice_is_the_same_run(runs, capsys):
    assert compare.main([str(runs["first"]), str(runs["again"])]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("the same run: bit-identical weights")
    assert [line.split()[0] for line in out[1:4]] == ["image", "code", "packages"]
    assert all(line.endswith("same") for line in out[1:4]), out
    loss = next(line for line in out if line.startswith("loss"))
    assert loss.count("4 points, last") == 2 and loss.endswith(" same")  # 8 batches, logged every 2


def test_another_seed_is_another_run_and_one_line_says_what_differs(runs, capsys):
    assert compare.main([str(runs["first"]), str(runs["other"])]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("differs: seed, loss") and out[-1].endswith("weights")
    seed = next(line for line in out if line.split()[0] == "seed")
    assert seed.split()[1:] == ["1", "2", "DIFFERS"]
    largest = next(line for line in out if line.startswith("  largest diff"))
    shown = float(largest.split()[2])
    a, b = ({r["step"]: r["value"] for r in map(json.loads, (runs[k] / "metrics.jsonl").open()) if r["name"] == "loss"}
            for k in ("first", "other"))  # fmt: skip
    assert shown == pytest.approx(max(abs(a[s] - b[s]) for s in a), rel=1e-2)


def test_runs_too_short_to_log_loss_compare_their_epoch_loss(tmp_path, capsys):
    from runner import run_main

    short = "--epochs 1 --fake-data 64 --batch-size 8"  # 8 steps: no `loss` at the default interval of 2000
    for out, seed in (("a", 1), ("b", 1), ("c", 2)):
        assert run_main(tmp_path, f"{short} --seed {seed}", out=out) == 0
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "DIFFERS" not in "\n".join(out), out
    epoch_loss = next(line for line in out if line.startswith("train/epoch_loss"))
    assert epoch_loss.count("1 points, last") == 2 and epoch_loss.endswith(" same")
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "c")]) == 1
    assert capsys.readouterr().out.splitlines()[-1].startswith("differs: seed, train/epoch_loss")


def test_a_folder_that_holds_no_run_is_one_error_line(runs, tmp_path, capsys):
    assert compare.main([str(runs["first"]), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path} is not a finished run's output folder") and err.count("\n") == 1
