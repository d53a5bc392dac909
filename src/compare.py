"""`make compare A=DIR B=DIR`: two runs' output folders side by side, and whether they are the same run.

    python3 src/compare.py A B     # each a run's output folder: summary.json and metrics.jsonl

A laptop run, a `COMPUTE=local` run or an Azure ML run downloaded from Studio (its outputs/ folder).
Prints the image, code and package fingerprints (each the same or not), the CPUs and the settings that
decide the arithmetic (numerics mode, threads, world size), the recipe, the `loss` series (`train/epoch_loss`
for a run too short to log `loss`) with its largest difference, the final test accuracy and the weights'
sha256. Exit 0 when the two are the same run (bit-identical weights, same recipe, same loss series: what two
CPU runs of one recipe give, on any AVX2 CPU with portable numerics), 1 with one line saying what differs (led
by the setting that explains different weights, where one does), 2 when a folder is not a run's. Standard
library only.
"""

import json
import sys
from pathlib import Path

from cli import RECIPE  # the trainer's own list (cli imports no torch); src/ is this script's folder

WIDTH = 34  # one column per run
EPOCH_LOSS = "train/epoch_loss"  # the trainer logs it every epoch, beside the tutorial's `loss`
PORTABLE_ISAS = ("AVX2", "AVX512")  # the CPUs portable numerics give the same bits on (src/device.py)
SETTINGS = ("numerics", "threads", "world size")  # rows whose difference explains different weights


class NotARun(Exception):
    pass


def load(folder):
    """(summary.json, {metric name: {step: value}}) of a run's output folder."""
    folder = Path(folder)
    try:
        summary = json.loads((folder / "summary.json").read_text())
        lines = (folder / "metrics.jsonl").read_text().splitlines()
    except (OSError, ValueError) as e:
        raise NotARun(f"{folder} is not a finished run's output folder ({e}): give one holding summary.json") from e
    series = {}
    for line in lines:
        r = json.loads(line)
        series.setdefault(r["name"], {})[r["step"]] = r["value"]
    return summary, series


def digest(ref):
    return ref.split("@", 1)[1] if "@" in ref else None


def short(value, n=16):
    text = str(value)
    return text if len(text) <= n else text[:n] + "…"


def image(summary):
    """The image's digest (or tag) and the revision it was built from."""
    ref = summary.get("image_ref", "none")
    return short(digest(ref) or ref, 19) + " " + short(summary.get("image_revision"), 8)


def series(points):
    return f"{len(points)} points, last {points[max(points)]:.4f}" if points else "none"


def fingerprints(a, b):
    """Rows (label, A, B, same) for the image, the code and the Python packages."""
    ref_a, ref_b = a.get("image_ref", "none"), b.get("image_ref", "none")
    # A laptop run knows its image by tag only; the revision baked into the image says which build it is.
    same_image = a.get("image_revision") == b.get("image_revision") and (
        None in (digest(ref_a), digest(ref_b)) or digest(ref_a) == digest(ref_b)
    )
    return [
        ("image", image(a), image(b), same_image),
        (
            "code",
            short(a.get("source_sha256")),
            short(b.get("source_sha256")),
            a.get("source_sha256") == b.get("source_sha256"),
        ),
        (
            "packages",
            a.get("packages_sha256"),
            b.get("packages_sha256"),
            a.get("packages_sha256") == b.get("packages_sha256"),
        ),
    ]


def recorded(summary, key):
    value = summary.get(key)
    return "unrecorded" if value is None else value


def machine(a, b):
    """Rows (label, A, B, same) for the CPU and the settings its arithmetic depends on. Another CPU is no
    difference in itself (same is None, not False): with portable numerics every AVX2 CPU gives the same bits."""
    cpu = [f"{recorded(s, 'cpu_model')}" for s in (a, b)]
    isa = [f"{recorded(s, 'cpu_isa')}, ATen {recorded(s, 'aten_cpu_capability')}" for s in (a, b)]
    rows = [("cpu", *cpu, True if cpu[0] == cpu[1] else None), ("vector ISA", *isa, True if isa[0] == isa[1] else None)]
    for label, key in zip(SETTINGS, ("numerics", "threads", "world_size"), strict=True):
        va, vb = recorded(a, key), recorded(b, key)
        rows.append((label, va, vb, va == vb))
    return rows


