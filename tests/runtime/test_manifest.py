"""Manifests: every error kind is one readable line naming the file, actor and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from switchyard.runtime import ConfigError
from switchyard.runtime.manifest import default_manifest_path, load_manifest, parse_manifest
from switchyard.testing import free_tcp_endpoint, run_manifest

GOOD = """
[app]
name = "demo"
grace_period = 2.5

[supervisor]
strategy = "rest_for_one"
max_restarts = 4
within = 8.0

[[supervisors]]
name = "edge"
strategy = "one_for_all"

[[actor]]
name = "health"
kind = "echo"
restart = "transient"
mailbox_capacity = 7
supervisor = "edge"
[actor.config]
endpoint = "{endpoint}"
"""


def _parse(text: str) -> object:
    return parse_manifest(text, source="apps/x.toml")


def test_good_manifest_is_validated_into_specs() -> None:
    app = _parse(GOOD.format(endpoint="tcp://127.0.0.1:1"))
    assert app.name == "demo" and app.grace_period == 2.5
    assert app.root.strategy.value == "rest_for_one" and app.root.max_restarts == 4
    assert app.supervisors[0].name == "edge" and app.supervisors[0].strategy.value == "one_for_all"
    (actor,) = app.actors
    assert actor.kind == "echo" and actor.restart.value == "transient" and actor.mailbox_capacity == 7
    assert actor.config.endpoint == "tcp://127.0.0.1:1"


def test_module_colon_class_kind() -> None:
    app = _parse('[app]\nname="x"\n[[actor]]\nname="e"\nkind="switchyard.actors.echo:EchoActor"\n')
    assert app.actors[0].actor_class.__name__ == "EchoActor"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[app\nname=1", "apps/x.toml: not valid TOML"),
        ('[[actor]]\nname="a"\nkind="echo"\n', "apps/x.toml: missing required table [app]"),
        ("[app]\n", "apps/x.toml: missing required key 'app.name'"),
        ('[app]\nname="x"\ncolour="red"\n', "apps/x.toml: unknown key 'app.colour'"),
        ('[app]\nname="x"\ngrace_period="long"\n', "apps/x.toml: key 'app.grace_period': expected float, got str"),
        ('[app]\nname="x"\n[supervisor]\nstrategy="one_for_none"\n', "strategy must be one of one_for_one"),
        ('[app]\nname="x"\n[[actor]]\nname="a"\nkind="nope"\n', "apps/x.toml: actor 'a': unknown actor kind 'nope'"),
        ('[app]\nname="x"\n[[actor]]\nname="a"\n', "apps/x.toml: actor 'a': missing required key 'kind'"),
        ('[app]\nname="x"\n[[actor]]\nname="a"\nkind="echo"\nrestart="sometimes"\n', "restart must be one of"),
        (
            '[app]\nname="x"\n[[actor]]\nname="a"\nkind="echo"\ncolour=1\n',
            "apps/x.toml: actor 'a': unknown key 'colour'",
        ),
        (
            '[app]\nname="x"\n[[actor]]\nname="a"\nkind="echo"\n[actor.config]\nport=1\n',
            "apps/x.toml: actor 'a' [config]: unknown key 'port' (known: endpoint, limits)",
        ),
        (
            '[app]\nname="x"\n[[actor]]\nname="a"\nkind="echo"\n[actor.config]\nendpoint=5\n',
            "apps/x.toml: actor 'a' [config]: key 'endpoint': expected str, got int (5)",
        ),
        (
            '[app]\nname="x"\n[[actor]]\nname="a"\nkind="echo"\n[[actor]]\nname="a"\nkind="echo"\n',
            "apps/x.toml: actor 'a': name is used twice",
        ),
        (
            '[app]\nname="x"\n[[actor]]\nname="a"\nkind="echo"\nsupervisor="ghost"\n',
            "supervisor 'ghost' is not defined",
        ),
        ('[app]\nname="x"\n[[actor]]\nname="a"\nkind="os:path"\n', "is not an Actor subclass"),
        ('[app]\nname="x"\n[[actors]]\nname="a"\nkind="echo"\n', "actors are declared as [[actor]] (singular)"),
        ('[app]\nname="x"\n[[actor]]\nname="a"\nkind="no_such_module:X"\n', "cannot import module 'no_such_module'"),
    ],
)
def test_each_error_kind_is_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _parse(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read manifest"):
        load_manifest(tmp_path / "nope.toml")


def test_default_and_shipped_manifests_validate() -> None:
    shipped = sorted(default_manifest_path().parent.glob("*.toml"))
    assert default_manifest_path() in shipped
    for path in shipped:
        app = load_manifest(path)
        assert app.actors, path


async def test_run_manifest_starts_the_actors() -> None:
    text = GOOD.format(endpoint=free_tcp_endpoint())
    async with run_manifest(text) as system:
        assert await system.lookup("health").ask("hi") == "hi"
        assert system.supervisor("edge").children == ["health"]


def test_an_actor_may_share_the_apps_name() -> None:
    app = parse_manifest('[app]\nname="x"\n[[actor]]\nname="x"\nkind="echo"\n', source="x.toml")
    assert [a.name for a in app.actors] == ["x"]
