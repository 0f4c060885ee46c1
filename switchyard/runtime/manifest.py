"""App manifests: TOML files naming the actors of an app, their config and supervision.

::

    [app]
    name = "aipara"
    grace_period = 5.0            # seconds in-flight work gets on shutdown

    [supervisor]                  # the root supervisor (optional)
    strategy = "one_for_one"      # one_for_one | one_for_all | rest_for_one
    max_restarts = 5
    within = 10.0

    [[supervisors]]               # nested supervisors (optional)
    name = "backends"
    strategy = "one_for_all"
    parent = "aipara"             # default: the root

    [[actor]]
    name = "rime_state"
    kind = "rime_state"           # a short name (`switchyard kinds`) or "module:Class"
    restart = "permanent"         # permanent | transient | temporary
    mailbox_capacity = 128        # optional; the actor class has a default
    supervisor = "backends"       # optional; default: the root
    [actor.config]                # validated into the actor's Config class
    endpoint = "tcp://127.0.0.1:10086"

Every problem becomes one :class:`ConfigError` line naming the file, the actor and
the key. :func:`run_app` starts a loaded manifest inside a system.
"""

from __future__ import annotations

import tomllib
from contextlib import AbstractAsyncContextManager
from importlib import resources
from pathlib import Path
from typing import Any

import attrs

from switchyard.runtime.actor import Actor
from switchyard.runtime.config import build_config, non_negative, positive
from switchyard.runtime.errors import ActorStartFailed, ConfigError, single_cause
from switchyard.runtime.kinds import resolve_kind
from switchyard.runtime.supervisor import DEFAULT_POLICY, Restart, Strategy, parse_enum
from switchyard.runtime.system import System, open_system

__all__ = [
    "DEFAULT_APP",
    "DEFAULT_STATUS",
    "STATUS_KIND",
    "ActorSpec",
    "AppSpec",
    "SupervisorSpec",
    "actor_addresses",
    "default_manifest_path",
    "load_manifest",
    "open_app",
    "parse_manifest",
    "shipped_apps",
    "start_app",
]

DEFAULT_APP = "default.toml"
#: ``[app] status`` when a manifest does not say: loopback, any free port.
DEFAULT_STATUS = "127.0.0.1:0"
#: The kind (by name: the runtime imports no concrete actor) serving /health, /metrics and /.
STATUS_KIND = "status"


@attrs.frozen
class _AppTable:
    name: str
    grace_period: float = attrs.field(default=5.0, validator=non_negative)
    description: str = ""
    status: bool | str | dict[str, Any] = DEFAULT_STATUS


@attrs.frozen
class _SupervisorTable:
    strategy: str = DEFAULT_POLICY.strategy.value
    max_restarts: int = attrs.field(default=DEFAULT_POLICY.max_restarts, validator=non_negative)
    within: float = attrs.field(default=DEFAULT_POLICY.within, validator=positive)


@attrs.frozen
class _NestedSupervisorTable:
    name: str
    strategy: str = DEFAULT_POLICY.strategy.value
    max_restarts: int = attrs.field(default=DEFAULT_POLICY.max_restarts, validator=non_negative)
    within: float = attrs.field(default=DEFAULT_POLICY.within, validator=positive)
    restart: str = "permanent"
    parent: str | None = None


@attrs.frozen
class _ActorTable:
    name: str
    kind: str
    restart: str = "permanent"
    mailbox_capacity: int | None = attrs.field(default=None, validator=positive)
    supervisor: str | None = None
    config: dict[str, Any] = attrs.Factory(dict)


@attrs.frozen
class _ManifestTable:
    app: _AppTable
    supervisor: _SupervisorTable = attrs.Factory(_SupervisorTable)
    supervisors: list[_NestedSupervisorTable] = attrs.Factory(list)


@attrs.frozen
class SupervisorSpec:
    name: str
    strategy: Strategy
    max_restarts: int
    within: float
    restart: Restart = Restart.PERMANENT
    parent: str | None = None


