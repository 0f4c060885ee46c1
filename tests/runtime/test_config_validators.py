"""Range and syntax validators and renamed keys in build_config, and what `switchyard check` reports."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import attrs
import pytest

from switchyard.runtime import ConfigError, build_config
from switchyard.runtime.config import endpoint, existing_file, host_port, non_negative, port, positive
from switchyard.runtime.supervisor import DEFAULT_POLICY, RestartPolicy

CLI = [sys.executable, "-m", "switchyard.runtime.cli"]


@attrs.frozen
class _Inner:
    timeout: float = attrs.field(default=1.0, validator=positive)


@attrs.frozen
class _Config:
    renamed_keys: ClassVar[dict[str, str]] = {"old_port": "port", "timeout": "inner.timeout"}

    endpoint: str = attrs.field(default="tcp://127.0.0.1:1", validator=endpoint)
    port: int = attrs.field(default=80, validator=port)
    size: int | None = attrs.field(default=None, validator=positive)
    grace: float = attrs.field(default=0.0, validator=non_negative)
    status: str = attrs.field(default="127.0.0.1:8090", validator=host_port)
    model: str = attrs.field(default="", validator=existing_file)
    inner: _Inner = attrs.Factory(_Inner)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"port": 99999}, "key 'port': must be a port number 0..65535, got 99999"),
        ({"endpoint": "tcp//host:5"}, "key 'endpoint': must be an endpoint like"),
        ({"endpoint": "tcp://host:70000"}, "port 70000"),
        ({"size": -5}, "key 'size': must be > 0, got -5"),
        ({"grace": -1}, "key 'grace': must be >= 0, got -1"),
        ({"status": "8090"}, "key 'status': must be HOST:PORT"),
        ({"model": "/no/such/model.onnx"}, "key 'model': file '/no/such/model.onnx' does not exist"),
        ({"inner": {"timeout": 0}}, "key 'inner.timeout': must be > 0"),
    ],
)
def test_each_validator_names_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(_Config, data, where="x.toml: actor 'a' [config]")
    assert str(info.value).startswith("x.toml: actor 'a' [config]: ")
    assert message in str(info.value)


def test_good_values_pass() -> None:
    cfg = build_config(
        _Config,
        {"endpoint": "ipc://run/x.sock", "port": 0, "size": 5, "model": __file__, "status": "[::1]:1"},
        where="w",
    )
    assert cfg.port == 0 and cfg.size == 5


def test_renamed_keys_still_work_with_one_warning_each(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="switchyard.config"):
        cfg = build_config(_Config, {"old_port": 81, "timeout": 2.5}, where="w")
    assert cfg.port == 81 and cfg.inner.timeout == 2.5
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "w: key 'old_port' is deprecated: write 'port' instead",
        "w: key 'timeout' is deprecated: write 'inner.timeout' instead",
    ]
    with pytest.raises(ConfigError, match="both 'old_port' and its new name 'port' are set"):
        build_config(_Config, {"old_port": 81, "port": 82}, where="w")


def test_restart_policy_is_one_frozen_value() -> None:
    assert DEFAULT_POLICY == RestartPolicy()
    with pytest.raises(ValueError):
        RestartPolicy(max_restarts=-1)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        DEFAULT_POLICY.max_restarts = 9  # type: ignore[misc]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[app]\nname="x"\ngrace_period=-1\n', "key 'app.grace_period': must be >= 0, got -1"),
        (
            '[app]\nname="x"\n[[actor]]\nname="h"\nkind="echo"\n[actor.config]\nendpoint="tcp//127.0.0.1:5"\n',
            "actor 'h' [config]: key 'endpoint': must be an endpoint",
        ),
        (
            '[app]\nname="x"\n[[actor]]\nname="h"\nkind="echo"\n[actor.config.limits]\nmax_message_size=-5\n',
            "actor 'h' [config]: key 'limits.max_message_size': must be > 0, got -5",
        ),
        (
            '[app]\nname="x"\n[[actor]]\nname="h"\nkind="echo"\n[actor.config]\nendpoint="tcp://127.0.0.1:99999"\n',
            "port 99999",
        ),
        ('[app]\nname="x"\n[supervisor]\nwithin=0\n', "key 'supervisor.within': must be > 0"),
        (
            '[app]\nname="x"\n[[actor]]\nname="r"\nkind="rime_state"\n[actor.config.curve]\n'
            'enabled=true\nserver_key_file="/no/such.key_secret"\n',
            "actor 'r' [config]: key 'curve.server_key_file': file '/no/such.key_secret' does not exist",
        ),
    ],
)
def test_check_catches_what_run_would_fail_on(tmp_path: Path, body: str, message: str) -> None:
    manifest = tmp_path / "bad.toml"
    manifest.write_text(body)
    result = subprocess.run([*CLI, "check", str(manifest)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr and str(manifest) in result.stderr


def test_flat_endpoint_limits_still_work_with_one_warning_and_nested_tables_keep_actor_defaults(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from switchyard.services.aipara.ai_stream import AiStreamConfig

    with caplog.at_level("WARNING"):
        old = build_config(AiStreamConfig, {"max_message_size": 1000}, where="m.toml: actor 'a'")
    assert old.limits.max_message_size == 1000
    assert old.limits.max_concurrent == 256  # the actor's own default, not the limits class's
    warnings = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert warnings == [
        "m.toml: actor 'a': key 'max_message_size' is deprecated: write 'limits.max_message_size' instead"
    ]
    new = build_config(AiStreamConfig, {"limits": {"sndhwm": 10}}, where="m.toml: actor 'a'")
    assert (new.limits.sndhwm, new.limits.max_message_size, new.limits.max_concurrent) == (10, 64 * 1024, 256)
    with pytest.raises(ConfigError, match="both 'max_message_size' and its new name 'limits.max_message_size'"):
        build_config(AiStreamConfig, {"max_message_size": 1, "limits": {"max_message_size": 2}}, where="m")
