"""Split the hashed lock into per-layer requirement files, so the image's packages land in a few layers.

    python3 split_lock.py requirements.lock OUT_DIR     # writes OUT_DIR/{nvidia,torch,base,azure}/requirements.txt

Layers go from what changes least to what changes most: the CUDA libraries, torch with triton and
torchvision, the rest of what the trainer needs (the packages reachable from requirements.in's
non-Azure roots, following the lock's "# via" lines), then the Azure SDK and everything only it
needs. Each stanza is copied whole, hashes included; every package lands in exactly one file.
"""

import re
import sys
from pathlib import Path

LAYERS = ("nvidia", "torch", "base", "azure")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==")


def parse(text):
    """{name: (stanza text, set of the packages (or '-r ...') that pulled it in)}."""
    stanzas, name = {}, None
    for line in text.splitlines(keepends=True):
        m = PIN.match(line)
        if m:
            name = m.group(1).lower()
            stanzas[name] = [line, set()]
        elif name and line.startswith("    "):
            stanzas[name][0] += line
            via = line.strip().removeprefix("#").strip()
            via = via.removeprefix("via").strip()
            if line.strip().startswith("#") and via:
                stanzas[name][1].add(via.lower())
    return stanzas


def layer_of(stanzas):
    children = {}
    for name, (_, parents) in stanzas.items():
        for parent in parents:
            children.setdefault(parent, set()).add(name)
    roots = [n for n, (_, parents) in stanzas.items() if any(p.startswith("-r ") for p in parents)]
    base, todo = set(), [n for n in roots if not n.startswith("azure")]
    while todo:
        name = todo.pop()
        if name not in base:
            base.add(name)
            todo += children.get(name, ())

    def pick(name):
        if name.startswith(("nvidia-", "cuda-")):
            return "nvidia"
        if name in ("torch", "torchvision", "triton"):
            return "torch"
        return "base" if name in base else "azure"

    return {name: pick(name) for name in stanzas}


def main(lock, out):
    stanzas = parse(Path(lock).read_text())
    if not stanzas:
        sys.exit(f"error: no pinned packages in {lock}: run `make lock` to regenerate it")
    layers = layer_of(stanzas)
    for layer in LAYERS:
        names = sorted(n for n in stanzas if layers[n] == layer)
        Path(out, layer).mkdir(parents=True, exist_ok=True)
        Path(out, layer, "requirements.txt").write_text("".join(stanzas[n][0] for n in names))
        print(f"{layer}: {len(names)} packages")


if __name__ == "__main__":
    main(*sys.argv[1:])
