#!/usr/bin/env bash
# The CUDA path, natively, for a machine with an NVIDIA GPU, Python and torch (+ torchvision, tqdm,
# matplotlib) but no Docker. Runs the trainer on fake data with --device cuda at batch 4 and 512,
# then under torchrun (one process, nccl), checks the loss falls in each, prints images/s.
#   bash bench/gpu.sh                 PYTHON=/path/to/python bash bench/gpu.sh
# No test depends on this; nothing here runs without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
  || { echo "error: $py sees no CUDA device (torch.cuda.is_available() is False): run this on a GPU machine" >&2; exit 1; }
"$py" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")'

# One training run: NAME LAUNCHER... -- FLAGS...; prints images/s and the first and last logged loss,
# and fails unless the last is below the first. Memorising a small fake set makes the loss fall.
run() {
  local name=$1; shift
  local out="$work/$name"
  "$@" --device cuda --output-dir "$out" --checkpoint-dir "$out/ckpt" --progress off >"$work/$name.log" 2>&1 \
    || { tail -n 20 "$work/$name.log"; echo "error: $name failed (log above)" >&2; exit 1; }
  "$py" - "$work/$name.log" "$out/summary.json" "$name" <<'PY'
import json, re, sys
log, summary, name = sys.argv[1:]
losses = [float(v) for v in re.findall(r": loss ([\d.]+)", open(log).read())]
ips = json.load(open(summary))["images_per_sec"]
falls = len(losses) >= 2 and losses[-1] < losses[0]
print(f"{name:24s} {ips:9.0f} images/s   loss {losses[0] if losses else '-'} -> {losses[-1] if losses else '-'}"
      f"   {'falls' if falls else 'DOES NOT FALL'}")
sys.exit(0 if falls else 1)
PY
}

learn="--fake-data 512 --epochs 20 --lr 0.01 --checkpoint-every 0"
run "batch 4 (learns)" "$py" src/train.py $learn --batch-size 4 --log-interval 128
run "batch 512 (learns)" "$py" src/train.py $learn --batch-size 512 --epochs 300 --lr 0.05 --log-interval 1
run "batch 4 (speed)" "$py" src/train.py --fake-data 50000 --epochs 1 --batch-size 4
run "batch 512 (speed)" "$py" src/train.py --fake-data 50000 --epochs 5 --batch-size 512 --log-interval 20

# nccl itself, in a world of one (the trainer skips torch.distributed when WORLD_SIZE is 1).
cat >"$work/nccl.py" <<'PY'
import torch, torch.distributed as dist
dist.init_process_group("nccl")
t = torch.ones(1, device="cuda")
dist.all_reduce(t)
assert t.item() == 1.0
print("nccl all_reduce ok")
dist.destroy_process_group()
PY
"$py" -m torch.distributed.run --standalone --nproc-per-node 1 "$work/nccl.py" >"$work/nccl.log" 2>&1 \
  || { tail -n 20 "$work/nccl.log"; echo "error: nccl all_reduce failed" >&2; exit 1; }
echo "nccl: $(tail -n 1 "$work/nccl.log")"
run "torchrun 1 process" "$py" -m torch.distributed.run --standalone --nproc-per-node 1 src/train.py \
  $learn --batch-size 4 --log-interval 128
