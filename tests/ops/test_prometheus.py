"""The Prometheus side, proven with Prometheus's own tools (Debian's `prometheus` package).

`promtool` checks the shipped rules and scrape config, runs the rules' unit tests, and lints a
real scrape of the daemon carrying every family it exports. A real Prometheus, started on
loopback with a temporary data folder from the shipped `scrape.yml`, scrapes the daemon polling
the simulator: its query API answers with the simulator's values, the shipped rules evaluate
without error, and every query of the Grafana dashboard runs on it.

Without `promtool` or `prometheus` these tests skip, except under `CI=true`: there they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.core import Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from monitor.core.model import KNOWN_STATES
from monitor.demo.simulator import FastLaunchSimulator
from tests.alerts.receivers import Receiver
from tests.e2e import conftest as e2e
from tests.e2e.conftest import ACCOUNT, REGION, TARGET, DaemonProcess, wait_for
from tests.processes import start_on_free_port, stop

# The e2e fixtures, found by pytest as attributes of this module.
simulator_server = e2e.simulator_server
sim = e2e.sim
start_daemon = e2e.start_daemon

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_EXAMPLES = ROOT / "examples" / "prometheus"
RULES = PROMETHEUS_EXAMPLES / "alerts.yml"
RULE_TESTS = PROMETHEUS_EXAMPLES / "alerts_test.yml"
SCRAPE = PROMETHEUS_EXAMPLES / "scrape.yml"
DASHBOARD = ROOT / "examples" / "grafana" / "fastlaunch-monitor.json"

JOB = "fastlaunch-monitor"
GROUP = "fastlaunch-monitor"
RECEIVER = "ops"
#: What the dashboard's variables and Grafana's own ones stand for in a test query.
GRAFANA_VARIABLES = {"$target": ".*", "$region": ".*", "$__rate_interval": "1m"}

# The seeded images' settings: distinct counts, so that a value read back names its image.
ENABLED_SETTINGS = ((3, 6), (7, 8), (11, 10))

# --- binaries ------------------------------------------------------------------------------


def _binary(name: str) -> str:
    """The executable `name`; skipped without it, except under CI=true: there, failed."""
    found = shutil.which(name)
    if found is None:
        problem = f"{name} is not installed (Debian package prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"PROMETHEUS TESTS CANNOT RUN IN CI: {problem}; .ci/run must install it.",
                pytrace=False,
            )
        pytest.skip(problem)
    return found


@pytest.fixture
def promtool() -> str:
    return _binary("promtool")


@pytest.fixture
def prometheus_binary() -> str:
    return _binary("prometheus")


def run_promtool(
    promtool: str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args],
        cwd=PROMETHEUS_EXAMPLES,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --- the shipped files, read ---------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    (group,) = load_yaml(RULES)["groups"]
    assert group["name"] == GROUP
    rules: list[dict[str, Any]] = group["rules"]
    return rules


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    found = []
    for panel in dashboard()["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return [p for p in found if p["type"] != "row"]


def dashboard_queries() -> list[str]:
    """The PromQL of every panel target."""
    return [target["expr"] for panel in panels() for target in panel["targets"]]


def variable_queries() -> dict[str, str]:
    """The `label_values(...)` query of each query variable, by variable name."""
    return {
        variable["name"]: variable["query"]["query"]
        for variable in dashboard()["templating"]["list"]
        if variable["type"] == "query"
    }


def with_variables(query: str) -> str:
    """`query` as Prometheus can run it: Grafana's variables replaced by what they stand for."""
    for name, value in GRAFANA_VARIABLES.items():
        query = query.replace(name, value)
    return query


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(?!\s*\()")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on"})
_LABEL_VALUES = re.compile(r"label_values\(\s*(([a-zA-Z_:][a-zA-Z0-9_:]*).*?)\s*,\s*(\w+)\s*\)")


