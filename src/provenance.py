"""What a run ran on: the code's digest, the image's revision, the Python stack's fingerprint, the CPU and its numerics.

python provenance.py SRC_DIR     # prints the digest of the trainer's code (the image bakes it in)
"""

import hashlib
import os
import platform
import sys
from importlib import metadata
from pathlib import Path


def source_digest(folder):
    """sha256 over the name and content of every .py file under folder, in a fixed order.

    The image stores this for /app/src at build time; `make submit` refuses to send code
    whose digest differs from the image's, and every run records the digest of what it ran.
    """
    folder = Path(folder)
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.py"), key=lambda p: p.relative_to(folder).as_posix()):
        h.update(f"{path.relative_to(folder).as_posix()}\n".encode())
        h.update(hashlib.sha256(path.read_bytes()).hexdigest().encode() + b"\n")
    return h.hexdigest()


def packages_fingerprint():
    """One hash of every installed distribution and version: equal hashes, equal Python stack.

    pip names each install's metadata folder NAME-VERSION.dist-info, so the folder names carry it:
    listing them is far cheaper than reading every METADATA file.
    """
    names = sorted(
        entry.name
        for folder in sys.path
        if os.path.isdir(folder)
        for entry in os.scandir(folder)
        if entry.name.endswith((".dist-info", ".egg-info"))
    )
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def provenance():
    import torch

    from device import cpu_numerics, cuda_versions

    return {
        "image_ref": os.environ.get("IMAGE_REF", "none"),
        "image_revision": os.environ.get("IMAGE_REVISION", "none"),
        "image_version": os.environ.get("IMAGE_VERSION", "none"),
        "source_sha256": source_digest(Path(__file__).parent),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": metadata.version("torchvision"),
        "packages_sha256": packages_fingerprint(),
        **cuda_versions(),  # cuda_runtime, nvidia_driver: what a GPU run ran on
        # cpu_vendor, cpu_model, cpu_isa, cpu_flags (CPUID's), aten_cpu_capability, numerics: portable or native
        **cpu_numerics(),
    }


if __name__ == "__main__":
    print(source_digest(sys.argv[1]))
