"""What the supervisor and the runner ask a source about itself, answered by each source."""

from __future__ import annotations

from taskfleet import Task
from taskfleet._config import Configuration
from taskfleet._sources import create_source
from taskfleet._sources.memory import MemorySource


def _conductor(url: str) -> Configuration:
    return Configuration(source="conductor", conductor_server_url=url)


def _nats(url: str, **settings) -> Configuration:
    return Configuration(source="nats", nats_url=url, **settings)


def test_spool_keys_name_the_server_without_its_secrets():
    conductor = create_source(_conductor("http://user:pw@conductor:8080/api"))
    assert conductor.spool_key() == "conductor http://***@conductor:8080/api"
    nats = create_source(_nats("nats://a:pw@n1:4222,nats://n2:4222", nats_prefix="jobs"))
    assert nats.spool_key() == "nats jobs nats://***@n1:4222,nats://n2:4222"
    assert MemorySource().spool_key() == "memory"


def test_spool_keys_of_different_servers_differ():
    one = create_source(_conductor("http://one:8080/api")).spool_key()
    two = create_source(_conductor("http://two:8080/api")).spool_key()
    other_prefix = create_source(_nats("nats://n1:4222", nats_prefix="other")).spool_key()
    assert len({one, two, other_prefix, create_source(_nats("nats://n1:4222")).spool_key()}) == 4


def test_a_lease_is_extended_at_half_the_time_the_server_gives():
    timed = Task("t1", "t", response_timeout_seconds=60.0)
    untimed = Task("t2", "t")
    conductor = create_source(_conductor("http://conductor:8080/api"))
    assert conductor.lease_interval(timed) == 30.0
    assert conductor.lease_interval(untimed) is None
    # NATS: a task without its own timeout lives by the consumer's ack wait.
    nats = create_source(_nats("nats://n1:4222", nats_ack_wait=40.0))
    assert nats.lease_interval(untimed) == 20.0
    assert nats.lease_interval(timed) == 30.0


def test_each_source_names_its_own_module_for_the_fork_server():
    assert create_source(_conductor("http://c/api")).preload_modules() == (
        "taskfleet._sources.conductor",
    )
    assert create_source(_nats("nats://n1:4222")).preload_modules() == ("taskfleet._sources.nats",)


def test_worker_processes_get_the_configuration_as_given_when_nothing_was_resolved():
    config = _nats("nats://n1:4222")
    assert create_source(config).worker_config(config) is config
    config = _conductor("http://c/api")
    assert create_source(config).worker_config(config) is config
