import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))  # cifar_fixture, shared with the end-to-end tests


@pytest.fixture
def cifar_dir(tmp_path, monkeypatch):
    """A small CIFAR-10 on disk in the real format, with torchvision expecting its md5s."""
    from torchvision import datasets

    from cifar_fixture import expect_checksums, write_cifar10

    root = tmp_path / "data"
    sums = write_cifar10(root, per_batch=40)
    for attr in ("train_list", "test_list", "meta", "tgz_md5"):
        monkeypatch.setattr(datasets.CIFAR10, attr, getattr(datasets.CIFAR10, attr))
    expect_checksums(datasets.CIFAR10, sums)
    return root