def setting_that_differs(a, b):
    """The first setting that explains why one recipe gave different weights, in a few words; else None."""
    if a.get("device") != b.get("device"):
        return f"device ({recorded(a, 'device')} vs {recorded(b, 'device')})"
    below = [name for name, s in (("A", a), ("B", b)) if s.get("cpu_isa") not in (None, *PORTABLE_ISAS)]
    modes = recorded(a, "numerics"), recorded(b, "numerics")
    if modes[0] != modes[1] and not below:
        return f"numerics ({modes[0]} vs {modes[1]})"
    for label, key in (("threads", "threads"), ("world size", "world_size")):
        if a.get(key) != b.get(key):
            return f"{label} ({recorded(a, key)} vs {recorded(b, key)})"
    if below:
        isas = ", ".join(f"{name}: {s['cpu_isa']}" for name, s in (("A", a), ("B", b)) if name in below)
        return f"ISA below AVX2 ({isas}; portable numerics need AVX2)"
    cpus = [f"{recorded(s, 'cpu_vendor')} {recorded(s, 'cpu_isa')}" for s in (a, b)]
    if "portable" not in modes and cpus[0] != cpus[1]:
        return f"numerics {modes[0]} on different CPUs ({cpus[0]} vs {cpus[1]})"
    return None


def recipe(summary):
    config = summary.get("config", {})
    return {k: config.get(k) for k in (*RECIPE, "epochs")}


def loss_difference(a, b):
    """(largest |A - B| over the steps both logged, at which step), or (None, None) when none are shared."""
    shared = sorted(set(a) & set(b))
    if not shared:
        return None, None
    step = max(shared, key=lambda s: abs(a[s] - b[s]))
    return abs(a[step] - b[step]), step


def rows(a, b):
    """Every row (label, A, B, same) of the comparison."""
    (sa, ma), (sb, mb) = a, b
    ra, rb = recipe(sa), recipe(sb)
    out = fingerprints(sa, sb) + machine(sa, sb) + [("recipe", "", "", None)]
    out += [(f"  {k}", ra[k], rb[k], ra[k] == rb[k]) for k in ra]
    # The tutorial's loss (every 2000 steps); a shorter run has only the loss of each epoch.
    name = "loss" if ma.get("loss") or mb.get("loss") else EPOCH_LOSS
    la, lb = ma.get(name, {}), mb.get(name, {})
    diff, step = loss_difference(la, lb)
    out.append((name, series(la), series(lb), la == lb))
    shown = "none shared" if diff is None else f"{diff:.3g} at step {step}"
    out.append(("  largest diff", "", shown, None if diff is None else diff == 0))
    acc_a, acc_b = sa.get("final", {}).get("test/accuracy"), sb.get("final", {}).get("test/accuracy")
    out.append(("test/accuracy", acc_a, acc_b, acc_a == acc_b))
    out.append(("weights sha256", short(sa.get("weights_sha256")), short(sb.get("weights_sha256")), None))
    return out


def verdict(summary_a, summary_b, table):
    """(exit code, one line): the same run, or what differs, the recipe first, then the setting that explains it."""
    weights = summary_a.get("weights_sha256")
    differs = [label.strip() for label, _, _, same in table if same is False and label != "  largest diff"]
    if weights is None or weights != summary_b.get("weights_sha256"):
        differs.append("weights")
    recipe_keys = [k for k in differs if k in (*RECIPE, "epochs")]
    if recipe_keys or {"loss", EPOCH_LOSS, "weights"} & set(differs):
        cause = None if recipe_keys else setting_that_differs(summary_a, summary_b)
        rest = [k for k in differs if k not in recipe_keys and (cause is None or k not in SETTINGS)]
        return 1, "differs: " + ", ".join(recipe_keys + ([cause] if cause else []) + rest)
    note = f" ({', '.join(differs)} differ)" if differs else ""
    return 0, f"the same run: bit-identical weights{note}"


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        a, b = load(args[0]), load(args[1])
    except NotARun as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = rows(a, b)
    print(f"{'':16} {'A: ' + short(args[0], WIDTH - 4):{WIDTH}} {'B: ' + short(args[1], WIDTH - 4)}")
    for label, va, vb, same in table:
        mark = {True: "same", False: "DIFFERS", None: ""}[same]
        print(f"{label:16} {short(va, WIDTH - 2):{WIDTH}} {short(vb, WIDTH - 2):{WIDTH}} {mark}".rstrip())
    code, line = verdict(a[0], b[0], table)
    print(line)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