def metric_names(query: str) -> set[str]:
    """The metric names a PromQL query selects: what is left once strings, label matchers,
    ranges, label lists, function names, keywords and numbers are taken out."""
    bare = _STRING.sub("", query)
    bare = _MATCHERS.sub("", bare)
    bare = _RANGE.sub("", bare)
    bare = _LABEL_LIST.sub("", bare)
    return {name for name in _IDENTIFIER.findall(bare) if name not in _KEYWORDS}


def variable_selector(query: str) -> tuple[str, str, str]:
    """`label_values(SELECTOR, LABEL)` as its selector, the selector's metric, and the label."""
    found = _LABEL_VALUES.fullmatch(query)
    assert found, query
    selector, metric, label = found.groups()
    return selector, metric, label


# --- processes -----------------------------------------------------------------------------


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.load(answer)


@dataclass
class Prometheus:
    """A running Prometheus and the API calls the tests make of it."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result of an instant query; `AssertionError` if Prometheus refuses it."""
        answer = _get_json(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
        assert answer["status"] == "success", (promql, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def rules(self) -> list[dict[str, Any]]:
        """The rules of the `fastlaunch-monitor` group, as Prometheus evaluates them."""
        groups = _get_json(f"{self.url}/api/v1/rules")["data"]["groups"]
        (group,) = [g for g in groups if g["name"] == GROUP]
        rules: list[dict[str, Any]] = group["rules"]
        return rules


def prometheus_config(daemon_url: str) -> dict[str, Any]:
    """The shipped `scrape.yml`, scraping `daemon_url` every second, its rules by full path."""
    config: dict[str, Any] = load_yaml(SCRAPE)
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS_EXAMPLES / name) for name in config["rule_files"]]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == JOB
    job.update(scrape_interval="1s", scrape_timeout="1s")
    job["static_configs"] = [{"targets": [urllib.parse.urlsplit(daemon_url).netloc]}]
    return config


@pytest.fixture
def start_prometheus(
    tmp_path: Path, prometheus_binary: str
) -> Iterator[Callable[[str], Prometheus]]:
    """Start Prometheus servers on loopback scraping a daemon; all stopped after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(daemon_url: str) -> Prometheus:
        config = tmp_path / "prometheus.yml"
        config.write_text(json.dumps(prometheus_config(daemon_url)))
        name = f"prometheus-{len(started)}"
        log = tmp_path / f"{name}.log"
        command = [
            prometheus_binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / name}",
        ]
        process, url = start_on_free_port("Prometheus", command, log, started)
        return Prometheus(process, url, log)

    yield start
    for process in started:
        stop(process)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as started:
        yield started


def webhook(receiver: Receiver) -> str:
    return f"""
[[alerts.webhooks]]
name = "{RECEIVER}"
url = "{receiver.url_for("/hook")}"
format = "json"
"""


def busy_daemon(
    sim: FastLaunchSimulator, start_daemon: Callable[..., DaemonProcess], receiver: Receiver
) -> DaemonProcess:
    """A daemon that has exported a sample of every kind of series it has.

    Images in every known state (counts set), a shared one (no TargetResourceCount), a failed
    poll (throttled), failed images whose alerts were delivered to `receiver`, and a change of
    state found by a later poll (a detection delay).
    """
    for target_resource_count, max_parallel_launches in ENABLED_SETTINGS:
        sim.seed(
            1,
            target_resource_count=target_resource_count,
            max_parallel_launches=max_parallel_launches,
            launch_template=sim.create_launch_template(f"windows-{target_resource_count}"),
        )
    sim.seed(len(KNOWN_STATES), states=KNOWN_STATES)
    sim.seed(1, shared=True)
    sim.throttle(1)
    daemon = start_daemon(extra=webhook(receiver))
    wait_for(
        lambda: daemon.value(
            "fastlaunch_alert_deliveries_total", receiver=RECEIVER, outcome="delivered"
        ),
        what="an alert delivered",
    )
    scope = {"target": TARGET, "account_id": ACCOUNT, "region": REGION}
    assert daemon.value("fastlaunch_poll_errors_total", error="RequestLimitExceeded", **scope)
    wait_for(
        lambda: daemon.value("fastlaunch_poll_success", **scope) == 1, what="a successful poll"
    )
    (enabling,) = [image.image_id for image in sim.images() if image.state == "enabling"]
    sim.force_state(enabling, "enabled")
    wait_for(
        lambda: daemon.value(
            "fastlaunch_detection_delay_seconds_count", trigger="interval", **scope
        ),
        what="a detection delay",
    )
    return daemon


OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def scrape_text(daemon: DaemonProcess, accept: str | None = None) -> str:
    """`/metrics` in the Prometheus text format (the one `promtool check metrics` reads), or in
    the format `accept` asks for."""
    request = urllib.request.Request(f"{daemon.url}/metrics", headers={"Accept": accept or ""})
    with urllib.request.urlopen(request, timeout=5) as response:
        text: str = response.read().decode()
    return text


_TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)$", re.MULTILINE)
_SUFFIXES = {"histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}


def exported_names(text: str) -> set[str]:
    """Every metric name a query can select in a scrape: each family's, with its suffixes."""
    names = set()
    for family, kind in _TYPE_LINE.findall(text):
        names.add(family)
        names.update(family + suffix for suffix in _SUFFIXES.get(kind, ()))
    return names


