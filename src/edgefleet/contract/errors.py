"""Error types of the contract, each carrying a message a user can act on."""


class EdgefleetError(Exception):
    """Base class: the message says what was wrong, where, and what to do."""


class ProfileError(EdgefleetError):
    """A device profile is unknown or invalid."""


class BundleError(EdgefleetError):
    """A bundle is malformed, tampered with, or signed by an untrusted key."""


class TensorError(EdgefleetError):
    """A tensor does not match what the model declares (dtype, shape, encoding)."""
