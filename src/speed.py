"""CPU set-up for training: how many threads torch uses, chosen once per run.

At the tutorial's batch of 4 an operation is a few microseconds of arithmetic, so handing it to a
second thread costs more than it saves; and on a machine shared with other work, every parallel
region waits for whichever thread the kernel has descheduled (measured in the image on 2 busy cores:
1,000-4,000 images/s on one thread, 40-140 on two). One thread is also the setting under which the
trainer's losses are bit-identical to the tutorial's for the same samples. Large batches get the cores.
"""

import os
from contextlib import contextmanager

import torch

SMALL_BATCH = 32  # per process; below this, one thread


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
