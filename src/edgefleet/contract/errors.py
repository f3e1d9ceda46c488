"""Error types of the contract, each carrying a message a user can act on."""

import errno

from pydantic import ValidationError

# errors of the machine rather than of what it was given: out of descriptors, memory, disk space
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOSPC, errno.EDQUOT})


def first_validation_error(exc: ValidationError, whole: str) -> str:
    """The first error pydantic found, as `field.path: message`; `whole` stands for the path when the error
    is about the object as a whole."""
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc']) or whole}: {first['msg']}"


def is_resource_error(exc: BaseException) -> bool:
    """An OSError that says the machine ran out of something (worth trying again later)."""
    return isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS


class EdgefleetError(Exception):
    """Base class: the message says what was wrong, where, and what to do."""


class ProfileError(EdgefleetError):
    """A device profile is unknown or invalid."""


class BundleError(EdgefleetError):
    """A bundle is malformed, tampered with, or signed by an untrusted key."""


class ClientError(EdgefleetError):
    """Something wrong in what a client sent (an inference request): answered, never the model's fault."""


class TensorError(ClientError):
    """A tensor does not match what the model declares (dtype, shape, encoding)."""
