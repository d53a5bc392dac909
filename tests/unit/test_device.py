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


ARCHES = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]  # torch 2.14.1+cu130's get_arch_list()
TOO_OLD = "The NVIDIA driver on your system is too old (found version 12040). Please update your GPU driver"


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """No NVIDIA GPU and no Azure ML job until a test adds them: /dev and the driver's file live in tmp_path."""
    (tmp_path / "dev").mkdir()
    monkeypatch.setattr(device, "DEV", str(tmp_path / "dev"))
    monkeypatch.setattr(device, "DRIVER_VERSION", str(tmp_path / "version"))
    monkeypatch.delenv("AZUREML_RUN_ID", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)  # where a run that got past the device check would write
    return tmp_path


def sees(monkeypatch, name, capability, arches=ARCHES):
    """torch.cuda describing one GPU it sees, as the CUDA 13 build of torch does on that GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: arches)


def old_driver(machine, monkeypatch, version="550.54.15"):
    """A GPU passed into the container (its nodes) whose host driver is older than CUDA 13 needs."""
    for node in ("nvidiactl", "nvidia0", "nvidia-uvm"):
        (machine / "dev" / node).write_text("")
    (machine / "version").write_text(f"NVRM version: NVIDIA UNIX x86_64 Kernel Module  {version}  Thu Feb 22 2024\n")

    def init():
        raise RuntimeError(TOO_OLD)

    monkeypatch.setattr(torch.cuda, "init", init)


def run_main(argv, capsys):
    """The trainer's own entry point: (exit status, stdout, stderr)."""
    import train

    code = train.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_the_images_torch_has_no_kernels_for_a_v100():
    """What the rest of these tests assume of the image's torch (docs/runtime.md, 'GPUs')."""
    if not torch.version.cuda:
        pytest.skip("a CPU-only torch")
    assert "sm_75" in torch.cuda.get_arch_list()
    assert not any(device.runs_on(arch, (7, 0)) for arch in torch.cuda.get_arch_list())


@pytest.mark.parametrize("flag", ["auto", "cuda"])
@pytest.mark.parametrize("azure", [False, True])
def test_a_v100_is_one_error_line_naming_gpu_capability_arches_and_fix(machine, monkeypatch, capsys, flag, azure):
    """Not a crash at the first kernel ("no kernel image is available"): torch sees the GPU, so auto means it."""
    if azure:
        monkeypatch.setenv("AZUREML_RUN_ID", "job_1")
    sees(monkeypatch, "Tesla V100-PCIE-16GB", (7, 0))
    code, out, err = run_main(["--device", flag], capsys)
    assert code == 1 and out == ""
    assert err == (
        "error: GPU 0 is Tesla V100-PCIE-16GB, compute capability 7.0 (sm_70), and torch "
        f"{torch.__version__} has kernels for sm_75 sm_80 sm_86 sm_90 sm_100 sm_120 only: choose a VM size with "
        "a newer GPU (docs/runtime.md, 'GPUs') or pass --device cpu\n"
    )


@pytest.mark.parametrize(
    ("name", "capability"),
    [("Tesla T4", (7, 5)), ("NVIDIA A10-4Q", (8, 6)), ("NVIDIA A100 80GB PCIe", (8, 0)), ("NVIDIA L4", (8, 9)),
     ("NVIDIA H100 NVL", (9, 0)), ("NVIDIA H200", (9, 0))],
)  # fmt: skip
def test_a_gpu_this_torch_has_kernels_for_is_used(machine, monkeypatch, name, capability):
    monkeypatch.setenv("AZUREML_RUN_ID", "job_1")
    sees(monkeypatch, name, capability)
    assert device.choose_device("auto") == ("cuda", None)


@pytest.mark.parametrize(
    ("arch", "capability", "runs"),
    [
        ("sm_86", (8, 9), True),  # a cubin runs on later minors of its major
        ("sm_80", (9, 0), False),  # not on another major
        ("sm_75", (7, 0), False),  # nor on an earlier minor
        ("compute_80", (9, 0), True),  # PTX: the driver compiles it for any later GPU
        ("compute_75", (7, 0), False),
        ("sm_90a", (9, 0), True),  # "a": that chip only
        ("sm_90a", (10, 0), False),
        ("sm_120", (12, 1), True),
    ],
)
def test_which_arch_runs_on_which_capability(arch, capability, runs):
    assert device.runs_on(arch, capability) is runs