# --- the rules -----------------------------------------------------------------------------


@pytest.mark.slow
def test_promtool_finds_every_alert_rule_valid(promtool):
    result = run_promtool(promtool, "check", "rules", RULES.name)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


@pytest.mark.slow
def test_every_alert_rule_passes_its_promtool_unit_tests(promtool):
    result = run_promtool(promtool, "test", "rules", RULE_TESTS.name)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_rule_has_unit_tests_that_show_it_firing_and_not_firing():
    tests = load_yaml(RULE_TESTS)
    assert tests["rule_files"] == [RULES.name]
    checks = [check for test in tests["tests"] for check in test["alert_rule_test"]]
    for rule in alert_rules():
        own = [check for check in checks if check["alertname"] == rule["alert"]]
        assert any(check["exp_alerts"] for check in own), f"{rule['alert']} never fires"
        assert any(not check["exp_alerts"] for check in own), f"{rule['alert']} always fires"


def test_every_alert_rule_has_a_severity_a_summary_a_description_and_a_runbook():
    rules = alert_rules()

    assert {rule["alert"] for rule in rules} == {
        "FastLaunchImageFailed",
        "FastLaunchImageStuck",
        "FastLaunchPollsFailing",
        "FastLaunchPollsStale",
        "FastLaunchMonitorDown",
        "FastLaunchAlertBacklog",
        "FastLaunchAlertDeliveriesFailed",
        "FastLaunchParallelLaunchesNearQuota",
    }
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description", "runbook"}, rule["alert"]
        assert "$labels" in rule["annotations"]["summary"], rule["alert"]


@pytest.mark.slow
def test_the_scrape_snippet_is_a_valid_prometheus_config_that_loads_the_rules(promtool):
    result = run_promtool(promtool, "check", "config", SCRAPE.name)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


# --- a real scrape -------------------------------------------------------------------------

#: Every family the daemon exports; `busy_daemon` gives each at least one sample.
FAMILIES = {
    "fastlaunch_image_target_resources": "gauge",
    "fastlaunch_image_max_parallel_launches": "gauge",
    "fastlaunch_image_state": "gauge",
    "fastlaunch_image_state_transition_timestamp_seconds": "gauge",
    "fastlaunch_image_info": "gauge",
    "fastlaunch_poll_success": "gauge",
    "fastlaunch_poll_duration_seconds": "histogram",
    "fastlaunch_poll_errors": "counter",
    "fastlaunch_last_successful_poll_timestamp_seconds": "gauge",
    "fastlaunch_transitions": "counter",
    "fastlaunch_detection_delay_seconds": "histogram",
    "fastlaunch_alerts_pending": "gauge",
    "fastlaunch_alert_deliveries": "counter",
    "fastlaunch_leader": "gauge",
}


