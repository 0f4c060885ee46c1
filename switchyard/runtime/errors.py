"""Exceptions a caller of the runtime may catch."""

from __future__ import annotations

__all__ = [
    "ActorError",
    "ActorNotFound",
    "ActorStartFailed",
    "ActorStopped",
    "AskTimeout",
    "ConfigError",
    "Crash",
    "MailboxFull",
    "SupervisorEscalation",
    "SwitchyardError",
    "describe_start_failure",
    "single_cause",
]


def single_cause(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups, else ``exc``.

    Trio nurseries wrap even a lone failure in an ``ExceptionGroup``; restarts are
    logged and counted with the real cause.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class SwitchyardError(Exception):
    """Base class of every error the runtime raises on purpose."""


class MailboxFull(SwitchyardError):
    """``tell_nowait`` found the actor's bounded mailbox full (backpressure)."""

    def __init__(self, actor: str, capacity: int) -> None:
        super().__init__(f"mailbox of actor {actor!r} is full ({capacity} messages waiting)")
        self.actor = actor
        self.capacity = capacity


class ActorStopped(SwitchyardError):
    """The actor has stopped for good: its mailbox no longer accepts messages."""

    def __init__(self, actor: str, detail: str = "has stopped") -> None:
        super().__init__(f"actor {actor!r} {detail}")
        self.actor = actor


class ActorNotFound(SwitchyardError, LookupError):
    """No actor is registered under that name."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no actor named {name!r}; known: {', '.join(sorted(known)) or '(none)'}")
        self.name = name


class AskTimeout(SwitchyardError, TimeoutError):
    """``ask`` got no reply within its timeout. The actor may still process the message."""

    def __init__(self, actor: str, timeout: float) -> None:
        super().__init__(f"actor {actor!r} did not reply within {timeout:g} s")
        self.actor = actor
        self.timeout = timeout


class ActorError(SwitchyardError):
    """A handler raised while serving this caller's ``ask`` or ``stream``.

    The actor itself goes on. ``exception`` is the original exception object (also
    chained as ``__cause__``); ``type_name`` and ``detail`` describe it for callers
    that only log or forward it.
    """

    def __init__(self, actor: str, exception: BaseException | None, detail: str | None = None) -> None:
        self.actor = actor
        self.exception = exception
        self.type_name = type(exception).__name__ if exception is not None else "ActorError"
        self.detail = detail if detail is not None else str(exception)
        super().__init__(f"actor {actor!r} failed: {self.type_name}: {self.detail}")
        if exception is not None:
            self.__cause__ = exception


class Crash(SwitchyardError):
    """Raise from a handler to crash the actor on purpose (its supervisor decides what next).

    Any other exception from ``handle`` is reported to the caller and the actor goes on.
    """


class SupervisorEscalation(SwitchyardError):
    """A supervisor exceeded its restart intensity and gave up; its parent sees this."""

    def __init__(self, supervisor: str, child: str, restarts: int, within: float) -> None:
        super().__init__(
            f"supervisor {supervisor!r} gave up: child {child!r} failed more than {restarts} times within {within:g} s"
        )
        self.supervisor = supervisor
        self.child = child


class ConfigError(SwitchyardError):
    """A configuration value is missing, unknown or of the wrong type."""


class ActorStartFailed(SwitchyardError):
    """An actor of an app could not start (its ``on_start`` raised, e.g. a port in use).

    ``actor`` names it, ``exception`` is the original error (also ``__cause__``) and
    ``addresses`` are the endpoint-like values of its config (for the message).
    """

    def __init__(self, actor: str, exception: BaseException, addresses: tuple[str, ...] = ()) -> None:
        self.actor = actor
        self.exception = exception
        self.addresses = addresses
        super().__init__(describe_start_failure(actor, exception, addresses))
        self.__cause__ = exception


_BIND_ERRNOS = {98: "address already in use", 99: "address not available", 13: "permission denied"}


def describe_start_failure(actor: str, exc: BaseException, addresses: tuple[str, ...] = ()) -> str:
    """One line for a start failure: ``actor 'x' cannot bind ADDR: address already in use``.

    Works for ``OSError`` and ``zmq.ZMQError`` (both carry ``errno``) and falls back
    to ``actor 'x' cannot start: Type: message`` for anything else.
    """
    errno = getattr(exc, "errno", None)
    if isinstance(errno, int) and errno in _BIND_ERRNOS:
        where = ", ".join(addresses) if addresses else "its address"
        return f"actor {actor!r} cannot bind {where}: {_BIND_ERRNOS[errno]}"
    detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None:
        detail = f"{exc.filename}: {detail}"
    return f"actor {actor!r} cannot start: {type(exc).__name__}: {detail}"