@attrs.frozen
class ActorSpec:
    name: str
    kind: str
    actor_class: type[Actor]
    config: Any
    restart: Restart
    mailbox_capacity: int | None
    supervisor: str | None


@attrs.frozen
class AppSpec:
    """A validated manifest: everything needed to start the app, nothing started yet."""

    name: str
    source: str
    grace_period: float
    root: SupervisorSpec
    supervisors: tuple[SupervisorSpec, ...]
    actors: tuple[ActorSpec, ...]
    description: str = ""
    #: The status actor (``[app] status``), started after the others; ``None`` when off.
    status: ActorSpec | None = None


def shipped_apps() -> dict[str, Path]:
    """Name -> path of every manifest shipped in ``switchyard/apps`` (``switchyard run NAME``)."""
    folder = Path(str(resources.files("switchyard.apps")))
    return {path.stem: path for path in sorted(folder.glob("*.toml"))}


def default_manifest_path() -> Path:
    """The built-in default app shipped inside the package."""
    return Path(str(resources.files("switchyard.apps").joinpath(DEFAULT_APP)))


def load_manifest(path: str | Path) -> AppSpec:
    """Read and validate the manifest at ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read manifest: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: manifest is not UTF-8 text") from None
    return parse_manifest(text, source=str(path))


def parse_manifest(text: str, *, source: str = "<manifest>") -> AppSpec:
    """Validate manifest ``text``; ``source`` names it in error messages."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    if "app" not in raw:
        raise ConfigError(f"{source}: missing required table [app]")
    if "actors" in raw:
        raise ConfigError(f"{source}: unknown table [[actors]]: actors are declared as [[actor]] (singular)")
    raw_actors = raw.pop("actor", [])
    if not isinstance(raw_actors, list):
        raise ConfigError(f"{source}: [[actor]] must be an array of tables")
    table = build_config(_ManifestTable, raw, where=source)
    actor_tables = []
    for index, raw_actor in enumerate(raw_actors):
        label = raw_actor.get("name", f"#{index + 1}") if isinstance(raw_actor, dict) else f"#{index + 1}"
        actor_tables.append(build_config(_ActorTable, raw_actor, where=f"{source}: actor {label!r}"))
    root = SupervisorSpec(
        name=table.app.name,
        strategy=parse_enum(Strategy, table.supervisor.strategy, f"{source}: [supervisor] strategy"),
        max_restarts=table.supervisor.max_restarts,
        within=table.supervisor.within,
    )
    names: set[str] = {root.name}
    nested = []
    for sup in table.supervisors:
        where = f"{source}: supervisor {sup.name!r}"
        if sup.name in names:
            raise ConfigError(f"{where}: name is used twice")
        if sup.parent is not None and sup.parent not in names:
            raise ConfigError(f"{where}: parent {sup.parent!r} is not a supervisor defined above it")
        names.add(sup.name)
        nested.append(
            SupervisorSpec(
                name=sup.name,
                strategy=parse_enum(Strategy, sup.strategy, f"{where}: strategy"),
                max_restarts=sup.max_restarts,
                within=sup.within,
                restart=parse_enum(Restart, sup.restart, f"{where}: restart"),
                parent=sup.parent,
            )
        )
    actors = []
    names.discard(root.name)  # actors and the root supervisor live in separate namespaces
    for entry in actor_tables:
        where = f"{source}: actor {entry.name!r}"
        if entry.name in names:
            raise ConfigError(f"{where}: name is used twice")
        if entry.supervisor is not None and entry.supervisor not in {s.name for s in nested} | {root.name}:
            raise ConfigError(f"{where}: supervisor {entry.supervisor!r} is not defined in [[supervisors]]")
        if entry.mailbox_capacity is not None and entry.mailbox_capacity < 1:
            raise ConfigError(f"{where}: key 'mailbox_capacity' must be >= 1")
        names.add(entry.name)
        try:
            actor_class = resolve_kind(entry.kind)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        config: Any = build_config(actor_class.Config, entry.config, where=f"{where} [config]")
        try:
            actor_class.check_config(config)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"{where} [config]: {exc}") from None
        actors.append(
            ActorSpec(
                name=entry.name,
                kind=entry.kind,
                actor_class=actor_class,
                config=config,
                restart=parse_enum(Restart, entry.restart, f"{where}: restart"),
                mailbox_capacity=entry.mailbox_capacity,
                supervisor=entry.supervisor,
            )
        )
    return AppSpec(
        name=table.app.name,
        source=source,
        grace_period=table.app.grace_period,
        root=root,
        supervisors=tuple(nested),
        actors=tuple(actors),
        description=table.app.description,
        status=_status_spec(table.app.status, {a.name for a in actors}, f"{source}: [app] status"),
    )


