"""How the unit tests run the trainer: in this process (train.main) or as a child, over tmp folders."""

import json
import re
import subprocess
import sys
from pathlib import Path

import torch

import train

TRAIN_PY = Path(train.__file__)
LOSS_LINE = re.compile(r"^epoch=\d+, batch= *\d+: loss \d+\.\d\d$", re.M)


def run_main(tmp_path, flags, out="out"):
    where = f"--output-dir {tmp_path / out} --checkpoint-dir {tmp_path / 'ckpt'} --data-dir {tmp_path / 'data'}"
    return train.main([*where.split(), "--progress", "off", *flags.split()])


def child(flags, cwd, **kw):
    """`python train.py FLAGS` in cwd, its output piped: subprocess.Popen."""
    return subprocess.Popen([sys.executable, str(TRAIN_PY), *flags], cwd=cwd, stdout=subprocess.PIPE, text=True, **kw)


def stop_at(proc, line_prefix):
    """SIGTERM proc once it prints a line starting with line_prefix; (exit status, what it printed after)."""
    import signal

    for line in proc.stdout:
        if line.startswith(line_prefix):
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stdout.read()
    return proc.wait(timeout=60), rest


def tutorial_steps(net, optimizer, batches):
    """The tutorial's training loop, verbatim (CrossEntropyLoss, zero_grad, backward, step): each step's loss.
    The oracle the trainer's step, its SGD and its whole run are held to, bit for bit."""
    criterion = torch.nn.CrossEntropyLoss()
    losses = []
    for inputs, labels in batches:
        optimizer.zero_grad()
        loss = criterion(net(inputs), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def metric(out_dir, name):
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["value"] for r in rows if r["name"] == name]


def weights(path):
    return torch.load(path, weights_only=True)


def same_weights(a, b):
    a, b = weights(a), weights(b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
