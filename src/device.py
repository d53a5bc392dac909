"""The device a run trains on, decided once: CPU or CUDA, its math, and torch's CPU threads.

The rest of the code reads Device and never writes "cuda" itself (nanoGPT's rule).

Threads: how many torch uses, chosen once per run.

At the tutorial's batch of 4 an operation is a few microseconds of arithmetic, so handing it to a
second thread costs more than it saves; and on a machine shared with other work, every parallel
region waits for whichever thread the kernel has descheduled (docs/perf.md, "Start-up, exit, threads and
the allocator"). One thread is also the setting under which the
trainer's losses are bit-identical to the tutorial's for the same samples. Large batches get the cores.

Numerics: which kernels torch's libraries take on this CPU (docs/runtime.md, "The same weights on any
x86-64 CPU"). The image's ENV pins them to what every AVX2 CPU runs alike; NUMERICS=native drops the pins
for the machine's fastest kernels. This module applies NUMERICS when imported, before torch's first kernel:
ATen reads ATEN_CPU_CAPABILITY at its first dispatch, MKL reads MKL_CBWR at its first call and oneDNN
ONEDNN_MAX_CPU_ISA at its first primitive, and importing torch does none of these
(tests/unit/test_device.py checks it for train.py's imports).
"""

import ctypes
import mmap
import os
import platform
import re
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from errors import TrainerError

SMALL_BATCH = 32  # per process; below this, one thread
DEV = "/dev"  # where the NVIDIA container runtime puts a GPU's nodes: nvidiactl, nvidia0, nvidia-uvm
DRIVER_VERSION = "/proc/driver/nvidia/version"  # the host driver's, readable in a container given no GPU too
# The oldest Linux driver each CUDA major runs on (NVIDIA, "CUDA Compatibility", minor version compatibility).
MIN_DRIVER = {"12": 525, "13": 580}
# The pins (docker/Dockerfile sets them): ATen's and oneDNN's kernels capped at AVX2, MKL on its code path for
# "Intel and Intel-compatible" CPUs. With them every AVX2 CPU, Intel or AMD, AVX2 or AVX-512, computes the
# same bits; ATen's AVX2 pin on a CPU without AVX2 would die at the first kernel (SIGILL).
PORTABLE = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE"}
MODES = ("portable", "native")
DOCS = "docs/runtime.md, 'The same weights on any x86-64 CPU'"


@dataclass
class Device:
    name: str  # "cpu", "cuda" or "cuda:<local rank>"
    autocast: object  # bf16 autocast on CUDA, else a no-op
    memory_format: torch.memory_format


def cpu_threads(requested, batch_size, local_world=1):
    """Threads for one process: `requested` if > 0; else OMP_NUM_THREADS if set (torch already
    read it); else 1 for batches under SMALL_BATCH, else this process's share of the usable cores."""
    if requested > 0:
        return requested
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    if batch_size < SMALL_BATCH:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // local_world)


def configure_cpu(requested, batch_size, local_world=1):
    """Set torch's thread count for this run (see cpu_threads) and return it."""
    threads = cpu_threads(requested, batch_size, local_world)
    torch.set_num_threads(threads)
    return threads