def test_a_v100_runs_where_torch_carries_ptx_it_can_compile(machine, monkeypatch):
    sees(monkeypatch, "Tesla V100-SXM2-32GB", (7, 0), arches=["sm_70", "compute_70"])  # the CUDA 12.6 build
    assert device.choose_device("auto") == ("cuda", None)
    sees(monkeypatch, "Tesla V100-SXM2-32GB", (7, 0), arches=["sm_60", "compute_60"])
    assert device.choose_device("auto") == ("cuda", None)


def test_an_old_driver_in_an_azure_ml_job_is_one_error_line_not_a_cpu_run(machine, monkeypatch, capsys):
    """Azure ML's job then trains on the CPU for hours and ends "Completed" on a GPU VM it pays for."""
    monkeypatch.setenv("AZUREML_RUN_ID", "job_1")
    old_driver(machine, monkeypatch)
    code, out, err = run_main(["--device", "auto"], capsys)
    assert code == 1 and out == ""
    assert err == (
        f"error: the NVIDIA driver here is 550.54.15, and torch {torch.__version__} is built for CUDA "
        f"{torch.version.cuda}, which needs driver {device.MIN_DRIVER[torch.version.cuda.split('.')[0]]} or newer: "
        "update the host's NVIDIA driver, or pass --device cpu (in an Azure ML job, --device auto does not fall "
        "back to the CPU)\n"
    )


def test_an_old_driver_with_device_cuda_is_the_same_line_anywhere(machine, monkeypatch):
    old_driver(machine, monkeypatch)
    with pytest.raises(device.TrainerError, match=r"^the NVIDIA driver here is 550\.54\.15, .*--device cpu$"):
        device.choose_device("cuda")


def test_an_old_driver_outside_azure_trains_on_the_cpu_and_says_why_in_one_line(machine, monkeypatch):
    old_driver(machine, monkeypatch)
    name, warning = device.choose_device("auto")
    assert name == "cpu" and "\n" not in warning
    assert warning.startswith("the NVIDIA driver here is 550.54.15") and warning.endswith("training on the CPU)")


def test_a_driver_that_is_new_enough_gives_torchs_own_reason(machine, monkeypatch):
    old_driver(machine, monkeypatch, version="580.95.05")
    name, warning = device.choose_device("auto")
    assert name == "cpu" and f"({TOO_OLD}; driver 580.95.05)" in warning


def test_a_driver_but_no_gpu_passed_into_the_container_is_a_cpu_job_on_a_gpu_host(machine, monkeypatch):
    """A GPU VM's job gets the device nodes; without them (a rehearsal on a laptop with an NVIDIA driver) the
    job is a CPU job: it says so and trains, in an Azure ML job too. --device cuda still stops."""
    (machine / "version").write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.95.05  Tue Sep 23 2025\n")
    assert device.choose_device("auto")[1].startswith("an NVIDIA driver (580.95.05) is loaded on this machine")
    monkeypatch.setenv("AZUREML_RUN_ID", "job_1")
    name, warning = device.choose_device("auto")
    assert name == "cpu" and "no GPU was passed into this container" in warning
    with pytest.raises(device.TrainerError, match="no GPU was passed into this container"):
        device.choose_device("cuda")


def test_device_cpu_is_the_users_choice_even_in_an_azure_ml_job_and_asks_cuda_nothing(machine, monkeypatch):
    monkeypatch.setenv("AZUREML_RUN_ID", "job_1")
    old_driver(machine, monkeypatch)

    def never():
        raise AssertionError("CUDA asked")

    monkeypatch.setattr(torch.cuda, "is_available", never)
    assert device.choose_device("cpu") == ("cpu", None)


def test_no_nvidia_gpu_at_all_is_the_cpu_without_a_word(machine, monkeypatch):
    monkeypatch.setenv("AZUREML_RUN_ID", "job_1")  # a CPU VM size
    assert device.choose_device("auto") == ("cpu", None)
    with pytest.raises(device.TrainerError, match="^--device cuda but no CUDA device is visible"):
        device.choose_device("cuda")


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
