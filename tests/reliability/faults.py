"""Faults for the reliability tests: a full disk (ENOSPC) and a read-only location (EROFS), faked at the
system-call wrappers the code under test goes through, so that they run anywhere without root."""
import errno
import os
from pathlib import Path

from oodseg import atomic


def disk_full_for(suffix: str, monkeypatch) -> None:
    """Every write of a file ending in ``suffix`` through oodseg.atomic fails with ENOSPC after a few bytes."""
    real_open = open

    class FullFile:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            self.file.write(data[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    def fake_open(path, mode="r", *args, **kwargs):
        file = real_open(path, mode, *args, **kwargs)
        return FullFile(file) if "w" in mode and str(path).endswith(suffix) else file

    monkeypatch.setattr(atomic, "open", fake_open, raising=False)


def read_only_below(folder: Path, monkeypatch) -> None:
    """Creating anything below ``folder`` (folders, files, temporary folders) fails with EROFS."""
    real_mkdir, real_open, real_mkdtemp = Path.mkdir, os.open, atomic.tempfile.mkdtemp

    def refuse(path):
        if Path(path).absolute().is_relative_to(folder.absolute()):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def mkdir(self, *args, **kwargs):
        refuse(self)
        return real_mkdir(self, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def mkdtemp(suffix=None, prefix=None, dir=None):
        refuse(Path(dir) / "x")
        return real_mkdtemp(suffix, prefix, dir)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(atomic.tempfile, "mkdtemp", mkdtemp)