@contextmanager
def threads_for(requested, batch_size, local_world=1):
    """torch's threads for a stretch of work at another batch size (the test set's evaluation in
    batches of 1000 gets the cores where training at batch 4 has one), then back as they were."""
    before = torch.get_num_threads()
    torch.set_num_threads(cpu_threads(requested, batch_size, local_world))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def setup_device(args, ddp):
    """Device, process group and CPU threads, decided once; the rest of the code only reads Device."""
    if NUMERICS.error:
        raise TrainerError(NUMERICS.error)
    if NUMERICS.warning and ddp.main:
        print(f"warning: {NUMERICS.warning}", file=sys.stderr)
    name, warning = choose_device(args.device)
    if warning and ddp.main:
        print(f"warning: {warning}")
    if ddp.on and name == "cuda":
        name = f"cuda:{ddp.local_rank}"
        torch.cuda.set_device(name)
    ddp.init(name, args.dist_timeout)  # also counts the ranks on this node
    # One thread at the tutorial's tiny batches; else this rank's share of the node's cores.
    configure_cpu(args.threads, -(-args.batch_size // ddp.world), ddp.local_world)
    if name == "cpu":  # the tutorial's float32 math
        return Device(name, nullcontext(), torch.contiguous_format)
    return Device(name, torch.autocast("cuda", dtype=torch.bfloat16), torch.channels_last)


def cuda_versions(driver_file=DRIVER_VERSION):
    """The CUDA runtime torch was built with and the host's NVIDIA driver, where there are any."""
    found = {"cuda_runtime": torch.version.cuda} if torch.version.cuda else {}
    try:
        m = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d[\d.]*)", Path(driver_file).read_text())
    except OSError:
        m = None
    if m:
        found["nvidia_driver"] = m.group(1)
    return found


def choose_device(requested, environ=os.environ):
    """("cuda" or "cpu", a warning or None) for --device. A GPU torch sees but has no kernels for stops the run
    (--device auto means the GPU torch sees); one torch cannot see (an old driver) stops --device cuda, and
    --device auto inside an Azure ML job, which asked for a GPU VM; elsewhere auto trains on the CPU and says why.
    --device cpu is the user's choice everywhere: CUDA is never asked."""
    if requested == "cpu":
        return "cpu", None
    if torch.cuda.is_available():
        no_kernels = gpu_without_kernels()
        if no_kernels:
            raise TrainerError(no_kernels)
        return "cuda", None
    hidden = hidden_gpu()
    if requested == "cuda":
        raise TrainerError(hidden or "--device cuda but no CUDA device is visible: use --device cpu or auto")
    # A GPU VM's job gets the device nodes; a driver without them is a CPU job on a GPU host (such as
    # `make submit COMPUTE=local` on a laptop with an NVIDIA driver): that one may train on the CPU.
    if hidden and environ.get("AZUREML_RUN_ID") and any(Path(DEV).glob("nvidia*")):
        raise TrainerError(f"{hidden} (in an Azure ML job, --device auto does not fall back to the CPU)")
    return "cpu", (f"{hidden} (--device auto: training on the CPU)" if hidden else None)


def runs_on(arch, capability):
    """Whether code torch was built with (an entry of torch.cuda.get_arch_list()) runs on a GPU of this
    (major, minor) capability. CUDA C++ Programming Guide, "Binary Compatibility": a cubin for X.y runs on X.z,
    z >= y ("sm_90a": on 9.0 only); PTX ("compute_XY") is compiled by the driver for any later GPU."""
    kind, _, number = arch.partition("_")
    built = (int(number.rstrip("af")) // 10, int(number.rstrip("af")) % 10)
    if kind == "compute":
        return capability >= built
    if number.endswith("a"):
        return capability == built
    return capability[0] == built[0] and capability[1] >= built[1]


def gpu_without_kernels():
    """Why a GPU torch sees cannot run this torch's kernels (a V100, sm_70, under the CUDA 13 build), or None.
    Unchecked, the first kernel fails with "no kernel image is available for execution on the device"."""
    arches = torch.cuda.get_arch_list()
    for index in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(index)
        if arches and not any(runs_on(arch, (major, minor)) for arch in arches):
            return (
                f"GPU {index} is {torch.cuda.get_device_name(index)}, compute capability {major}.{minor} "
                f"(sm_{major}{minor}), and torch {torch.__version__} has kernels for {' '.join(arches)} only: "
                f"choose a VM size with a newer GPU (docs/runtime.md, 'GPUs') or pass --device cpu"
            )
    return None


def hidden_gpu():
    """Why an NVIDIA GPU that is here (a /dev/nvidia* node, or the driver's version file) is one torch does not
    see, so that no run falls back to the CPU without a word; None where there is no NVIDIA GPU."""
    nodes = sorted(Path(DEV).glob("nvidia*"))
    if not nodes and not Path(DRIVER_VERSION).exists():
        return None
    driver = cuda_versions(DRIVER_VERSION).get("nvidia_driver")
    cuda = torch.version.cuda
    if not nodes:
        return (
            f"an NVIDIA driver ({driver or 'version unknown'}) is loaded on this machine but no GPU was passed into "
            f"this container (no {DEV}/nvidia*): start it with the GPUs (docker run --gpus all) or pass --device cpu"
        )
    need = MIN_DRIVER.get(cuda.split(".")[0]) if cuda else None
    if need and driver and int(driver.split(".")[0]) < need:
        return (
            f"the NVIDIA driver here is {driver}, and torch {torch.__version__} is built for CUDA {cuda}, which "
            f"needs driver {need} or newer: update the host's NVIDIA driver, or pass --device cpu"
        )
    try:
        torch.cuda.init()
        reason = "torch sees no CUDA device"
    except Exception as e:  # torch says why: "Torch not compiled with CUDA enabled", "no CUDA-capable device ..."
        reason = " ".join(str(e).split())[:200]
    return (
        f"an NVIDIA GPU is here but torch {torch.__version__} (CUDA {cuda}) cannot use it ({reason}; "
        f"driver {driver or 'unknown'}): give the machine a driver for CUDA {cuda}, or pass --device cpu"
    )


# CPUID, called directly: under emulation (QEMU, Rosetta) it answers for the emulated CPU, where /proc/cpuinfo
# is the host kernel's. x86-64 System V: cpuid(leaf=edi, subleaf=esi, out=rdx) -> out[0:4] = eax, ebx, ecx, edx.
_CPUID_CODE = bytes.fromhex(
    "53"  # push rbx (callee-saved; cpuid writes it)
    "89f8"  # mov eax, edi
    "89f1"  # mov ecx, esi
    "4989d0"  # mov r8, rdx
    "0fa2"  # cpuid
    "418900"  # mov [r8], eax
    "41895804"  # mov [r8+4], ebx
    "41894808"  # mov [r8+8], ecx
    "4189500c"  # mov [r8+12], edx
    "5b"  # pop rbx
    "c3"  # ret
)
# Each vector feature's (leaf, subleaf, register 0-3 for eax-edx, bit): Intel SDM vol. 2A, CPUID.
_FEATURES = {
    "sse4_2": (1, 0, 2, 20),
    "fma": (1, 0, 2, 12),
    "avx": (1, 0, 2, 28),
    "avx2": (7, 0, 1, 5),
    "avx512f": (7, 0, 1, 16),
    "avx512dq": (7, 0, 1, 17),
    "avx512bw": (7, 0, 1, 30),
    "avx512vl": (7, 0, 1, 31),
    "avx512_vnni": (7, 0, 2, 11),
    "avx512_bf16": (7, 1, 0, 5),
    "avx512_fp16": (7, 0, 3, 23),
    "amx_tile": (7, 0, 3, 24),
}


def _cpuid_reader():
    """A function (leaf, subleaf) -> (eax, ebx, ecx, edx), or None where no code can be made executable."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, AttributeError):  # W^X policies (SELinux execmem, PaX) refuse such a page
        return None
    page.write(_CPUID_CODE)
    call = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))(
        ctypes.addressof(ctypes.c_char.from_buffer(page))
    )

    def cpuid(leaf, subleaf=0):
        out = (ctypes.c_uint32 * 4)()
        call(leaf, subleaf, out)
        return tuple(out)

    cpuid.page = page  # lives as long as the function
    return cpuid


def _from_cpuid(cpuid):
    top, ebx, ecx, edx = cpuid(0)
    vendor = b"".join(r.to_bytes(4, "little") for r in (ebx, edx, ecx)).decode("ascii", "replace")
    leaves = {(leaf, sub): cpuid(leaf, sub) for leaf, sub in ((1, 0), (7, 0), (7, 1)) if leaf <= top}
    none = (0, 0, 0, 0)
    flags = [name for name, (leaf, sub, reg, bit) in _FEATURES.items() if leaves.get((leaf, sub), none)[reg] >> bit & 1]
    model = ""
    if cpuid(0x80000000)[0] >= 0x80000004:
        raw = b"".join(r.to_bytes(4, "little") for leaf in (0x80000002, 0x80000003, 0x80000004) for r in cpuid(leaf))
        model = " ".join(raw.rstrip(b"\0").decode("ascii", "replace").split())
    return vendor, model, flags


def _from_proc(path="/proc/cpuinfo"):
    try:
        text = Path(path).read_text()
    except OSError:
        text = ""

    def field(name):
        return next(iter(re.findall(rf"^{name}\s*:\s*(.*)$", text, re.M)), "")

    present = set(field("flags").split())
    return field("vendor_id"), field("model name"), [name for name in _FEATURES if name in present]


def vector_isa(flags):
    """The widest vector ISA of these flags, by the rules ATen's dispatch uses (aten/src/ATen/cpu/Utils.cpp)."""
    have = set(flags)
    if {"avx512f", "avx512dq", "avx512bw", "avx512vl"} <= have:
        return "AVX512"
    if {"avx2", "fma"} <= have:
        return "AVX2"
    return "AVX" if "avx" in have else ("SSE4.2" if "sse4_2" in have else "below SSE4.2")


@cache
def cpu_identity():
    """{cpu_vendor, cpu_model, cpu_isa, cpu_flags} of the CPU this process runs on, as CPUID tells it (the
    emulated CPU under QEMU or Rosetta); from /proc/cpuinfo where CPUID cannot be called; on another
    architecture (arm64) its name stands for the ISA."""
    cpuid = _cpuid_reader()
    vendor, model, flags = _from_cpuid(cpuid) if cpuid else _from_proc()
    machine = platform.machine().lower()
    isa = vector_isa(flags) if machine in ("x86_64", "amd64") else machine
    return {"cpu_vendor": vendor, "cpu_model": model or "unknown", "cpu_isa": isa, "cpu_flags": " ".join(flags)}


@dataclass
class Numerics:
    mode: str  # "portable", "native", or "custom: VAR=value ..." for pins set by hand
    warning: str | None = None  # one line for the user, said once by setup_device
    error: str | None = None  # a bad NUMERICS value: setup_device stops the run with it


def numerics_mode(environ):
    """What the environment's pins make of this process's numerics."""
    values = {k: environ.get(k) for k in PORTABLE}
    if values == PORTABLE:
        return "portable"
    if not any(values.values()):
        return "native"
    return "custom: " + " ".join(f"{k}={v}" for k, v in values.items() if v)


def choose_numerics(environ=os.environ, isa=None):
    """Apply NUMERICS to `environ` (this process's, and so its children's): `native` drops the pins, `portable`
    sets them, unset or empty keeps what is there (in the image: its ENV's pins). On a CPU without AVX2 the
    pins go too, with a warning: the run then takes the CPU's own kernels rather than dying at the first."""
    asked = environ.get("NUMERICS", "").strip().lower()
    if asked and asked not in MODES:
        return Numerics(numerics_mode(environ), error=f"NUMERICS={asked}: use portable or native ({DOCS})")
    if asked == "native":
        for key in PORTABLE:
            environ.pop(key, None)
    elif asked == "portable":
        environ.update(PORTABLE)
    isa = isa or cpu_identity()["cpu_isa"]
    if environ.get("ATEN_CPU_CAPABILITY") == "avx2" and isa in ("AVX", "SSE4.2", "below SSE4.2"):
        for key in PORTABLE:
            environ.pop(key, None)
        warning = (
            f"this CPU's widest vector ISA is {isa}, and portable numerics need AVX2 ({DOCS}): training with its "
            "own kernels instead, so the weights will differ from those an AVX2 machine computes"
        )
        return Numerics(numerics_mode(environ), warning=warning)
    return Numerics(numerics_mode(environ))


def cpu_numerics():
    """What summary.json records of the CPU and its numerics (provenance.py): the CPU, its widest vector ISA,
    the vector ISA ATen's kernels use here, and the numerics mode that ran."""
    return {
        **cpu_identity(),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "numerics": NUMERICS.mode,
    }


# Before torch's first kernel: train.py imports this module before it computes anything.
NUMERICS = choose_numerics()
