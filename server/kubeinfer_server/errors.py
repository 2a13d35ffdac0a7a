"""Domain errors of the serving core.

Every error a client can cause or observe is one of these; the transport maps
each class to a status code in one table (``servicer.STATUS_BY_ERROR``). The
message is written for a person and is safe to send to the client.
"""


class ServingError(Exception):
    """Base class: an error with a message a client may see."""


class InvalidInput(ServingError):
    """The request does not fit the model's signature (dtype, shape, bytes)."""


class ModelNotFound(ServingError):
    """No model (or version) of that name is served here."""


class QueueFull(ServingError):
    """The model's queue is at --max-queue-size; retry later or scale out."""


class NotReady(ServingError):
    """The server is starting or draining and takes no new work."""


class DeadlineExpired(ServingError):
    """The client's deadline passed before the request reached the model."""


class PermissionDenied(ServingError):
    """The verified client identity is not in --allowed-clients."""


class ModelLoadError(Exception):
    """A model file could not be loaded; raised at startup, never to a client."""
