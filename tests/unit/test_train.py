"""The trainer's CLI end to end, on synthetic and on real-format data, in this process or a child."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from runner import LOSS_LINE, TRAIN_PY, metric, run_main, tutorial_steps
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

import data
import train
from model import Net

TESTS = Path(__file__).resolve().parents[1]


def test_fake_data_run_prints_tutorial_lines_and_writes_parseable_outputs(tmp_path, capsys):
    assert run_main(tmp_path, "--epochs 2 --fake-data 200 --log-interval 10") == 0
    stdout = capsys.readouterr().out
    assert len(LOSS_LINE.findall(stdout)) == 2 * 5
    assert "epoch=1, batch=   10: loss " in stdout and stdout.rstrip().splitlines()[-2] == "Finished Training"
    out = tmp_path / "out"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # `loss`, as the Azure tutorial names it in Studio; the others under their own names
    assert {r["name"] for r in rows} >= {"loss", "test/accuracy", "test/class_accuracy/cat", "train/images_per_sec"}
    assert [r["step"] for r in rows if r["name"] == "loss"] == list(range(10, 101, 10))
    assert all({"name", "value", "step", "epoch", "time"} <= r.keys() for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["fake_data"] == 200 and summary["config"]["normalize"] is False
    assert summary["device"] == "cpu" and 0 <= summary["final"]["test/accuracy"] <= 1 and summary["images_per_sec"] > 0
    assert summary["torch"] == torch.__version__ and len(summary["packages_sha256"]) == 16
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    Net().load_state_dict(torch.load(out / "model.pt", weights_only=True))
    assert not list(out.glob("*.tmp")) and not list((tmp_path / "ckpt").glob("*.tmp"))


def tutorial_losses(root, order, normalize, log_interval, epochs=2):
    """The Azure tutorial's train.py (and the blitz tutorial's with normalize), drawing samples in `order`."""
    steps = [transforms.ToTensor()] + ([transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))] if normalize else [])
    trainset = datasets.CIFAR10(root=root, train=True, download=False, transform=transforms.Compose(steps))
    torch.manual_seed(0)
    net = Net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    logged = []
    for epoch in range(epochs):
        trainloader = DataLoader(trainset, batch_size=4, sampler=order(epoch).tolist(), num_workers=2)
        losses = tutorial_steps(net, optimizer, trainloader)
        # its running_loss: summed from 0.0 in step order, printed and reset every log_interval steps
        for k in range(len(losses) // log_interval):
            logged.append(sum(losses[k * log_interval : (k + 1) * log_interval], 0.0) / log_interval)
    return logged


@pytest.mark.parametrize("normalize", ["", "--normalize"])
def test_default_run_is_bit_identical_to_the_tutorials_dataloader_loop(normalize, cifar_dir, tmp_path):
    assert run_main(tmp_path, f"--epochs 2 --log-interval 5 --threads 1 --no-download {normalize}") == 0
    ours = metric(tmp_path / "out", "loss")
    theirs = tutorial_losses(cifar_dir, lambda e: data.epoch_order(200, 0, e), bool(normalize), 5)
    assert len(ours) == len(theirs) == 2 * 10
    assert ours == theirs  # bit for bit: the same float32 arithmetic in the same order


@pytest.mark.parametrize("cifar_dir", ["folder", "archive"], indirect=True)
def test_real_format_cifar_files_train_through_torchvision(cifar_dir, tmp_path, capsys):
    assert run_main(tmp_path, "--epochs 1 --log-interval 25 --no-download") == 0
    assert len(LOSS_LINE.findall(capsys.readouterr().out)) == 2  # 200 images / batch 4 = 50 steps
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["config"]["fake_data"] == 0


def test_a_run_hashes_each_data_file_once_and_still_catches_corruption(cifar_dir, tmp_path, monkeypatch):
    from torchvision.datasets import utils

    hashed = []

    def counting_md5(path, *args, **kwargs):
        hashed.append(Path(path).name)
        return real_md5(path, *args, **kwargs)

    real_md5 = utils.calculate_md5
    monkeypatch.setattr(utils, "calculate_md5", counting_md5)
    assert run_main(tmp_path, "--epochs 1 --no-download") == 0
    # The six data files (178 MB in CIFAR-10) once each, not three times; torchvision's reader also
    # checks the 158-byte batches.meta on each of the two opens.
    assert sorted(n for n in hashed if n != "batches.meta") == [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    assert "batches.meta" in hashed

    batch = cifar_dir / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:-1])
    assert run_main(tmp_path, "--epochs 1 --no-download --overwrite") == 1  # the one check is the one that counts


def test_missing_data_without_network_is_one_clear_error(tmp_path, capsys):
    assert run_main(tmp_path, "--no-download") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: CIFAR-10 is missing in") and err.count("\n") == 1
    assert "data_batch_1 is not there" in err
    assert not (tmp_path / "out" / "model.pt").exists()


BAD_FLAGS = [
    "--fake-data -5",
    "--checkpoint-every -1",
    "--workers -3 --pipeline tutorial",
    "--epochs 0",
    "--batch-size 0",
    "--lr 0",
    "--lr nan",
    "--momentum 1",
    "--momentum -0.1",
    "--seed -1",
    "--seed 4294967296",
    "--threads -1",
    "--log-interval 0",
    "--dist-timeout 0",
    "--epochs two",
    "--resume no-such-file.pt",
    "--output-dir=",
    "--device tpu",
    "--no-such-flag",
    "--epoch 1",  # a prefix of --epochs: refused, not taken for it
]


@pytest.mark.parametrize("flags", BAD_FLAGS)
def test_each_bad_flag_is_one_line_and_exit_2_before_any_work(flags, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        train.main(flags.split())
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "(see --help)" in err
    assert flags.split()[0].split("=")[0] in err or "unrecognized" in err
    assert list(tmp_path.iterdir()) == []  # nothing written, no folder made


def test_a_bad_flag_in_a_real_process_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, str(TRAIN_PY), *"--fake-data -5".split()], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == "error: argument --fake-data: must be >= 0, got -5 (see --help)\n"


def test_cuda_requested_without_cuda_fails_clearly(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert run_main(tmp_path, "--device cuda --fake-data 40") == 1
    assert "no CUDA device is visible" in capsys.readouterr().err


@pytest.mark.parametrize("source", ["fake", "cifar_files"])
def test_fast_path_and_tutorial_pipeline_give_the_same_loss_trajectory(source, tmp_path, request):
    flags = "--epochs 2 --log-interval 1 --threads 1 " + ("--fake-data 120" if source == "fake" else "--no-download")
    if source == "cifar_files":
        request.getfixturevalue("cifar_dir")
    assert run_main(tmp_path, f"{flags} --pipeline fast", out="fast") == 0
    assert run_main(tmp_path, f"{flags} --pipeline tutorial --overwrite", out="tutorial") == 0
    fast, tutorial = metric(tmp_path / "fast", "loss"), metric(tmp_path / "tutorial", "loss")
    assert len(fast) == len(tutorial) >= 60
    assert fast == tutorial
    summaries = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("fast", "tutorial")]
    assert summaries[0]["weights_sha256"] == summaries[1]["weights_sha256"]


def test_every_sample_once_per_epoch_in_a_fresh_order():
    first, second = data.epoch_order(1000, 0, 0), data.epoch_order(1000, 0, 1)
    assert torch.equal(first.sort().values, torch.arange(1000)) and not torch.equal(first, second)
    assert torch.equal(first, data.epoch_order(1000, 0, 0))  # what a resumed run relies on


def test_progress_bar_keeps_the_tutorial_lines_on_stdout(tmp_path, capsys):
    assert run_main(tmp_path, "--epochs 1 --fake-data 80 --log-interval 10 --progress on") == 0
    captured = capsys.readouterr()
    assert len(LOSS_LINE.findall(captured.out)) == 2 and "epoch 1/1" in captured.err


def test_metrics_go_to_mlflow_where_azure_ml_sets_a_tracking_uri(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local stand-in for Azure ML's tracking server
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    assert run_main(tmp_path, "--epochs 1 --fake-data 80 --log-interval 10") == 0
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = mlflow.tracking.MlflowClient().get_metric_history(runs[0].info.run_id, "loss")
    assert [m.step for m in history] == [10, 20]
    assert history[-1].value == pytest.approx(metric(tmp_path / "out", "loss")[-1])
    assert runs[0].data.params["batch_size"] == "4" and len(runs[0].data.tags["packages_sha256"]) == 16
    assert runs[0].data.params["epochs"] == "1"  # runs that differ only in epochs do not look alike
    # A run shorter than --log-interval still has its loss there, once an epoch
    epoch_loss = mlflow.tracking.MlflowClient().get_metric_history(runs[0].info.run_id, "train/epoch_loss")
    assert [(m.step, m.value) for m in epoch_loss] == [(20, metric(tmp_path / "out", "train/epoch_loss")[0])]


def test_outside_azure_the_offline_run_is_not_used_and_nothing_extra_is_printed(tmp_path, capsys):
    from metrics import tracker

    assert tracker() is None  # no Azure ML or MLflow variable here: no tracker, nothing imported
    assert run_main(tmp_path, "--epochs 1 --fake-data 40") == 0
    assert "Attempted to log" not in capsys.readouterr().out


@pytest.fixture
def shared_tmp():
    """A folder that a uid other than the test's can enter (pytest's tmp_path is private to its owner)."""
    folder = Path(tempfile.mkdtemp(prefix="shared-"))
    folder.chmod(0o755)
    yield folder
    for sub in folder.rglob("*"):
        if sub.is_dir():
            sub.chmod(0o755)  # the read-only data folder, so that it can be removed
    shutil.rmtree(folder, ignore_errors=True)


def test_read_only_data_folder_holding_only_the_archive_trains_and_is_never_written(shared_tmp):
    from cifar_fixture import write_cifar10

    data_dir, work = shared_tmp / "data", shared_tmp / "work"
    write_cifar10(data_dir, per_batch=20, archive=True)
    work.mkdir(mode=0o777)
    work.chmod(0o777)
    data_dir.chmod(0o555)  # as Azure ML v2's ro_mount; root ignores mode bits, so root drops to nobody below
    before = {p.name: p.stat().st_mtime_ns for p in data_dir.iterdir()}
    nobody = {"user": 65534, "group": 65534, "extra_groups": []} if os.geteuid() == 0 else {}
    env = {**os.environ, "TMPDIR": str(work), "HOME": str(work), "MPLCONFIGDIR": str(work / "mpl")}
    flags = f"--epochs 1 --log-interval 25 --no-download --data-dir {data_dir} --progress off"
    r = subprocess.run(
        [sys.executable, str(TESTS / "e2e" / "train_on_fixture.py"), *flags.split()],
        cwd=work, env=env, capture_output=True, text=True, timeout=300, **nobody,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"data: extracted {data_dir / 'cifar-10-python.tar.gz'} into {work / 'cifar10-extracted'}" in r.stdout
    assert len(LOSS_LINE.findall(r.stdout)) == 1  # 100 images / batch 4 = 25 steps
    assert {p.name: p.stat().st_mtime_ns for p in data_dir.iterdir()} == before
    assert data_dir.stat().st_mode & 0o777 == 0o555


def test_the_azure_tutorial_part_4_command_line_trains(cifar_dir, tmp_path, monkeypatch, capsys):
    """Part 4 runs `python train.py --data_path DIR --learning_rate 0.001 --momentum 0.9` unchanged."""
    monkeypatch.chdir(tmp_path)
    flags = f"--data_path {cifar_dir} --learning_rate 0.001 --momentum 0.9 --epochs 1 --progress off --no-download"
    assert train.main(flags.split()) == 0
    summary = json.loads((tmp_path / "outputs" / "latest" / "summary.json").read_text())
    assert summary["config"]["data_dir"] == str(cifar_dir) and summary["config"]["lr"] == 0.001
    assert "Finished Training" in capsys.readouterr().out


def test_a_run_shorter_than_the_log_interval_still_logs_its_loss_and_draws_it(tmp_path):
    """250 steps, fewer than the tutorial's 2000: no `loss`, but train/epoch_loss once an epoch."""
    assert run_main(tmp_path, "--epochs 2 --fake-data 1000") == 0
    assert metric(tmp_path / "out", "loss") == []
    epoch_loss = metric(tmp_path / "out", "train/epoch_loss")
    assert len(epoch_loss) == 2 and all(0 < v < 5 for v in epoch_loss)
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["name"] == "train/epoch_loss"] == [250, 500]
    import matplotlib.image

    plot = matplotlib.image.imread(tmp_path / "out" / "curves.png")
    left = plot[:, : plot.shape[1] // 2, :3]  # the loss panel: a curve is drawn in matplotlib's blue
    assert ((abs(left - torch.tensor([0.12, 0.47, 0.71]).numpy()) < 0.05).all(axis=-1)).sum() > 50


def test_the_epoch_loss_is_the_mean_of_the_epochs_loss_lines(tmp_path):
    assert run_main(tmp_path, "--epochs 1 --fake-data 400 --log-interval 25") == 0  # 100 steps: 4 lines
    lines, epoch = metric(tmp_path / "out", "loss"), metric(tmp_path / "out", "train/epoch_loss")
    assert epoch == [pytest.approx(sum(lines) / len(lines), rel=1e-12)]
