import sys

import pytest
import torch

import device
from provenance import packages_fingerprint


@pytest.fixture(autouse=True)
def keep_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("requested", "batch", "local_world", "expected"),
    [(3, 4, 1, 3), (0, 4, 1, 1), (0, 31, 1, 1), (0, 32, 1, 8), (0, 512, 2, 4), (0, 512, 16, 1)],
)
def test_threads_one_for_tiny_batches_else_the_process_share_of_the_cores(requested, batch, local_world, expected):
    assert device.configure_cpu(requested, batch, local_world) == expected
    assert torch.get_num_threads() == expected


def test_omp_num_threads_wins_over_the_batch_rule(monkeypatch):
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert device.configure_cpu(0, 4) == 2


@pytest.mark.parametrize(("requested", "expected"), [(0, 4), (3, 3)])
def test_threads_for_a_stretch_of_larger_batches_then_back(requested, expected):
    device.configure_cpu(requested, 4, local_world=2)
    before = torch.get_num_threads()
    with device.threads_for(requested, 1000, local_world=2):
        assert torch.get_num_threads() == expected  # this rank's share of the 8 cores, or --threads
    assert torch.get_num_threads() == before


def test_package_fingerprint_changes_when_a_package_version_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    (tmp_path / "torch-2.14.1.dist-info").mkdir()
    (tmp_path / "numpy-2.3.2.dist-info").mkdir()
    first = packages_fingerprint()
    assert packages_fingerprint() == first
    (tmp_path / "numpy-2.3.2.dist-info").rename(tmp_path / "numpy-2.3.3.dist-info")
    assert packages_fingerprint() != first


def test_the_real_environment_has_a_fingerprint():
    assert len(packages_fingerprint()) == 16


def test_a_gpu_that_torch_cannot_use_is_said_in_one_line_not_skipped_silently(tmp_path, capsys):
    """An NVIDIA device node but no usable CUDA (here: no GPU at all; on Azure: a driver older than
    CUDA 13 wants). --device auto then trains on the CPU, and says why."""
    if torch.cuda.is_available():
        pytest.skip("this machine's CUDA works")
    node = tmp_path / "nvidia0"
    node.write_text("")
    why = device.unusable_gpu("auto", nodes=(str(node),))
    assert why.startswith(f"an NVIDIA GPU is here but torch {torch.__version__} (CUDA {torch.version.cuda})")
    assert "training on the CPU" in why and "--device cpu" in why and "\n" not in why
    assert device.unusable_gpu("cpu", nodes=(str(node),)) is None  # asked for the CPU: nothing to say
    assert device.unusable_gpu("auto", nodes=(str(tmp_path / "absent"),)) is None  # no GPU: nothing to say


def test_the_driver_version_is_read_as_nvidia_writes_it(tmp_path):
    proc = tmp_path / "version"
    proc.write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.95.05  Tue Sep 23 09:53:07 UTC 2025\n"
        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
    )
    found = device.cuda_versions(proc)
    assert found["nvidia_driver"] == "580.95.05"
    assert found.get("cuda_runtime") == torch.version.cuda  # None on a CPU-only torch: then absent
    assert "nvidia_driver" not in device.cuda_versions(tmp_path / "absent")
