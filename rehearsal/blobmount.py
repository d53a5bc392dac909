"""A FUSE file system over a blob container, through the blob API (azure-storage-blob), that answers as blob storage
behind blobfuse2 does where POSIX asks for more: rename refused (ENOTSUP), chmod and chown refused (EPERM), a
folder's fsync answered with EIO, folders that are only blob name prefixes.

    python rehearsal/blobmount.py ENDPOINT MOUNTPOINT   # in the foreground, until MOUNTPOINT is unmounted

ENDPOINT: the rehearsal's datastore (rehearsal/datastore.py: Azurite's blob endpoint); its container is
datastore.CONTAINER. A job's CHECKPOINT_PATH mounted from here (docker run -v MOUNTPOINT/ck:/work/checkpoints) meets
what an Azure ML rw_mount of a blob container gives it (docs/runtime.md, "Checkpoints and outputs on blob storage
mounts"):
- a file is downloaded whole when opened and uploaded whole when flushed or closed, as blobfuse2's file cache does
  (https://learn.microsoft.com/azure/storage/blobs/blobfuse2-what-is): a reader sees a file once its writer has
  closed it, and a kill while writing leaves the blob as it was last uploaded;
- no rename: blob storage has none; blobfuse2 copies then deletes, and mounts of object stores refuse it
  (https://learn.microsoft.com/azure/storage/blobs/blobfuse2-compare-linux-file-system,
  https://github.com/safetensors/safetensors/issues/792);
- no chmod or chown on a flat namespace (https://github.com/Azure/azure-storage-fuse/wiki/Blobfuse2-Limitations);
- no folders: a folder is the prefix of the blobs in it; one made with mkdir and left empty is gone at unmount;
- a folder fsync that fails (blobfuse2's libfuse handler answers fsyncdir with EIO when it cannot sync).
`make submit COMPUTE=local` mounts the datastore with it for the run, where it can (rehearsal/local_run.py).
Needs libfuse2 (Debian's libfuse2), fusepy and azure-storage-blob (tests/requirements-host.txt); mounts with
allow_other, so that the container's user, whoever it is, reaches the files (as root, or with user_allow_other in
/etc/fuse.conf).
"""

import errno
import os
import stat
import sys
import tempfile
import time

from azure.core.exceptions import AzureError, ResourceNotFoundError
from fuse import FUSE, FuseOSError, Operations

import datastore


