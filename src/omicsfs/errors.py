"""The errors omicsfs raises, and the errno each one becomes at the FUSE boundary."""

import errno


class OmicsfsError(Exception):
    """An error whose message is meant for the user as it is (bad config, refused token...)."""


class ConfigError(OmicsfsError):
    pass


class PlatformError(OmicsfsError):
    """A platform or object-store request failed; `errno` is what the FUSE caller sees.

    The message never holds a token or a presigned URL's query string (see `http.redact_url`).
    """

    errno = errno.EIO

    def __init__(self, message: str, *, errno_: int | None = None, status: int | None = None):
        super().__init__(message)
        if errno_ is not None:
            self.errno = errno_
        self.status = status


class NotFound(PlatformError):
    errno = errno.ENOENT


class AccessDenied(PlatformError):
    """401/403: the token is wrong or lacks the scope, or a presigned URL was refused."""

    errno = errno.EACCES


def error_for_status(status: int, message: str) -> PlatformError:
    """Map an HTTP status that will not be retried to the error (and errno) it stands for."""
    if status == 404:
        return NotFound(message, status=status)
    if status in (401, 403):
        return AccessDenied(message, status=status)
    if status == 416:
        return PlatformError(message, errno_=errno.EINVAL, status=status)
    return PlatformError(message, status=status)
