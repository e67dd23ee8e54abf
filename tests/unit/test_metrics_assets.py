"""The Grafana dashboard, scrape config and alert rules in metrics/ use only metrics that exist.

Every PromQL expression is scanned for the series it selects and the labels it uses; each series
must be one that metrics.py exports (counters as ``<name>_total``, histograms as ``_bucket``,
``_sum`` and ``_count``), and each label one defined for it, so renaming a metric or a label
breaks this test instead of a production dashboard. The YAML files are read with PyYAML (a dev
dependency); ``promtool`` checks them too when it is on PATH.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from taskfleet._metrics import DEFINITIONS

ASSETS = Path(__file__).resolve().parents[2] / "metrics"

#: Labels Prometheus attaches to every scraped series (the scrape job and target).
TARGET_LABELS = frozenset({"job", "instance"})


def exported_series() -> dict[str, frozenset[str]]:
    """Series name -> its labels, as Prometheus stores what metrics.py defines."""
    series: dict[str, frozenset[str]] = {}
    for d in DEFINITIONS:
        labels = frozenset(d.labels) | TARGET_LABELS
        if d.kind == "counter":
            # prometheus_client appends _total to counters (dropping one given in the name).
            series[d.name.removesuffix("_total") + "_total"] = labels
        elif d.kind == "histogram":
            series[d.name + "_bucket"] = labels | {"le"}
            series[d.name + "_sum"] = labels
            series[d.name + "_count"] = labels
        else:
            series[d.name] = labels
    return series


SERIES = exported_series()

# -- a PromQL scanner: enough of the grammar to find selectors, matchers and grouping labels -----

_TOKEN = re.compile(
    r"""\s*(?:
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){},])
    )""",
    re.VERBOSE,
)
_AGGREGATIONS = frozenset(
    [
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "limitk",
        "limit_ratio",
    ]
)
_GROUPING = frozenset({"by", "without"})
_MATCHING = frozenset({"on", "ignoring", "group_left", "group_right"})
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"})
#: Grafana's interval variables, replaced by a duration so the expression parses.
_GRAFANA_INTERVALS = re.compile(r"\$__(?:rate_interval|interval|range)\b")


@dataclass
class Scan:
    """What one PromQL expression selects and groups by."""

    selectors: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    #: (labels, names of the series inside the aggregation's argument)
    groupings: list[tuple[list[str], set[str]]] = field(default_factory=list)
    matching_labels: list[str] = field(default_factory=list)

    @property
    def series(self) -> set[str]:
        return {name for name, _ in self.selectors}

    @property
    def grouping_labels(self) -> set[str]:
        return {label for labels, _ in self.groupings for label in labels}


def tokenize(expr: str) -> list[tuple[str, str]]:
    expr = _GRAFANA_INTERVALS.sub("5m", expr)
    tokens, pos = [], 0
    while pos < len(expr):
        if not expr[pos:].strip():
            break
        match = _TOKEN.match(expr, pos)
        assert match and match.lastgroup, f"cannot parse PromQL at {expr[pos:]!r} in {expr!r}"
        tokens.append((match.lastgroup, match[match.lastgroup]))
        pos = match.end()
    return tokens


def scan(expr: str) -> Scan:
    """Find series selectors (with their matchers) and grouping labels in ``expr``."""
    tokens = tokenize(expr)
    partner: dict[int, int] = {}
    stack: list[int] = []
    for i, (_, text) in enumerate(tokens):
        if text == "(":
            stack.append(i)
        elif text == ")":
            assert stack, f"unbalanced ')' in {expr!r}"
            partner[stack.pop()] = i
    assert not stack, f"unbalanced '(' in {expr!r}"
    closes = {close: open_ for open_, close in partner.items()}

    result = Scan()
    label_list_tokens: set[int] = set()
    positions: list[tuple[int, str]] = []  # (token index, series name)
    clauses: list[tuple[int, list[str]]] = []  # (index of by/without, labels)

    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "ident" and text in _GROUPING | _MATCHING and nxt == "(":
            labels = [t for k, t in tokens[i + 2 : partner[i + 1]] if k == "ident"]
            if text in _GROUPING:
                clauses.append((i, labels))
            else:
                result.matching_labels.extend(labels)
            label_list_tokens.update(range(i, partner[i + 1] + 1))
            i = partner[i + 1] + 1
            continue
        is_aggregation = text in _AGGREGATIONS and nxt in _GROUPING
        if kind == "ident" and nxt != "(" and text not in _KEYWORDS and not is_aggregation:
            matchers: dict[str, str] = {}
            end = i + 1
            if nxt == "{":
                end = next(j for j in range(i + 1, len(tokens)) if tokens[j][1] == "}")
                body = tokens[i + 2 : end]
                for j in range(0, len(body), 4):  # label op "value" [,]
                    label, _, value = body[j][1], body[j + 1][1], body[j + 2][1]
                    matchers[label] = value[1:-1]
                end += 1
            result.selectors.append((text, matchers))
            positions.append((i, text))
            i = end
            continue
        assert kind != "op" or text != "{", f"selector without a metric name in {expr!r}"
        i += 1

    for at, labels in clauses:
        # `sum by (x) (arg)` has its argument after the clause; `sum (arg) by (x)` before it.
        if tokens[at - 1][1] in _AGGREGATIONS:
            open_ = partner[at + 1] + 1
            close = partner[open_]
        else:
            close = at - 1
            open_ = closes[close]
            assert tokens[open_ - 1][1] in _AGGREGATIONS, (
                f"by/without not after an aggregation in {expr!r}"
            )
        inside = {name for pos, name in positions if open_ < pos < close}
        result.groupings.append((labels, inside))
    return result


def problems(expr: str) -> list[str]:
    """Every reason ``expr`` does not match metrics.py; empty when it does."""
    found = []
    result = scan(expr)
    for name, matchers in result.selectors:
        if name not in SERIES:
            found.append(f"{name} is not a series metrics.py exports")
            continue
        for label in matchers:
            if label not in SERIES[name]:
                found.append(f"{name} has no label {label!r}")
    for labels, inside in result.groupings:
        for label in labels:
            for name in inside & set(SERIES):
                if label not in SERIES[name]:
                    found.append(f"grouping by {label!r} over {name}, which has no such label")
    for label in result.matching_labels:
        for name in result.series & set(SERIES):
            if label not in SERIES[name]:
                found.append(f"matching on {label!r} with {name}, which has no such label")
    return found


def labels_of_result(expr: str) -> set[str]:
    """Labels the result of ``expr`` can carry: its grouping labels when it aggregates, else
    the labels of the series it selects."""
    result = scan(expr)
    if result.groupings or any(t in _AGGREGATIONS for _, t in tokenize(expr)):
        return result.grouping_labels
    return set().union(*(SERIES.get(name, set()) for name in result.series))


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# -- the assets ----------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return json.loads((ASSETS / "grafana-dashboard.json").read_text())


def dashboard_targets() -> list[tuple[str, dict[str, Any]]]:
    """(panel title, target) for every query on the dashboard, rows included."""
    out = []
    for panel in dashboard()["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            out.extend((inner["title"], t) for t in inner.get("targets", []))
    return out


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ASSETS / "alerts.yml")["groups"] for rule in group["rules"]]


def all_expressions() -> list[str]:
    return [t["expr"] for _, t in dashboard_targets()] + [r["expr"] for r in alert_rules()]


# -- the scanner itself ----------------------------------------------------------------------


def test_the_scanner_finds_series_matchers_and_grouping_labels():
    result = scan(
        'histogram_quantile(0.95, sum by (le, taskType) (rate(task_execute_time_seconds_bucket{taskType=~"$taskType"}[$__rate_interval])))'
    )
    assert result.selectors == [("task_execute_time_seconds_bucket", {"taskType": "$taskType"})]
    assert result.groupings == [(["le", "taskType"], {"task_execute_time_seconds_bucket"})]


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("rate(task_poll[5m])", "task_poll is not a series"),
        ("task_execute_time_seconds", "task_execute_time_seconds is not a series"),
        ("rate(task_poll_errors_total[5m])", "is not a series"),
        ('rate(task_poll_total{status="x"}[5m])', "task_poll_total has no label 'status'"),
        ("sum by (exception) (rate(task_poll_total[5m]))", "grouping by 'exception'"),
        ("sum(rate(task_poll_total[5m])) without (reason)", "grouping by 'reason'"),
        ("max(taskfleet_spool_depth) by (taskType)", "grouping by 'taskType'"),
    ],
)
def test_the_scanner_reports_unknown_series_and_labels(expr, problem):
    assert any(problem in p for p in problems(expr)), problems(expr)


# -- the dashboard ---------------------------------------------------------------------------


def test_the_dashboard_has_a_prometheus_datasource_and_a_task_type_variable():
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    task_type = variables["taskType"]
    assert task_type["datasource"]["uid"] == "${datasource}"
    assert task_type["includeAll"] and task_type["multi"]
    assert task_type["allValue"] == ".*"
    query = (
        task_type["query"]["query"] if isinstance(task_type["query"], dict) else task_type["query"]
    )
    metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query).groups()
    assert label in SERIES[metric]


def test_every_dashboard_query_uses_the_datasource_variable():
    for title, target in dashboard_targets():
        assert target["datasource"]["uid"] == "${datasource}", title
    for panel in dashboard()["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], f"{panel['title']} has no query"


def test_dashboard_panels_have_unique_ids_and_do_not_overlap():
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, p["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_every_dashboard_query_uses_only_defined_series_and_labels():
    failures = [f"{title}: {p}" for title, t in dashboard_targets() for p in problems(t["expr"])]
    assert not failures, "\n".join(failures)


def test_every_series_with_a_task_type_is_filtered_by_the_task_type_variable():
    for title, target in dashboard_targets():
        for name, matchers in scan(target["expr"]).selectors:
            if "taskType" in SERIES[name]:
                assert matchers.get("taskType") == "$taskType", f"{title}: {name}"


def test_legends_only_name_labels_the_query_keeps():
    for title, target in dashboard_targets():
        used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        missing = used - labels_of_result(target["expr"])
        assert not missing, f"{title}: legend uses {missing} that {target['expr']!r} drops"


def test_every_defined_metric_is_on_the_dashboard():
    used = {name for _, t in dashboard_targets() for name in scan(t["expr"]).series}
    for d in DEFINITIONS:
        assert any(name.startswith(d.name.removesuffix("_total")) for name in used), d.name


# -- alert rules and scrape config -------------------------------------------------------------


def test_alert_rules_have_a_name_severity_and_text():
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]


def test_the_alert_rules_cover_what_operators_need_to_hear_about():
    used = {name for rule in alert_rules() for name in scan(rule["expr"]).series}
    for name in (
        "taskfleet_last_poll_success_timestamp_seconds",
        "task_execute_error_total",
        "worker_restart_total",
        "taskfleet_spool_depth",
        "taskfleet_time_limit_kills_total",
        "taskfleet_dead_letters_total",
    ):
        assert name in used


def test_every_alert_expression_uses_only_defined_series_and_labels():
    failures = [f"{r['alert']}: {p}" for r in alert_rules() for p in problems(r["expr"])]
    assert not failures, "\n".join(failures)


def test_alert_text_only_names_labels_the_expression_keeps():
    for rule in alert_rules():
        text = " ".join(rule["annotations"].values())
        used = set(re.findall(r"\$labels\.(\w+)", text))
        missing = used - labels_of_result(rule["expr"])
        assert not missing, f"{rule['alert']} names {missing}, which its expression drops"


def test_the_scrape_config_targets_the_default_metrics_address_and_loads_the_rules():
    config = load_yaml(ASSETS / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "taskfleet"
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:9464"]
    assert config["rule_files"] == ["alerts.yml"]
    assert "authorization:" in (ASSETS / "prometheus.yml").read_text()  # documented, commented


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not on PATH")
@pytest.mark.parametrize(("what", "name"), [("rules", "alerts.yml"), ("config", "prometheus.yml")])
def test_promtool_accepts_the_files(what, name):
    result = subprocess.run(
        ["promtool", "check", what, name],
        cwd=ASSETS,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not on PATH")
def test_promtool_parses_every_dashboard_query(tmp_path):
    # promtool has no "check expression"; a rule file of recording rules makes it parse each one.
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for n, (_, target) in enumerate(dashboard_targets()):
        expr = _GRAFANA_INTERVALS.sub("5m", target["expr"]).replace("$taskType", ".*")
        lines += [f"      - record: dashboard:query_{n}", f"        expr: {json.dumps(expr)}"]
    (tmp_path / "dashboard.yml").write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        ["promtool", "check", "rules", "dashboard.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
