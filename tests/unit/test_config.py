"""Configuration from env vars: defaults, validation naming the variable, secrets redacted."""

from __future__ import annotations

import sys

import pytest

from taskfleet import Configuration, ConfigurationError
from taskfleet import _config as config_module


def test_defaults_select_the_embedded_nats_server():
    config = Configuration.from_env({})
    assert config.resolved_source == "nats"
    assert config.embedded_nats
    assert config.metrics_bind == ("127.0.0.1", 9464)


def test_conductor_url_selects_conductor():
    config = Configuration.from_env({"CONDUCTOR_SERVER_URL": "http://localhost:8080/api"})
    assert config.resolved_source == "conductor"


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"CONDUCTOR_SERVER_URL": "localhost:8080"}, "CONDUCTOR_SERVER_URL"),
        ({"NATS_URL": "http://x:4222"}, "NATS_URL"),
        ({"TASKFLEET_DRAIN_TIMEOUT": "soon"}, "TASKFLEET_DRAIN_TIMEOUT"),
        ({"TASKFLEET_SOURCE": "kafka"}, "TASKFLEET_SOURCE"),
        ({"TASKFLEET_METRICS_ADDRESS": "9464"}, "TASKFLEET_METRICS_ADDRESS"),
        ({"CONDUCTOR_SERVER_URL": "http://h/api", "NATS_URL": "nats://h:4222"}, "TASKFLEET_SOURCE"),
        (
            {"CONDUCTOR_SERVER_URL": "http://h/api", "CONDUCTOR_AUTH_KEY": "k"},
            "CONDUCTOR_AUTH_SECRET",
        ),
    ],
)
def test_bad_settings_fail_naming_the_variable(env, setting):
    with pytest.raises(ConfigurationError) as err:
        Configuration.from_env(env)
    assert err.value.setting == setting
    assert str(err.value).startswith(setting)


def test_secrets_are_redacted_in_repr_and_describe():
    config = Configuration.from_env(
        {
            "CONDUCTOR_SERVER_URL": "http://h/api",
            "CONDUCTOR_AUTH_KEY": "key-id",
            "CONDUCTOR_AUTH_SECRET": "s3cr3t-value",
        }
    )
    assert "s3cr3t-value" not in repr(config)
    assert "s3cr3t-value" not in str(config.describe())


def test_credentials_in_urls_are_redacted():
    config = Configuration.from_env({"NATS_URL": "nats://user:hunter2@h:4222"})
    assert "hunter2" not in str(config.describe())


@pytest.mark.parametrize("version", [(3, 10, 0), (3, 10, 8)])
def test_forkserver_is_refused_on_pythons_open_to_cve_2022_42919(monkeypatch, version):
    monkeypatch.setattr(config_module, "PYTHON_VERSION", version)
    with pytest.raises(ConfigurationError) as caught:
        Configuration.from_env({"TASKFLEET_START_METHOD": "forkserver"})
    assert caught.value.setting == "TASKFLEET_START_METHOD"
    assert "CVE-2022-42919" in str(caught.value) and "\n" not in str(caught.value)
    # Left to itself, the pool starts its processes another way there.
    assert Configuration.from_env({}).resolved_start_method == "spawn"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forkserver is Linux's default")
def test_forkserver_stays_the_linux_default_on_fixed_pythons(monkeypatch):
    monkeypatch.setattr(config_module, "PYTHON_VERSION", (3, 10, 9))
    assert Configuration.from_env({}).resolved_start_method == "forkserver"
    assert Configuration.from_env({"TASKFLEET_START_METHOD": "forkserver"}).start_method
