"""A FUSE file system over a host folder that answers as blob storage behind blobfuse2 does where POSIX asks
for more: rename refused (ENOTSUP), chmod and chown refused (EPERM), a folder's fsync answered with EIO.

    python rehearsal/blobmount.py BACKING MOUNTPOINT     # in the foreground, until MOUNTPOINT is unmounted

Everything else passes through to BACKING. A job's CHECKPOINT_PATH mounted from here (docker run -v
MOUNTPOINT:/work/checkpoints) meets what an Azure ML rw_mount of a blob container gives it (docs/runtime.md,
"Checkpoints and outputs on blob storage mounts"):
- no rename: blob storage has none; blobfuse2 copies then deletes, and mounts of object stores refuse it
  (https://learn.microsoft.com/azure/storage/blobs/blobfuse2-compare-linux-file-system,
  https://github.com/safetensors/safetensors/issues/792);
- no chmod or chown on a flat namespace (https://github.com/Azure/azure-storage-fuse/wiki/Blobfuse2-Limitations);
- a folder fsync that fails (blobfuse2's libfuse handler answers fsyncdir with EIO when it cannot sync).
`make submit COMPUTE=local` mounts LOCAL_DATASTORE with it for the run, where it can (rehearsal/local_run.py).
Needs libfuse2 (Debian's libfuse2) and fusepy (tests/requirements-host.txt); mounts with allow_other, so that the
container's user, whoever it is, reaches the files (as root, or with user_allow_other in /etc/fuse.conf).
"""

import errno
import os
import sys

from fuse import FUSE, FuseOSError, Operations

STAT_FIELDS = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime", "st_mtime", "st_ctime")


class BlobSemantics(Operations):
    """Pass-through to a host folder, less what blob storage cannot do."""

    def __init__(self, backing):
        self.backing = os.path.realpath(backing)

    def full(self, path):
        return os.path.join(self.backing, path.lstrip("/"))

    # What blob storage refuses
    def rename(self, old, new):
        raise FuseOSError(errno.ENOTSUP)

    def link(self, target, source):
        raise FuseOSError(errno.ENOTSUP)

    def chmod(self, path, mode):
        raise FuseOSError(errno.EPERM)

    def chown(self, path, uid, gid):
        raise FuseOSError(errno.EPERM)

    def fsyncdir(self, path, datasync, fh):
        raise FuseOSError(errno.EIO)

    # The rest, passed through
    def getattr(self, path, fh=None):
        st = os.lstat(self.full(path))
        return {name: getattr(st, name) for name in STAT_FIELDS}

    def readdir(self, path, fh):
        return [".", "..", *os.listdir(self.full(path))]

    def readlink(self, path):
        return os.readlink(self.full(path))

    def symlink(self, name, target):
        os.symlink(target, self.full(name))

    def mkdir(self, path, mode):
        os.mkdir(self.full(path), mode)

    def rmdir(self, path):
        os.rmdir(self.full(path))

    def unlink(self, path):
        os.unlink(self.full(path))

    def statfs(self, path):
        st = os.statvfs(self.full(path))
        return {name: getattr(st, name) for name in dir(st) if name.startswith("f_") and name != "f_fsid"}

    def utimens(self, path, times=None):
        os.utime(self.full(path), times)

    def open(self, path, flags):
        return os.open(self.full(path), flags)

    def create(self, path, mode, fi=None):
        return os.open(self.full(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        os.truncate(self.full(path) if fh is None else fh, length)

    def flush(self, path, fh):
        return 0

    def fsync(self, path, datasync, fh):
        os.fsync(fh)

    def release(self, path, fh):
        os.close(fh)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python rehearsal/blobmount.py BACKING MOUNTPOINT", file=sys.stderr)
        return 2
    backing, mountpoint = argv
    options = {"allow_other": True, "big_writes": True, "fsname": "blobmount"}  # big_writes: 128 KiB a call, not 4
    FUSE(BlobSemantics(backing), mountpoint, foreground=True, nothreads=True, **options)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
