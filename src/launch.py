"""torchrun, where a failing rank's one-line error is the whole story (`make train-ddp`).

    python launch.py --standalone --nproc-per-node 2 train.py --epochs 1

torchrun reports a rank that exits non-zero with a 40-line traceback of its own (ChildFailedError)
under the rank's one-line `error: ...`, and exits 1 whatever the rank's status. Here the rank's line
stays the last thing printed and its status (2 for a bad flag) is the exit status.
"""

import logging
import sys


def main(argv=None):
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    # torchrun's "failed (exitcode: 2) local_rank: 0 ..." log lines repeat what the rank said, and its
    # OMP_NUM_THREADS banner is moot: the trainer sets each rank's threads itself (device.py).
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    logging.getLogger("torch.distributed.run").setLevel(logging.ERROR)
    try:
        torchrun(argv)
    except ChildFailedError as e:
        failure = min(e.failures.values(), key=lambda f: f.timestamp)  # the first rank to fail
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