class BlobSemantics(Operations):
    """Blobs as files, through a local copy of each open one."""

    def __init__(self, client):
        self.client = client  # azure-storage-blob's ContainerClient
        self.folders = set()  # made with mkdir, no blob in them yet: kept here only, as blobfuse2 does
        self.open_files = {}  # fh (the local copy's fd): [blob name, written since uploaded]
        self.uid, self.gid, self.started = os.getuid(), os.getgid(), time.time()

    def __call__(self, op, *args):
        """Any other failure of the blob service is EIO to the caller, as blobfuse2 answers it; fusepy would
        otherwise unmount at the first one."""
        try:
            return super().__call__(op, *args)
        except AzureError as e:
            print(f"blobmount: {op}: {str(e).splitlines()[0]}", file=sys.stderr)
            raise FuseOSError(errno.EIO) from None

    @staticmethod
    def blob(path):
        return path.strip("/")

    def attrs(self, mode, size=0, mtime=None):
        t = mtime or self.started
        nlink = 2 if stat.S_ISDIR(mode) else 1
        return {"st_mode": mode, "st_nlink": nlink, "st_uid": self.uid, "st_gid": self.gid, "st_size": size,
                "st_atime": t, "st_mtime": t, "st_ctime": t}  # fmt: skip

    def holds_blobs(self, name):
        return any(True for _ in self.client.list_blobs(name_starts_with=f"{name}/", results_per_page=1))

    def is_folder(self, name):
        return not name or name in self.folders or self.holds_blobs(name)

    # What blob storage refuses
    def rename(self, old, new):
        raise FuseOSError(errno.ENOTSUP)

    def link(self, target, source):
        raise FuseOSError(errno.ENOTSUP)

    def symlink(self, name, target):
        raise FuseOSError(errno.ENOTSUP)

    def chmod(self, path, mode):
        raise FuseOSError(errno.EPERM)

    def chown(self, path, uid, gid):
        raise FuseOSError(errno.EPERM)

    def fsyncdir(self, path, datasync, fh):
        raise FuseOSError(errno.EIO)

    # Names
    def getattr(self, path, fh=None):
        name = self.blob(path)
        for fh, (blob, _) in self.open_files.items():  # an open file's size is its local copy's
            if blob == name:
                return self.attrs(stat.S_IFREG | 0o644, os.fstat(fh).st_size)
        if name:
            try:
                props = self.client.get_blob_client(name).get_blob_properties()
                return self.attrs(stat.S_IFREG | 0o644, props.size, props.last_modified.timestamp())
            except ResourceNotFoundError:
                pass
        if self.is_folder(name):
            return self.attrs(stat.S_IFDIR | 0o755)
        raise FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        name = self.blob(path)
        prefix = f"{name}/" if name else ""
        names = {item.name[len(prefix) :].rstrip("/") for item in self.client.walk_blobs(prefix, delimiter="/")}
        names |= {f[len(prefix) :].split("/")[0] for f in self.folders if f.startswith(prefix)}
        names |= {b[len(prefix) :].split("/")[0] for b, _ in self.open_files.values() if b.startswith(prefix)}
        return [".", "..", *sorted(names)]

    def mkdir(self, path, mode):
        self.folders.add(self.blob(path))

    def rmdir(self, path):
        name = self.blob(path)
        if self.holds_blobs(name):
            raise FuseOSError(errno.ENOTEMPTY)
        self.folders = {f for f in self.folders if f != name and not f.startswith(f"{name}/")}

    def unlink(self, path):
        try:
            self.client.delete_blob(self.blob(path))
        except ResourceNotFoundError:
            raise FuseOSError(errno.ENOENT) from None

    def utimens(self, path, times=None):
        return 0  # a blob's last-modified time is the service's

    def statfs(self, path):
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 30, "f_bfree": 1 << 30, "f_bavail": 1 << 30,
                "f_files": 1 << 20, "f_ffree": 1 << 20, "f_favail": 1 << 20, "f_namemax": 255}  # fmt: skip

    # Contents: a local copy while open
    def local_copy(self, name, download):
        fd, path = tempfile.mkstemp(prefix="blobmount-")
        os.unlink(path)  # the fd keeps it; nothing is left behind
        if download:
            try:
                with os.fdopen(os.dup(fd), "wb") as f:
                    self.client.download_blob(name).readinto(f)
            except ResourceNotFoundError:
                os.close(fd)
                raise FuseOSError(errno.ENOENT) from None
        return fd

    def open(self, path, flags):
        name = self.blob(path)
        fh = self.local_copy(name, download=not flags & os.O_TRUNC)
        self.open_files[fh] = [name, bool(flags & os.O_TRUNC)]
        return fh

    def create(self, path, mode, fi=None):
        name = self.blob(path)
        fh = self.local_copy(name, download=False)
        self.open_files[fh] = [name, True]
        self.upload(fh)  # the name exists from now on, as an empty blob, as blobfuse2 creates it
        return fh

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        self.open_files[fh][1] = True
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        if fh is not None:
            self.open_files[fh][1] = True
            os.ftruncate(fh, length)
            return
        fh = self.local_copy(self.blob(path), download=True)
        try:
            os.ftruncate(fh, length)
            self.open_files[fh] = [self.blob(path), True]
            self.upload(fh)
        finally:
            self.open_files.pop(fh, None)
            os.close(fh)

    def upload(self, fh):
        name, written = self.open_files[fh]
        if not written:
            return
        with os.fdopen(os.dup(fh), "rb") as f:
            f.seek(0)  # the download left the shared offset at the end
            self.client.upload_blob(name, f, overwrite=True)
        self.open_files[fh][1] = False
        parts = name.split("/")
        self.folders -= {"/".join(parts[:i]) for i in range(1, len(parts))}  # now a prefix of a blob

    def flush(self, path, fh):
        self.upload(fh)

    def fsync(self, path, datasync, fh):
        self.upload(fh)

    def release(self, path, fh):
        try:
            self.upload(fh)
        finally:
            del self.open_files[fh]
            os.close(fh)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python rehearsal/blobmount.py ENDPOINT MOUNTPOINT", file=sys.stderr)
        return 2
    endpoint, mountpoint = argv
    client = datastore.container_client(endpoint)
    options = {"allow_other": True, "big_writes": True, "fsname": "blobmount"}  # big_writes: 128 KiB a call, not 4
    FUSE(BlobSemantics(client), mountpoint, foreground=True, nothreads=True, **options)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
