"""Configuration from env vars: defaults, validation naming the variable, secrets redacted."""

from __future__ import annotations

import dataclasses
import pickle
import sys

import pytest

from taskfleet import AuthenticationSettings, Configuration, ConfigurationError, MetricsSettings
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


def test_the_progress_interval_defaults_to_a_second_and_is_read_from_its_variable():
    assert Configuration.from_env({}).progress_interval == 1.0
    config = Configuration.from_env({"TASKFLEET_PROGRESS_INTERVAL": "0.25"})
    assert config.progress_interval == 0.25
    assert pickle.loads(pickle.dumps(config)).progress_interval == 0.25  # as it reaches workers


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan"])
def test_a_progress_interval_that_is_not_a_positive_number_fails_in_one_line(value):
    with pytest.raises(ConfigurationError) as err:
        Configuration.from_env({"TASKFLEET_PROGRESS_INTERVAL": value})
    message = str(err.value)
    assert err.value.setting == "TASKFLEET_PROGRESS_INTERVAL"
    assert message.startswith("TASKFLEET_PROGRESS_INTERVAL") and "\n" not in message
    assert "a number > 0" in message and repr(value) in message
    with pytest.raises(ConfigurationError, match="TASKFLEET_PROGRESS_INTERVAL"):
        Configuration.from_env({}, progress_interval=0)


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


# -- Configuration() as the Conductor Python SDK builds it ---------------------------------------

SDK_ENV = {
    "CONDUCTOR_SERVER_URL": "http://conductor.internal:8080/api",
    "CONDUCTOR_AUTH_KEY": "key-id",
    "CONDUCTOR_AUTH_SECRET": "key-secret",
    "TASKFLEET_DRAIN_TIMEOUT": "12",
}


def test_configuration_without_arguments_reads_the_environment(monkeypatch):
    for var, value in SDK_ENV.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("NATS_URL", raising=False)
    config = Configuration()
    assert config.resolved_source == "conductor"
    assert config.conductor_server_url == "http://conductor.internal:8080/api"
    assert (config.conductor_auth_key, config.conductor_auth_secret) == ("key-id", "key-secret")
    assert config.drain_timeout == 12.0
    assert Configuration(drain_timeout=3).drain_timeout == 3  # explicit arguments win


def test_the_sdk_argument_names_work(monkeypatch):
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:4222")  # a URL in code wins over the env's
    auth = AuthenticationSettings(key_id="k", key_secret="s3cret")
    config = Configuration(
        server_api_url="http://h:8080/api", authentication_settings=auth, debug=True
    )
    assert config.resolved_source == "conductor"
    assert config.conductor_server_url == "http://h:8080/api"
    assert (config.conductor_auth_key, config.conductor_auth_secret) == ("k", "s3cret")
    assert config.log_level == "debug"
    assert "s3cret" not in repr(config) + repr(auth)
    assert Configuration(base_url="http://h:8080").conductor_server_url == "http://h:8080/api"


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("proxy", "proxy: use HTTPS_PROXY (or HTTP_PROXY) in the pool's environment"),
        (
            "polling_interval",
            "polling_interval: use poll_interval per worker or CONDUCTOR_WORKER_ALL_POLL_INTERVAL",
        ),
        ("domain", "domain: use domain= per worker or CONDUCTOR_WORKER_ALL_DOMAIN"),
        (
            "auth_token_ttl_min",
            "auth_token_ttl_min: tokens are renewed when the server reports them expired;"
            " remove it",
        ),
        ("poll_intervall", "poll_intervall: is not a setting of Configuration"),
    ],
)
def test_sdk_arguments_without_a_use_name_the_taskfleet_equivalent(argument, message):
    with pytest.raises(ConfigurationError) as err:
        Configuration.from_env({}, **{argument: 1})
    assert str(err.value) == message


def test_the_configuration_stays_frozen_and_replace_keeps_working():
    config = Configuration.from_env({}, source="memory")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.source = "nats"  # type: ignore[misc]
    changed = config.replace(drain_timeout=1)
    assert (changed.source, changed.drain_timeout) == ("memory", 1)
    assert pickle.loads(pickle.dumps(changed)) == changed


def test_the_sdk_metrics_settings_become_the_textfile_or_http_settings(tmp_path):
    config = Configuration.from_env({}, state_dir=str(tmp_path))
    textfile = MetricsSettings(file_name="m.prom", update_interval=5).apply(config)
    assert textfile.metrics_textfile == str(tmp_path / "m.prom")
    assert textfile.metrics_textfile_interval == 5
    served = MetricsSettings(http_port=9500).apply(config)
    assert (served.metrics_address, served.metrics_textfile) == ("127.0.0.1:9500", "")
