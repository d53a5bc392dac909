"""Start-up: a run imports only what it uses. torchvision, and torch.compile's machinery (torch._dynamo,
sympy) that torchvision and torch.optim pull in, cost seconds before the first line (docs/perf.md, "Start-up,
exit, threads and the allocator")."""

import json
import subprocess
import sys

from runner import TRAIN_PY

HEAVY = ("torchvision", "torch._dynamo", "sympy")


def test_a_fake_data_run_checkpointed_and_resumed_imports_neither_torchvision_nor_the_compiler(tmp_path):
    where = f"--output-dir {tmp_path / 'out'} --checkpoint-dir {tmp_path / 'ckpt'} --progress off --fake-data 40"
    first, then = f"{where} --epochs 1 --checkpoint-every 3".split(), f"{where} --epochs 2 --resume auto".split()
    script = (
        "import json, sys, train\n"
        f"codes = [train.main({first!r}), train.main({then!r})]\n"
        f"print(json.dumps([codes, [m for m in {HEAVY!r} if m in sys.modules]]))\n"
    )
    r = subprocess.run([sys.executable, "-c", script], cwd=TRAIN_PY.parent, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    codes, imported = json.loads(r.stdout.splitlines()[-1])
    assert "resumed from" in r.stdout and codes == [0, 0]
    assert imported == []
