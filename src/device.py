"""The device a run trains on, decided once: CPU or CUDA, its math, and torch's CPU threads.

The rest of the code reads Device and never writes "cuda" itself (nanoGPT's rule).

Threads: how many torch uses, chosen once per run.

At the tutorial's batch of 4 an operation is a few microseconds of arithmetic, so handing it to a
second thread costs more than it saves; and on a machine shared with other work, every parallel
region waits for whichever thread the kernel has descheduled (measured in the image on 2 busy cores:
1,000-4,000 images/s on one thread, 40-140 on two). One thread is also the setting under which the
trainer's losses are bit-identical to the tutorial's for the same samples. Large batches get the cores.
"""

import os
import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from errors import TrainerError

SMALL_BATCH = 32  # per process; below this, one thread
NVIDIA_NODES = ("/dev/nvidiactl", "/dev/nvidia0")  # what the NVIDIA container runtime passes in
DRIVER_VERSION = "/proc/driver/nvidia/version"  # the host driver's, also readable in a container


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
    unusable = unusable_gpu(args.device)
    if unusable and ddp.main:
        print(f"warning: {unusable}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise TrainerError("--device cuda but no CUDA device is visible: use --device cpu or auto")
    name = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
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


def unusable_gpu(requested, nodes=NVIDIA_NODES):
    """Why an NVIDIA GPU that is present cannot be used by this torch (say, a driver older than its
    CUDA wants), so that --device auto never falls back to the CPU without a word; else None."""
    if requested != "auto" or not any(Path(n).exists() for n in nodes) or torch.cuda.is_available():
        return None
    try:
        torch.cuda.init()
        reason = "torch sees no CUDA device"
    except Exception as e:  # torch says why: "The NVIDIA driver on your system is too old ..."
        reason = " ".join(str(e).split())[:200]
    found = cuda_versions()
    driver = f"driver {found['nvidia_driver']}" if "nvidia_driver" in found else "no driver version found"
    return (
        f"an NVIDIA GPU is here but torch {torch.__version__} (CUDA {torch.version.cuda}) cannot use it "
        f"({reason}; {driver}): training on the CPU; give the machine a driver for CUDA {torch.version.cuda}, "
        f"or pass --device cpu"
    )
