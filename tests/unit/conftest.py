import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
SRC = TESTS.parent / "src"
sys.path.insert(0, str(TESTS))  # cifar_fixture, shared with the end-to-end tests


@pytest.fixture
def cifar_dir(request, tmp_path, monkeypatch):
    """A small CIFAR-10 on disk in the real format, with torchvision expecting its md5s.

    Extracted (cifar-10-batches-py/) by default; `@pytest.mark.parametrize("cifar_dir", ["archive"],
    indirect=True)` gives a folder holding only cifar-10-python.tar.gz, as a mounted data set may.
    No test may download: the URL points at a closed port. TMPDIR (where an archive is extracted) is the test's own.
    """
    from torchvision import datasets

    from cifar_fixture import expect_checksums, write_cifar10

    root = tmp_path / "data"
    sums = write_cifar10(root, per_batch=40, archive=getattr(request, "param", "folder") == "archive")
    for attr in ("train_list", "test_list", "meta", "tgz_md5", "url"):
        monkeypatch.setattr(datasets.CIFAR10, attr, getattr(datasets.CIFAR10, attr))
    expect_checksums(datasets.CIFAR10, sums)
    datasets.CIFAR10.url = "http://127.0.0.1:9/cifar-10-python.tar.gz"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    return root


@pytest.fixture
def submit_source(tmp_path, monkeypatch):
    """A copy of src/ as submit.py sees it, with the digest an image built from it would carry,
    and no Azure configuration or login from the machine running the tests."""
    import shutil

    import aml
    import submit
    from provenance import source_digest

    copy = tmp_path / "src"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
    baked = tmp_path / "src.sha256"
    baked.write_text(source_digest(copy) + "\n")
    monkeypatch.setattr(submit, "SOURCE", copy)
    monkeypatch.setattr(submit, "IMAGE_DIGEST_FILE", baked)
    # No workspace, login or make variable from the machine running the tests
    for var in (*aml.WORKSPACE_VARS, *aml.SP_VARS, *submit.SETTINGS, "AML_TERMINAL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return copy


@pytest.fixture
def source(submit_source, monkeypatch, request):
    """submit_source, with submit.py using the SDK the test module names (its SDK = "v1" or "v2")."""
    import submit

    monkeypatch.setattr(submit, "SDK", request.module.SDK)
    return submit_source


@pytest.fixture
def upload_folders(tmp_path, monkeypatch):
    """(./data holding a stand-in archive, what the rehearsal's datastore was handed) for `make upload-data`, both
    SDKs: DATA_DIR names the folder. The datastore's blob client runs in a container beside Azurite
    (rehearsal/datastore.py, tests/e2e/test_submit_sequence.py), which these images cannot start: what
    datastore.put is given is recorded instead, [(paths, prefix)]."""
    import datastore

    data, handed = tmp_path / "data", []
    data.mkdir()
    (data / "cifar-10-python.tar.gz").write_bytes(b"stands in for the archive")
    monkeypatch.setenv("DATA_DIR", str(data))
    monkeypatch.setattr(datastore, "put", lambda paths, prefix: handed.append((paths, prefix)) or ["uploaded"])
    return data, handed
