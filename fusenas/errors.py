"""Errors the layers raise to each other. Only ``fs.operations`` turns them into errno."""


class FusenasError(Exception):
    """Base of every error fusenas raises on purpose. ``str(e)`` is one line for the user."""


class VolumeError(FusenasError):
    """The volume cannot be created, opened or used as asked (bad members, wrong array...)."""


class DataLostError(VolumeError):
    """A read needs more failed or missing members than the RAID level tolerates."""


class JournalError(FusenasError):
    """The write-ahead log cannot be used: wrong array, corrupt beyond its tail, out of order."""


class NoSpaceError(FusenasError):
    """The volume (or the metadata area) has no room for the request: ENOSPC."""


class FsError(FusenasError):
    """A filesystem operation fails with a POSIX errno (ENOENT, EEXIST, ENOTEMPTY, ...).

    Raised by the metadata and file layers; the FUSE adapter turns it into
    ``pyfuse3.FUSEError(errno)``.
    """

    def __init__(self, errno: int, message: str = "") -> None:
        super().__init__(message or f"errno {errno}")
        self.errno = errno