def test_the_readme_lists_every_metric_the_daemon_exports_with_its_type():
    readme = (ROOT / "README.md").read_text()

    for family, kind in FAMILIES.items():
        name = f"{family}_total" if kind == "counter" else family
        assert f"| `{name}` | {kind} |" in readme, name


def families_with_samples(families: Iterable[Metric]) -> dict[str, str]:
    """The type of each family of a parsed scrape that has samples."""
    return {family.name: family.type for family in families if family.samples}


@pytest.mark.slow
def test_a_real_scrape_of_every_family_passes_promtool_check_metrics_without_lint(
    promtool, sim, start_daemon, receiver
):
    daemon = busy_daemon(sim, start_daemon, receiver)
    text = scrape_text(daemon)
    openmetrics = scrape_text(daemon, OPENMETRICS)

    result = run_promtool(promtool, "check", "metrics", stdin=text)

    # Exit code 1 is a scrape promtool cannot parse; 3, lint problems (listed on stderr).
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""
    assert families_with_samples(text_string_to_metric_families(text)) == FAMILIES
    # promtool reads only the text format (an OpenMetrics counter's TYPE line names the family,
    # not its `_total` samples, so it lints them as untyped). The OpenMetrics scrape goes
    # through prometheus_client's strict parser instead, which refuses what the format forbids.
    assert families_with_samples(openmetrics_families(openmetrics)) == FAMILIES

    # The same scrape has every metric the rules and the dashboard select.
    exported = exported_names(text) | {"up"}  # `up` is Prometheus's own
    queries = [rule["expr"] for rule in alert_rules()] + dashboard_queries()
    used = set().union(*(metric_names(query) for query in queries))
    used |= {variable_selector(query)[1] for query in variable_queries().values()}
    assert used <= exported, sorted(used - exported)
    assert daemon.terminate() == 0


# --- a real Prometheus ---------------------------------------------------------------------


def resource_counts(prometheus: Prometheus) -> dict[str, float]:
    """`fastlaunch_image_target_resources` by image, as Prometheus has scraped it."""
    result = prometheus.query("fastlaunch_image_target_resources")
    for series in result:
        labels = series["metric"]
        assert labels["job"] == JOB
        assert (labels["target"], labels["account_id"], labels["region"]) == (
            TARGET,
            ACCOUNT,
            REGION,
        )
    return {series["metric"]["image_id"]: float(series["value"][1]) for series in result}


@pytest.mark.slow
def test_a_real_prometheus_scrapes_the_daemon_and_returns_the_simulators_values(
    start_prometheus, sim, start_daemon
):
    for target_resource_count, max_parallel_launches in ENABLED_SETTINGS:
        sim.seed(
            1,
            target_resource_count=target_resource_count,
            max_parallel_launches=max_parallel_launches,
        )
    sim.seed(1, shared=True)
    expected = {
        image.image_id: float(image.target_resource_count)
        for image in sim.images()
        if image.target_resource_count is not None
    }
    assert sorted(expected.values()) == [3.0, 7.0, 11.0]
    daemon = start_daemon()

    prometheus = start_prometheus(daemon.url)

    wait_for(lambda: resource_counts(prometheus) == expected, what="Prometheus to have the counts")
    assert daemon.terminate() == 0


def evaluated_rules(prometheus: Prometheus) -> list[dict[str, Any]] | None:
    """The group's rules once each has been evaluated at least once."""
    rules = prometheus.rules()
    return rules if all(rule["evaluationTime"] > 0 for rule in rules) else None


def image_failed_alerts(prometheus: Prometheus) -> list[dict[str, Any]]:
    (rule,) = [r for r in prometheus.rules() if r["name"] == "FastLaunchImageFailed"]
    alerts: list[dict[str, Any]] = rule["alerts"]
    return alerts


