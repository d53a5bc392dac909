"""A folder with the semantics of blob storage behind FUSE, as Azure ML mounts CHECKPOINT_PATH (blobfuse2):
renames refused, chmod refused, a folder fsync answered with EIO, and no empty folders across mounts.

Blob storage has no rename (blobfuse2 copies then deletes, where it renames at all) and, in a flat namespace,
no permissions and no folder that holds nothing (a folder is the common prefix of its blobs' names):
https://learn.microsoft.com/azure/storage/blobs/blobfuse2-compare-linux-file-system and
https://github.com/Azure/azure-storage-fuse/wiki/Blobfuse2-Limitations. Other object-store mounts refuse the
rename outright: ENOSYS and EPERM (https://github.com/safetensors/safetensors/issues/792), EXDEV where the two
names are on different backends.
"""

import errno
import os
from pathlib import Path

REFUSALS = {"EXDEV": errno.EXDEV, "ENOTSUP": errno.ENOTSUP, "EPERM": errno.EPERM}


def refused(code, path):
    return OSError(code, os.strerror(code), os.fspath(path))


def emulate(patch, root, rename_errno):
    """Under root: os.replace and os.rename answer rename_errno, os.chmod EPERM, a folder's fsync EIO
    (patch: a MonkeyPatch). Elsewhere nothing changes."""
    root = os.path.abspath(root)
    real_replace, real_rename, real_chmod, real_fsync = os.replace, os.rename, os.chmod, os.fsync

    def under(path):
        if isinstance(path, int):  # a file descriptor
            path = os.readlink(f"/proc/self/fd/{path}")
        path = os.path.abspath(os.fsdecode(path))
        return path == root or path.startswith(root + os.sep)

    def rename(real):
        def call(src, dst, *args, **kwargs):
            if under(src) or under(dst):
                raise refused(rename_errno, src)
            return real(src, dst, *args, **kwargs)

        return call

    def chmod(path, mode, *args, **kwargs):
        if under(path):
            raise refused(errno.EPERM, path)
        return real_chmod(path, mode, *args, **kwargs)

    def fsync(fd):
        fd = fd if isinstance(fd, int) else fd.fileno()
        if os.path.isdir(f"/proc/self/fd/{fd}") and under(fd):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_fsync(fd)

    patch.setattr(os, "replace", rename(real_replace))
    patch.setattr(os, "rename", rename(real_rename))
    patch.setattr(os, "chmod", chmod)
    patch.setattr(os, "fsync", fsync)


def remount(root):
    """What a new mount of the same storage shows: the folders that hold no file are gone."""
    for folder, _, _ in sorted(os.walk(root), key=lambda entry: -len(entry[0])):
        if Path(folder) != Path(root) and not any(Path(folder).iterdir()):
            Path(folder).rmdir()
