"""The Kubernetes examples of docs/deployment.md parse, and every metric, label and setting they
name exists: the Deployment's settings, its grace period against its drain timeout, and the KEDA
and HPA objects that scale it on ``taskfleet_queue_depth``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from test_metrics_assets import SERIES, problems

from taskfleet._config import SETTINGS
from taskfleet._options import OPTIONS

PAGE = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"


def documents() -> list[dict[str, Any]]:
    blocks = re.findall(r"^```yaml\n(.*?)^```", PAGE.read_text(), re.S | re.M)
    return [doc for block in blocks for doc in yaml.safe_load_all(block) if doc]


def of_kind(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in documents() if d.get("kind") == kind]
    return doc


def deployment_env() -> dict[str, Any]:
    (container,) = of_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


def known_variable(name: str) -> bool:
    if name in {env for _, env, _, _ in SETTINGS}:
        return True
    properties = {o.env for o in OPTIONS if o.env}
    return any(re.fullmatch(rf"CONDUCTOR_WORKER_[A-Z0-9_]+_{prop}", name) for prop in properties)


def test_every_setting_the_deployment_names_exists():
    unknown = [name for name in deployment_env() if not known_variable(name)]
    assert not unknown


def test_the_grace_period_covers_the_drain_timeout_with_a_margin():
    spec = of_kind("Deployment")["spec"]["template"]["spec"]
    drain = float(deployment_env()["TASKFLEET_DRAIN_TIMEOUT"])
    assert spec["terminationGracePeriodSeconds"] >= drain + 10


def test_the_scrape_port_is_the_pools_metrics_port():
    template = of_kind("Deployment")["spec"]["template"]
    port = deployment_env()["TASKFLEET_METRICS_ADDRESS"].rsplit(":", 1)[1]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == port
    (container,) = template["spec"]["containers"]
    assert [p["containerPort"] for p in container["ports"]] == [int(port)]


def served_task_types() -> set[str]:
    """The task types the Deployment's settings name (``CONDUCTOR_WORKER_<TYPE>_...``)."""
    names = set()
    for var in deployment_env():
        for option in OPTIONS:
            if option.env and var.startswith("CONDUCTOR_WORKER_") and var.endswith(option.env):
                names.add(var.removeprefix("CONDUCTOR_WORKER_").removesuffix("_" + option.env))
    return names


def check_query(query: str) -> None:
    assert not problems(query), problems(query)
    for task_type in re.findall(r'taskType="([^"]+)"', query):
        assert task_type.upper() in served_task_types(), task_type


def test_keda_scales_the_deployment_on_the_backlog_and_keeps_it_in_an_outage():
    scaled = of_kind("ScaledObject")
    assert scaled["apiVersion"].startswith("keda.sh/")
    assert scaled["spec"]["scaleTargetRef"]["name"] == of_kind("Deployment")["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    check_query(trigger["metadata"]["query"])
    assert "taskfleet_queue_depth" in trigger["metadata"]["query"]
    assert float(trigger["metadata"]["threshold"]) > 0
    # an absent gauge (the server cannot answer) must not read as an empty queue
    assert trigger["metadata"]["ignoreNullValues"] == "false"
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    check_scale_down(behavior)


def check_scale_down(behavior: dict[str, Any]) -> None:
    """Pods go one at a time, no faster than one drain each."""
    drain = float(deployment_env()["TASKFLEET_DRAIN_TIMEOUT"])
    (policy,) = behavior["scaleDown"]["policies"]
    assert policy["type"] == "Pods" and policy["value"] == 1
    assert policy["periodSeconds"] >= drain


def test_the_hpa_scales_the_deployment_on_the_backlog():
    hpa = of_kind("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        of_kind("Deployment")["metadata"]["name"],
    )
    (metric,) = hpa["spec"]["metrics"]
    external = metric["external"]["metric"]
    assert external["name"] in SERIES
    selector = external["selector"]["matchLabels"]
    assert set(selector) <= SERIES[external["name"]]
    assert {v.upper() for v in selector.values()} <= served_task_types()
    check_scale_down(hpa["spec"]["behavior"])


def test_the_adapter_rule_serves_the_metric_the_hpa_reads():
    (adapter,) = [d for d in documents() if "externalRules" in d]
    (rule,) = adapter["externalRules"]
    assert not problems(rule["seriesQuery"])
    query = rule["metricsQuery"].replace("<<.LabelMatchers>>", 'taskType="resize_image"')
    check_query(query)
    hpa_metric = of_kind("HorizontalPodAutoscaler")["spec"]["metrics"][0]["external"]["metric"]
    assert hpa_metric["name"] in rule["seriesQuery"]