def _status_spec(value: bool | str | dict[str, Any], taken: set[str], where: str) -> ActorSpec | None:
    if value is False or value == "":
        return None
    if value is True:
        value = DEFAULT_STATUS
    if isinstance(value, str):
        host, sep, number = value.rpartition(":")
        if not sep or not host or not number.isdigit():
            raise ConfigError(f"{where}: must be HOST:PORT like 127.0.0.1:8090, a table or false, got {value!r}")
        value = {"host": host.strip("[]"), "port": int(number)}
    try:
        actor_class = resolve_kind(STATUS_KIND)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    name = "status" if "status" not in taken else "_status"
    return ActorSpec(
        name=name,
        kind=STATUS_KIND,
        actor_class=actor_class,
        config=build_config(actor_class.Config, value, where=where),
        restart=Restart.PERMANENT,
        mailbox_capacity=None,
        supervisor=None,
    )


async def start_app(system: System, app: AppSpec) -> None:
    """Start ``app``'s supervisors and actors in manifest order inside ``system``.

    Returns once every actor is ready; raises the first start failure.
    """
    for sup in app.supervisors:
        await system.spawn_supervisor(
            sup.name,
            strategy=sup.strategy,
            max_restarts=sup.max_restarts,
            within=sup.within,
            restart=sup.restart,
            supervisor=sup.parent,
        )
    for actor in (*app.actors, *([app.status] if app.status is not None else [])):
        supervisor = None if actor.supervisor in (None, app.root.name) else actor.supervisor
        try:
            await system.spawn(
                actor.actor_class,
                name=actor.name,
                config=actor.config,
                restart=actor.restart,
                mailbox_capacity=actor.mailbox_capacity,
                supervisor=supervisor,
            )
        except Exception as raised:
            exc = single_cause(raised)
            if isinstance(exc, ConfigError | ActorStartFailed):
                raise exc from None
            raise ActorStartFailed(actor.name, exc, actor_addresses(actor.config)) from exc


_ADDRESS_HINTS = ("endpoint", "address", "bind", "url")


def actor_addresses(config: Any) -> tuple[str, ...]:
    """The endpoint-like values of an actor config (``*endpoint*``, ``*address*``, host+port).

    Used to name what an actor serves in the start banner and in start failures.
    """
    if not attrs.has(type(config)):
        return ()
    found: list[str] = []
    values = attrs.asdict(config, recurse=False)
    for key, value in values.items():
        if isinstance(value, str) and value and any(hint in key for hint in _ADDRESS_HINTS):
            found.append(value)
        elif attrs.has(type(value)):
            found.extend(actor_addresses(value))
    host, port = values.get("host"), values.get("port")
    if isinstance(host, str) and isinstance(port, int):
        found.append(f"{host}:{port}")
    return tuple(dict.fromkeys(found))


def open_app(app: AppSpec, *, grace_period: float | None = None) -> AbstractAsyncContextManager[System]:
    """``open_system`` configured from ``app`` (root policy and grace period)."""
    return open_system(
        app.name,
        strategy=app.root.strategy,
        max_restarts=app.root.max_restarts,
        within=app.root.within,
        grace_period=app.grace_period if grace_period is None else grace_period,
    )
