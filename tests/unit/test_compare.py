"""src/compare.py (`make compare`) on the folders real short trainer runs write."""

import json

import pytest

import compare

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


def variant(run, folder, loss_shift=0.0, **summary):
    """A copy of the run's folder as another machine would have written it: summary fields replaced, and
    with loss_shift, its losses and weights no longer the run's."""
    import shutil

    shutil.copytree(run, folder)
    s = json.loads((folder / "summary.json").read_text())
    s.update(summary)
    if loss_shift:
        s["weights_sha256"] = "0" * 64
        lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        for r in lines:
            r["value"] += loss_shift if r["name"] in ("loss", "train/epoch_loss") else 0.0
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (folder / "summary.json").write_text(json.dumps(s))
    return folder


HASWELL = {"cpu_vendor": "GenuineIntel", "cpu_model": "Intel Core Processor (Haswell)", "cpu_isa": "AVX2"}
XEON = {"cpu_vendor": "GenuineIntel", "cpu_model": "Intel Xeon Platinum 8480C", "cpu_isa": "AVX512"}


def test_runs_record_their_cpu_and_numerics(runs):
    s = json.loads((runs["first"] / "summary.json").read_text())
    assert s["numerics"] in ("portable", "native") or s["numerics"].startswith("custom: ")
    assert s["cpu_isa"] in ("AVX512", "AVX2", "AVX", "SSE4.2") and s["cpu_vendor"] and s["cpu_model"]
    assert s["aten_cpu_capability"] and isinstance(s["threads"], int)


def test_the_same_weights_on_another_cpu_are_the_same_run(runs, tmp_path, capsys):
    other = variant(runs["again"], tmp_path / "xeon", **XEON, aten_cpu_capability="AVX2")
    assert compare.main([str(runs["first"]), str(other)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "the same run: bit-identical weights"
    cpu = next(line for line in out if line.startswith("cpu "))
    assert "Intel Xeon Platinum" in cpu and not cpu.endswith(("same", "DIFFERS"))  # another CPU: no difference
    assert next(line for line in out if line.startswith("numerics ")).endswith(" same")


@pytest.mark.parametrize(
    ("a", "b", "says"),
    [
        ({"numerics": "portable"}, {"numerics": "native", **XEON}, "numerics (portable vs native)"),
        ({"threads": 1}, {"threads": 2}, "threads (1 vs 2)"),
        ({"world_size": 1}, {"world_size": 2}, "world size (1 vs 2)"),
        ({**HASWELL}, {"cpu_isa": "AVX", "numerics": "native"}, "ISA below AVX2 (B: AVX; portable numerics need AVX2)"),
        (
            {"numerics": "native", **XEON},
            {"numerics": "native", **HASWELL},
            "numerics native on different CPUs (GenuineIntel AVX512 vs GenuineIntel AVX2)",
        ),
    ],
)
def test_different_weights_name_the_setting_that_explains_them_first(runs, tmp_path, capsys, a, b, says):
    first = variant(runs["first"], tmp_path / "a", **a)
    second = variant(runs["again"], tmp_path / "b", loss_shift=0.01, **b)
    assert compare.main([str(first), str(second)]) == 1
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith(f"differs: {says}, loss") and line.endswith(", weights"), line


def test_different_weights_with_the_same_settings_name_no_cause(runs, tmp_path, capsys):
    """Portable numerics on two AVX2 CPUs with the same threads: different weights are the guarantee broken."""
    second = variant(runs["again"], tmp_path / "b", loss_shift=0.01, **HASWELL)
    assert compare.main([str(runs["first"]), str(second)]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "differs: loss, weights"