@pytest.mark.slow
def test_on_a_real_prometheus_the_rules_evaluate_and_every_dashboard_query_answers(
    start_prometheus, sim, start_daemon, receiver
):
    daemon = busy_daemon(sim, start_daemon, receiver)
    failed = {image.image_id: image.state for image in sim.images() if "-failed" in image.state}
    assert len(failed) == 3

    prometheus = start_prometheus(daemon.url)

    rules = wait_for(lambda: evaluated_rules(prometheus), what="every rule to be evaluated")
    assert {rule["name"] for rule in rules} == {rule["alert"] for rule in alert_rules()}
    for rule in rules:
        assert (rule["health"], rule.get("lastError", "")) == ("ok", ""), rule
    alerts = wait_for(
        lambda: (
            len(image_failed_alerts(prometheus)) == len(failed) and image_failed_alerts(prometheus)
        ),
        what="an alert per failed image",
    )
    # Pending, not firing: the rule waits 5 minutes.
    assert {alert["state"] for alert in alerts} == {"pending"}
    assert {a["labels"]["image_id"]: a["labels"]["state"] for a in alerts} == failed

    # A rate needs two samples of a series, so a query may answer only after a second scrape.
    for query in dashboard_queries():
        wait_for(lambda q=query: prometheus.query(with_variables(q)), what=f"an answer to {query}")
    for query in variable_queries().values():
        selector, _, label = variable_selector(query)
        answer = prometheus.query(with_variables(selector))
        assert answer, query
        assert all(label in series["metric"] for series in answer), query

    # The state timeline codes the known states 1 to 6, in their order, and names them back.
    (timeline,) = [p for p in panels() if p["title"] == "State of each image"]
    names = timeline["fieldConfig"]["defaults"]["mappings"][0]["options"]
    answer = prometheus.query(with_variables(timeline["targets"][0]["expr"]))
    shown = {s["metric"]["image_id"]: names[s["value"][1]]["text"] for s in answer}
    assert shown == {image.image_id: image.state for image in sim.images()}
    assert daemon.terminate() == 0


# --- the Grafana dashboard -----------------------------------------------------------------


def test_the_grafana_dashboard_takes_its_data_source_and_filters_from_variables():
    loaded = dashboard()
    variables = {v["name"]: v for v in loaded["templating"]["list"]}

    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert set(variable_queries()) == {"target", "region"}
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    # Every series of an image or of a target and region follows the filters.
    scoped = re.compile(r"fastlaunch_(image_|poll_|last_successful|transitions|detection_delay)")
    filtered = [query for query in dashboard_queries() if scoped.search(query)]
    assert any("fastlaunch_image_" in query for query in filtered)
    assert any("fastlaunch_detection_delay" in query for query in filtered)
    for query in filtered:
        assert 'target=~"$target"' in query, query
        assert 'region=~"$region"' in query, query


def test_the_dashboard_shows_the_median_and_90th_percentile_detection_delay_by_region():
    (panel,) = [p for p in panels() if p["title"] == "Detection delay"]
    queries = [target["expr"] for target in panel["targets"]]

    assert [query.split(",")[0] for query in queries] == [
        "histogram_quantile(0.5",
        "histogram_quantile(0.9",
    ]
    for query in queries:
        assert (
            "sum by (le, region, trigger) (rate(fastlaunch_detection_delay_seconds_bucket{" in query
        )
    # Next to the Polls panels, before the next row.
    titles = [p["title"] for p in dashboard()["panels"]]
    assert titles.index("Polls") < titles.index("Detection delay") < titles.index("Alert delivery")


def test_the_metric_name_parser_finds_names_and_nothing_else():
    query = (
        "histogram_quantile(0.95, sum by (le, target) ("
        'rate(fastlaunch_poll_duration_seconds_bucket{target=~"$target"}[5m])))'
        " or time() - fastlaunch_leader * on (job, instance) group_left (state)"
        ' up{job="x"} offset 1h'
    )

    assert metric_names(query) == {
        "fastlaunch_poll_duration_seconds_bucket",
        "fastlaunch_leader",
        "up",
    }
