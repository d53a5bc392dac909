"""torch.distributed as torchrun and Azure ML set it up, from the environment, and the stop flag.

WORLD_SIZE/RANK/LOCAL_RANK (and MASTER_ADDR/MASTER_PORT for the rendezvous) are read with
defaults, so a plain `python train.py` is a world of one and touches none of this. Azure ML does
not set LOCAL_WORLD_SIZE, so the ranks sharing a node are counted by hostname instead.
"""

import os
import re
import signal
import socket
from datetime import timedelta

import torch
import torch.distributed as dist

from errors import TrainerError

MASTER_PORT = "29500"  # where MASTER_PORT is unset: torchrun's default, and the rendezvous compose's nodes use


class Distributed:
    def __init__(self, environ=os.environ):
        self.environ = environ
        self.world = int(environ.get("WORLD_SIZE", "1"))
        self.rank = int(environ.get("RANK", "0"))
        self.local_rank = int(environ.get("LOCAL_RANK", "0"))
        self.on = self.world > 1
        self.main = self.rank == 0  # every side effect (prints, metrics, files) is rank 0's
        self.local_world = 1  # ranks on this node, known after init()
        self.device = "cpu"

    def init(self, device, timeout_s):
        self.device = device  # nccl reduces CUDA tensors only
        if not self.on:
            return
        backend = "nccl" if device.startswith("cuda") else "gloo"
        os.environ.setdefault("MASTER_PORT", MASTER_PORT)  # env:// needs one; Azure ML and torchrun set it
        interface = gloo_interface(self.environ) if backend == "gloo" else None
        if interface:
            os.environ["GLOO_SOCKET_IFNAME"] = interface
            print(f"note: this host's name resolves to a loopback address: gloo uses {interface} (GLOO_SOCKET_IFNAME)")
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        self.local_world = self.gather(socket.gethostname()).count(socket.gethostname())

    def mean(self, value):
        """The mean over ranks of a float (every rank must call it at the same step)."""
        if not self.on:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world

    def gather(self, value):
        """[value of rank 0, value of rank 1, ...] on every rank (a list of one without ranks)."""
        if not self.on:
            return [value]
        values = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def any(self, flag):
        """True on every rank if it is true on any (a barrier as well)."""
        if not self.on:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def local_first(self, prepare):
        """prepare() on local rank 0 of each node while the others wait; then they call it too
        (it then finds the work done). A failure on one rank fails every rank, none left waiting."""
        if not self.on:
            return prepare()
        error = None
        if self.local_rank == 0:
            try:
                result = prepare()
            except TrainerError as e:
                error = e
        if self.any(error is not None):
            raise error or TrainerError(
                f"rank {self.rank}: another rank could not prepare the data; see rank 0's message in its log"
            )
        return result if self.local_rank == 0 else prepare()

    def from_main(self, decide):
        """decide() on rank 0 alone, its result (or its TrainerError) on every rank: one process
        creates and claims the run's folders, and every rank continues from the same checkpoint."""
        if not self.on:
            return decide()
        result = error = None
        if self.main:
            try:
                result = decide()
            except TrainerError as e:
                error = e
        box = [(result, error and (str(error), error.exit_code))]
        dist.broadcast_object_list(box, src=0)
        result, said = box[0]
        if said and error:
            raise error
        if said:
            error = TrainerError(f"rank 0 stopped the run: {said[0]}")
            error.exit_code = said[1]
            error.quiet = "TORCHELASTIC_RUN_ID" in self.environ  # torchrun: one terminal, rank 0 said it
            raise error
        return result

    def lost_peer(self, error):
        """The one-line TrainerError for a collective that failed because another rank went away."""
        # gloo prefixes its source location: keep the first sentence after it
        reason = re.sub(r"^\[[^\]]*\]\s*", "", str(error).strip().splitlines()[0]).split(". ")[0]
        return TrainerError(
            f"rank {self.rank} of {self.world} lost the other ranks ({reason}): one of them failed "
            f"or was stopped; see its log, then rerun all ranks (with --resume auto)"
        )

    def close(self):
        if self.on and dist.is_initialized():
            dist.destroy_process_group()


def interface_address(name):
    """The IPv4 address of a network interface, or None (Linux's SIOCGIFADDR ioctl)."""
    import fcntl
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def route_interface(address, port):
    """The interface this host reaches `address` through (a UDP connect sends nothing; it routes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((address, int(port)))
        local = s.getsockname()[0]
    return next((name for _, name in socket.if_nameindex() if interface_address(name) == local), None)


def gloo_interface(environ):
    """The interface gloo should use where its own choice would fail, else None. gloo binds to the
    address the hostname resolves to; Debian-style /etc/hosts maps it to 127.0.1.1, and the other
    nodes cannot reach that (pytorch/pytorch#15592). GLOO_SOCKET_IFNAME, when set, is the user's."""
    if environ.get("GLOO_SOCKET_IFNAME"):
        return None
    try:
        own = socket.gethostbyname(socket.gethostname())
        master = socket.gethostbyname(environ.get("MASTER_ADDR", "127.0.0.1"))
    except OSError:
        return None
    if not own.startswith("127.") or master.startswith("127."):
        return None
    return route_interface(master, environ.get("MASTER_PORT", MASTER_PORT))


class StopFlag:
    """SIGTERM (docker stop, preemption) and SIGINT end the step in flight, then save and exit."""

    def __init__(self):
        self.signum = None

    def __call__(self, signum, frame):
        self.signum = signum

    def install(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self)

    @property
    def name(self):
        return signal.Signals(self.signum or signal.SIGTERM).name
