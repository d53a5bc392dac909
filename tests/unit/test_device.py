import os
import re
import subprocess
import sys
from pathlib import Path

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


PINS = dict(device.PORTABLE)


@pytest.mark.parametrize(
    ("numerics", "before", "after", "mode"),
    [
        (None, PINS, PINS, "portable"),  # the image: its ENV's pins, kept
        ("native", PINS, {}, "native"),
        ("portable", {}, PINS, "portable"),  # outside the image
        (None, {}, {}, "native"),
        (None, {"MKL_CBWR": "AVX2,STRICT"}, {"MKL_CBWR": "AVX2,STRICT"}, "custom: MKL_CBWR=AVX2,STRICT"),
    ],
)
def test_numerics_switch_sets_or_drops_the_pins_and_names_the_mode(numerics, before, after, mode):
    environ = {**before, "PATH": "/bin", **({"NUMERICS": numerics} if numerics else {})}
    chosen = device.choose_numerics(environ, isa="AVX512")
    assert chosen == device.Numerics(mode)
    assert {k: v for k, v in environ.items() if k in PINS} == after and environ["PATH"] == "/bin"


def test_a_bad_numerics_value_is_one_error_line_and_changes_nothing():
    environ = {**PINS, "NUMERICS": "fast"}
    chosen = device.choose_numerics(environ, isa="AVX2")
    assert chosen.error.startswith("NUMERICS=fast: use portable or native") and "\n" not in chosen.error
    assert {k: environ[k] for k in PINS} == PINS


@pytest.mark.parametrize("isa", ["AVX", "SSE4.2"])
def test_a_cpu_without_avx2_trains_on_its_own_kernels_and_says_so_in_one_line(isa):
    """ATen's AVX2 pin on such a CPU dies at the first kernel (SIGILL, seen under QEMU -cpu SandyBridge)."""
    environ = dict(PINS)
    chosen = device.choose_numerics(environ, isa=isa)
    assert chosen.mode == "native" and not any(k in environ for k in PINS)
    assert chosen.warning.startswith(f"this CPU's widest vector ISA is {isa}, and portable numerics need AVX2")
    assert "\n" not in chosen.warning


@pytest.mark.parametrize(
    ("flags", "isa"),
    [
        ("sse4_2 fma avx avx2 avx512f avx512dq avx512bw avx512vl", "AVX512"),
        ("sse4_2 fma avx avx2 avx512f", "AVX2"),  # ATen takes AVX-512 only with F, DQ, BW and VL
        ("sse4_2 fma avx avx2", "AVX2"),
        ("sse4_2 avx avx2", "AVX"),  # ATen's AVX2 kernels need FMA too
        ("sse4_2", "SSE4.2"),
    ],
)
def test_vector_isa_follows_atens_rules(flags, isa):
    assert device.vector_isa(flags.split()) == isa


def test_cpuid_agrees_with_the_kernel_on_this_unemulated_cpu():
    found = device.cpu_identity()
    vendor, model, flags = device._from_proc()
    if not vendor:
        pytest.skip("no /proc/cpuinfo")
    assert (found["cpu_vendor"], found["cpu_isa"]) == (vendor, device.vector_isa(flags))
    assert found["cpu_model"] == " ".join(model.split())


SNIFF = """
import torch
import train  # noqa: F401  (train.py's imports, device.py among them, before any kernel)
x = torch.randn(64, 64)
(x @ x).sum()  # MKL's sgemm: MKL_VERBOSE prints its CNR mode
torch.nn.functional.conv2d(torch.randn(4, 3, 32, 32), torch.randn(6, 3, 5, 5))  # oneDNN: ONEDNN_VERBOSE, its ISA
print("ATen", torch.backends.cpu.get_cpu_capability())
"""


@pytest.mark.parametrize("numerics", ["", "native"])
def test_the_switch_acts_before_aten_mkl_and_onednn_read_their_variables(numerics):
    """Pins below this CPU's own (which every x86-64 CI machine has) make each library's choice visible: kept,
    they show; dropped by NUMERICS=native when train.py imports device.py, the libraries never saw them."""
    env = {
        **os.environ,
        "ATEN_CPU_CAPABILITY": "default",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "MKL_CBWR": "COMPATIBLE",
        "MKL_VERBOSE": "1",
        "ONEDNN_VERBOSE": "1",
        "NUMERICS": numerics,
        "PYTHONPATH": str(Path(device.__file__).parent),
    }
    r = subprocess.run([sys.executable, "-c", SNIFF], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    aten = re.search(r"^ATen (.*)$", r.stdout, re.M).group(1)
    cnr = re.search(r"CNR:(\S+)", r.stdout).group(1)
    isa = re.search(r"onednn_verbose,.*,cpu,isa:(.*)$", r.stdout, re.M).group(1)
    if numerics:
        assert aten != "DEFAULT" and cnr == "OFF" and "SSE4.1" not in isa, (aten, cnr, isa)
    else:
        assert (aten, cnr, isa) == ("DEFAULT", "COMPATIBLE", "Intel SSE4.1")
