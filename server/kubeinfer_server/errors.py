"""Domain errors of the serving core.

Every error a client can cause or observe is one of these. ``code_of`` names
each class's status code in one table, ``CODE_BY_ERROR``, in gRPC's names (the
vocabulary of the metrics and the access log, whatever the transport); the
gRPC servicer and the REST app map those names to their own status codes. The
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


class Unauthenticated(ServingError):
    """The server verifies client certificates and the caller presented none."""


class ModelLoadError(Exception):
    """A model file could not be loaded; raised at startup, never to a client."""


CODE_BY_ERROR: dict[type[BaseException], str] = {
    InvalidInput: "INVALID_ARGUMENT",
    ModelNotFound: "NOT_FOUND",
    QueueFull: "RESOURCE_EXHAUSTED",
    NotReady: "UNAVAILABLE",
    DeadlineExpired: "DEADLINE_EXCEEDED",
    PermissionDenied: "PERMISSION_DENIED",
    Unauthenticated: "UNAUTHENTICATED",
}
INTERNAL = "INTERNAL"
INTERNAL_MESSAGE = "internal error; the server log has the details"


def code_of(exc: BaseException) -> tuple[str, str]:
    """The status code name and the client-safe message for an exception raised serving a call."""
    code = CODE_BY_ERROR.get(type(exc))
    if code is not None:
        return code, str(exc)
    for cls, name in CODE_BY_ERROR.items():
        if isinstance(exc, cls):
            return name, str(exc)
    return INTERNAL, INTERNAL_MESSAGE
