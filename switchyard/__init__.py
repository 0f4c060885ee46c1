"""switchyard: a Trio structured-concurrency actor framework.

Actors own their state behind bounded mailboxes and run in Trio nurseries under
OTP-style supervisors; transports bridge ZeroMQ, Unix/TCP sockets, WebSockets and
file directories to those mailboxes.

The public entry points are re-exported here::

    async with switchyard.open_system(name="app") as system:
        ref = await system.spawn(MyActor, name="mine")
        reply = await ref.ask("hello", timeout=1.0)
"""

from switchyard.runtime import (
    Actor,
    ActorError,
    ActorNotFound,
    ActorRef,
    ActorStopped,
    AskTimeout,
    ConfigError,
    Crash,
    MailboxFull,
    Restart,
    RestartPolicy,
    Strategy,
    Supervisor,
    SupervisorEscalation,
    System,
    open_system,
)

__all__ = [
    "Actor",
    "ActorError",
    "ActorNotFound",
    "ActorRef",
    "ActorStopped",
    "AskTimeout",
    "ConfigError",
    "Crash",
    "MailboxFull",
    "Restart",
    "RestartPolicy",
    "Strategy",
    "Supervisor",
    "SupervisorEscalation",
    "System",
    "open_system",
]
__version__ = "0.1.0"
