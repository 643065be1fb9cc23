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


def sole_error(exc: BaseException) -> BaseException:
    """The one error inside nested exception groups, or ``exc`` itself if there are several.

    trio wraps whatever leaves a nursery in an exception group; a caller of a context manager
    that runs its body inside a nursery should still see ``VolumeError``, not a group of one.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
