"""The actor runtime: actors, refs, supervisors, the system, config and the CLI."""

from switchyard.runtime.actor import Actor, NoConfig
from switchyard.runtime.config import build_config
from switchyard.runtime.errors import (
    ActorError,
    ActorNotFound,
    ActorStartFailed,
    ActorStopped,
    AskTimeout,
    ConfigError,
    Crash,
    MailboxFull,
    SupervisorEscalation,
    SwitchyardError,
)
from switchyard.runtime.ref import ActorRef, ReplyStream
from switchyard.runtime.stats import ActorStats
from switchyard.runtime.supervisor import DEFAULT_POLICY, Restart, RestartPolicy, Strategy, Supervisor
from switchyard.runtime.system import System, current_system, open_system

__all__ = [
    "DEFAULT_POLICY",
    "Actor",
    "ActorError",
    "ActorNotFound",
    "ActorRef",
    "ActorStartFailed",
    "ActorStats",
    "ActorStopped",
    "AskTimeout",
    "ConfigError",
    "Crash",
    "MailboxFull",
    "NoConfig",
    "ReplyStream",
    "Restart",
    "RestartPolicy",
    "Strategy",
    "Supervisor",
    "SupervisorEscalation",
    "SwitchyardError",
    "System",
    "build_config",
    "current_system",
    "open_system",
]
