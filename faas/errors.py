"""Exceptions shared by the client, the endpoint and the workers."""

from __future__ import annotations


def last_line(tb: str | None) -> str:
    """The last line of a traceback (the exception and its message), for one-line notes."""
    return tb.strip().splitlines()[-1] if tb and tb.strip() else "raised"


class FaasError(Exception):
    """Base class of faas' own errors."""


class RemoteTraceback(Exception):
    """Carries the remote traceback text; set as ``__cause__`` of a re-raised remote exception."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\nRemote traceback:\n{self.tb}"""'


class RemoteError(FaasError):
    """Stands in for a remote exception that could not be pickled back."""

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message


class ContextInitError(FaasError):
    """The context's loader raised; the invocation never ran."""


class SerializationError(FaasError, TypeError):
    """An argument, function or result could not be serialised."""


class PayloadTooLarge(FaasError, ValueError):
    """A payload exceeds the endpoint's configured maximum size."""


class ProtocolError(FaasError):
    """A malformed or unexpected message."""


class EndpointError(FaasError):
    """The endpoint refused a request or could not be reached."""


class InvocationFailed(FaasError):
    """The platform gave up on an invocation (e.g. its workers kept being lost)."""


class NotAuthorised(EndpointError):
    """The endpoint refused this client's key (``faas-endpoint authorize`` lets it in)."""


class InvocationTimeout(FaasError, TimeoutError):
    """The invocation ran longer than its timeout on a worker and was interrupted."""


class Interrupted(BaseException):
    """Raised inside a running invocation to stop it (timeout or cancel).

    A BaseException, so that the user's ``except Exception`` cannot swallow it."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(message or reason)
        self.reason = reason  # "timeout" or "cancel"


class StoreUnavailable(FaasError):
    """The store cannot be used: missing, deleted or replaced under the daemon, or written by a
    newer faas; or (on a future) it could not record that submission or outcome in time."""
