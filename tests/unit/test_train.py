"""The trainer's CLI end to end, on synthetic and on real-format data, in this process or a child."""

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from model import Net

TRAIN_PY = Path(train.__file__)
LOSS_LINE = re.compile(r"^epoch=\d+, batch= *\d+: loss \d+\.\d\d$", re.M)


def run_main(tmp_path, *flags, out="out"):
    base = [
        "--output-dir",
        str(tmp_path / out),
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        "--data-dir",
        str(tmp_path / "data"),
        "--progress",
        "off",
    ]
    return train.main([*base, *flags])


def test_fake_data_run_prints_tutorial_lines_and_writes_parseable_outputs(tmp_path, capsys):
    assert run_main(tmp_path, "--epochs", "2", "--fake-data", "200", "--log-interval", "10") == 0
    stdout = capsys.readouterr().out
    assert len(LOSS_LINE.findall(stdout)) == 2 * 5
    assert "epoch=1, batch=   10: loss " in stdout and stdout.rstrip().splitlines()[-2] == "Finished Training"
    out = tmp_path / "out"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["name"] for r in rows} >= {
        "train/loss",
        "test/accuracy",
        "test/class_accuracy/cat",
        "train/images_per_sec",
    }
    assert all({"name", "value", "step", "epoch", "time"} <= r.keys() for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["fake_data"] == 200 and summary["device"] == "cpu"
    assert 0 <= summary["final"]["test/accuracy"] <= 1 and summary["images_per_sec"] > 0
    assert summary["torch"] == torch.__version__ and len(summary["packages_sha256"]) == 16
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    Net().load_state_dict(torch.load(out / "model.pt", weights_only=True))


def test_real_format_cifar_files_train_through_torchvision(cifar_dir, tmp_path, capsys):
    assert run_main(tmp_path, "--epochs", "1", "--log-interval", "25", "--no-download") == 0
    stdout = capsys.readouterr().out
    assert len(LOSS_LINE.findall(stdout)) == 2  # 200 images / batch 4 = 50 steps
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["config"]["fake_data"] == 0


def test_missing_data_without_network_is_one_clear_error(tmp_path, capsys):
    assert run_main(tmp_path, "--no-download") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: CIFAR-10 is missing or corrupt") and err.count("\n") == 1
    assert not (tmp_path / "out" / "model.pt").exists()


def test_finished_results_are_never_overwritten_unasked(tmp_path, capsys):
    assert run_main(tmp_path, "--epochs", "1", "--fake-data", "40") == 0
    before = (tmp_path / "out" / "summary.json").read_bytes()
    assert run_main(tmp_path, "--epochs", "1", "--fake-data", "40", "--seed", "1") == 1
    assert "already holds results" in capsys.readouterr().err
    assert (tmp_path / "out" / "summary.json").read_bytes() == before
    assert run_main(tmp_path, "--epochs", "1", "--fake-data", "40", "--seed", "1", "--overwrite") == 0


def test_bad_flags_exit_non_zero_with_the_reason(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_main(tmp_path, "--batch-size", "0")
    assert e.value.code == 2 and "--batch-size: must be >= 1, got 0" in capsys.readouterr().err


def test_cuda_requested_without_cuda_fails_clearly(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert run_main(tmp_path, "--device", "cuda", "--fake-data", "40") == 1
    assert "no CUDA device is visible" in capsys.readouterr().err


def weights(path):
    return torch.load(path, weights_only=True)


def test_sigterm_mid_epoch_then_resume_gives_bit_identical_weights(tmp_path):
    common = ["--fake-data", "400", "--epochs", "2", "--log-interval", "1", "--progress", "off", "--threads", "1"]
    assert train.main([*common, "--output-dir", str(tmp_path / "a"), "--checkpoint-dir", str(tmp_path / "ca")]) == 0

    flags = [*common, "--output-dir", str(tmp_path / "b"), "--checkpoint-dir", str(tmp_path / "cb")]
    child = subprocess.Popen([sys.executable, str(TRAIN_PY), *flags], stdout=subprocess.PIPE, text=True)
    for line in child.stdout:
        if line.startswith("epoch=1, batch=   30:"):
            child.send_signal(signal.SIGTERM)
            break
    rest = child.stdout.read()
    assert child.wait(timeout=60) == train.EXIT_PREEMPTED
    assert "checkpoint (SIGTERM)" in rest and "--resume auto" in rest
    assert not (tmp_path / "b" / "model.pt").exists()

    resumed = subprocess.run(
        [sys.executable, str(TRAIN_PY), *flags, "--resume", "auto"], capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "Finished Training" in resumed.stdout
    a, b = weights(tmp_path / "a" / "model.pt"), weights(tmp_path / "b" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_of_another_recipe_is_refused(tmp_path, capsys):
    assert run_main(tmp_path, "--epochs", "1", "--fake-data", "40") == 0
    ckpt = sorted((tmp_path / "ckpt").glob("step-*.pt"))[-1]
    assert run_main(tmp_path, "--fake-data", "40", "--batch-size", "8", "--resume", str(ckpt), out="o2") == 1
    err = capsys.readouterr().err
    assert "another recipe: batch_size=4 (this run: 8)" in err and "--checkpoint-dir" in err


def test_unreadable_or_missing_checkpoint_is_refused(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert run_main(tmp_path, "--fake-data", "40", "--resume", str(bad)) == 1
    assert "is not a readable checkpoint" in capsys.readouterr().err
    assert run_main(tmp_path, "--fake-data", "40", "--resume", str(tmp_path / "nope.pt")) == 1
    assert "no such file" in capsys.readouterr().err


def logged_losses(out_dir):
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["value"] for r in rows if r["name"] == "train/loss"]


@pytest.mark.parametrize("source", ["fake", "cifar_files"])
def test_fast_path_and_tutorial_pipeline_give_the_same_loss_trajectory(source, tmp_path, request):
    flags = ["--epochs", "2", "--log-interval", "1", "--threads", "1"]
    flags += ["--fake-data", "120"] if source == "fake" else ["--no-download"]
    if source == "cifar_files":
        request.getfixturevalue("cifar_dir")
    assert run_main(tmp_path, *flags, "--pipeline", "fast", out="fast") == 0
    assert run_main(tmp_path, *flags, "--pipeline", "tutorial", "--overwrite", out="tutorial") == 0
    fast, tutorial = logged_losses(tmp_path / "fast"), logged_losses(tmp_path / "tutorial")
    assert len(fast) == len(tutorial) >= 60
    assert fast == tutorial
    summaries = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("fast", "tutorial")]
    assert summaries[0]["weights_sha256"] == summaries[1]["weights_sha256"]


def test_every_sample_once_per_epoch_in_a_fresh_order():
    first, second = train.epoch_order(1000, 0, 0), train.epoch_order(1000, 0, 1)
    assert torch.equal(first.sort().values, torch.arange(1000)) and not torch.equal(first, second)
    assert torch.equal(first, train.epoch_order(1000, 0, 0))  # what a resumed run relies on


def test_progress_bar_keeps_the_tutorial_lines_on_stdout(tmp_path, capsys):
    assert run_main(tmp_path, "--epochs", "1", "--fake-data", "80", "--log-interval", "10", "--progress", "on") == 0
    captured = capsys.readouterr()
    assert len(LOSS_LINE.findall(captured.out)) == 2 and "epoch 1/1" in captured.err


def test_metrics_go_to_mlflow_where_azure_ml_sets_a_tracking_uri(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local stand-in for Azure ML's tracking server
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    assert run_main(tmp_path, "--epochs", "1", "--fake-data", "80", "--log-interval", "10") == 0
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = mlflow.tracking.MlflowClient().get_metric_history(runs[0].info.run_id, "train/loss")
    assert [m.step for m in history] == [10, 20]
    assert history[-1].value == pytest.approx(logged_losses(tmp_path / "out")[-1])
    assert runs[0].data.tags["batch_size"] == "4" and len(runs[0].data.tags["packages_sha256"]) == 16


def test_outside_azure_the_offline_run_is_not_used_and_nothing_extra_is_printed(tmp_path, capsys):
    from metrics import azureml_run

    assert azureml_run() is None  # azureml-core's real Run.get_context() is offline here
    assert run_main(tmp_path, "--epochs", "1", "--fake-data", "40") == 0
    assert "Attempted to log" not in capsys.readouterr().out
