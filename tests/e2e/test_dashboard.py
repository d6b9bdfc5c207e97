"""The Grafana dashboard and the alert rules against a real Prometheus (Debian's build, fetched by
tests/prometheus.py): ``conductor up`` with a small workload, Prometheus scraping every service each
second with deploy/prometheus/alerts.yaml loaded, then every query of deploy/grafana/conductor.json run
as Grafana would run it, each required to return data. A query naming a metric that does not exist,
or a label the metric lacks, returns nothing and fails here."""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conductor_platform.localservers import free_port
from tests.prometheus import Tools, tools
from tests.system import System, conductor_up_with_metrics, metrics_ports, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "conductor.json"
CHART = ROOT / "deploy" / "k8s" / "scns-conductor"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
EXAMPLE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DATASOURCE = "${datasource}"
# What Grafana puts for its interval variables. The test's whole life fits in a minute's window, so
# every observation of the workload is in it (a narrower one could leave a quantile with none: NaN).
INTERVALS = {"$__rate_interval": "1m", "$__interval": "1s", "$__range": "5m"}


def load_dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title and refId, PromQL as sent to Prometheus) for every target of every panel."""
    variables = {v["name"]: v.get("allValue") or ".*" for v in dashboard["templating"]["list"] if v["type"] == "query"}
    found = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in INTERVALS.items():
                expr = expr.replace(name, value)
            for name, value in variables.items():  # "All" selected: the variable's allValue
                expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
            assert "$" not in expr, f"{panel['title']}: a variable left in {expr}"
            found.append((f"{panel['title']} [{target['refId']}]", expr))
    return found


def test_dashboard_asks_for_a_prometheus_data_source_everywhere() -> None:
    dashboard = load_dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    [source] = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": DATASOURCE}, panel["title"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == {"type": "prometheus", "uid": DATASOURCE}, variable["name"]


def test_the_chart_ships_the_same_dashboard() -> None:
    # Helm reads no file outside the chart, so the chart holds a copy: it must not drift.
    assert (CHART / "dashboards" / "conductor.json").read_bytes() == DASHBOARD.read_bytes()
    template = (CHART / "templates" / "grafana-dashboard.yaml").read_text()
    assert '.Files.Get "dashboards/conductor.json"' in template
    assert 'grafana_dashboard: "1"' in template
    assert re.search(r"^grafanaDashboard:\n  enabled: (true|false)$", (CHART / "values.yaml").read_text(), re.M)


def alert_count() -> int:
    return len(re.findall(r"^      - alert: ", ALERTS.read_text(), re.M))


@pytest.fixture(scope="module")
def prometheus_tools() -> Tools:
    # No skip when it cannot be had: a missing Prometheus would hide a broken dashboard.
    return tools()


def promtool(prometheus_tools: Tools, *args: str) -> str:
    done = subprocess.run([prometheus_tools.promtool, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_alert_rules_their_unit_tests_and_the_example_config_pass_promtool(prometheus_tools: Tools) -> None:
    assert f"SUCCESS: {alert_count()} rules found" in promtool(prometheus_tools, "check", "rules", str(ALERTS))
    # Checks the rule files it names too (alerts.yaml, beside it).
    promtool(prometheus_tools, "check", "config", str(EXAMPLE_CONFIG))
    # Each alert fires on made-up series of what it is for, and not on the nearest harmless case.
    assert "SUCCESS" in promtool(prometheus_tools, "test", "rules", str(ALERTS.with_name("alerts_test.yaml")))


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return metrics_ports()


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, ports: dict[str, int]) -> Iterator[System]:
    with conductor_up_with_metrics(tmp_path_factory.mktemp("dashboard"), "grafana", ports) as system:
        yield system


@pytest.fixture(scope="module")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory, prometheus_tools: Tools, ports: dict[str, int]
) -> Iterator[httpx.Client]:
    folder = tmp_path_factory.mktemp("prometheus")
    jobs = "".join(
        f"  - job_name: conductor-{service}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        for service, port in ports.items()
    )
    # Every second, so that rates and quantiles have their samples within seconds of the workload.
    config = "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
    config += f"rule_files:\n  - {ALERTS}\nscrape_configs:\n{jobs}"
    (folder / "prometheus.yml").write_text(config)
    port = free_port()
    argv = [
        str(prometheus_tools.prometheus),
        f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with (folder / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def ready() -> bool:
        assert process.poll() is None, (folder / "prometheus.log").read_text()[-3000:]
        try:
            return client.get("/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, 60, "Prometheus ready")
        yield client
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        client.close()


def api(client: httpx.Client, path: str, **params: Any) -> Any:
    answer = client.get(f"/api/v1/{path}", params=params)
    body = answer.json()
    assert answer.status_code == 200 and body["status"] == "success", (path, params, body)
    return body["data"]


def has_data(result: list[dict[str, Any]]) -> bool:
    """A series with a number in it: NaN (a quantile of nothing, 0/0) is no data on a graph."""
    return any(not math.isnan(float(value)) for series in result for _, value in series["values"])


def test_every_dashboard_query_returns_data(system: System, prometheus: httpx.Client, ports: dict[str, int]) -> None:
    started = time.time()

    def up() -> bool:
        targets = api(prometheus, "targets")["activeTargets"]
        return len(targets) == len(ports) and all(t["health"] == "up" for t in targets)

    # Scraped once before the workload: a counter's first sample already past what it counted would
    # show no increase, and a quantile of no observation is NaN.
    wait_for(up, 60, "every service scraped")
    # A small workload: jobs that complete, one that fails, one that runs on, one that never fits.
    done = [system.submit(f"echo dashboard {i}") for i in range(3)]
    failed = system.submit("exit 3")
    running = system.submit("sleep 300")
    never = system.submit("echo too big", cpus_per_task=4, memory_per_node="8G")
    for job_id in done:
        system.wait_state(job_id, "COMPLETED")
    system.wait_state(failed, "FAILED")
    system.wait_state(running, "RUNNING")
    assert system.wait_state(never, "PENDING")["reason"] == "ResourcesNeverSatisfiable"

    dashboard = load_dashboard()
    pending = dict(queries(dashboard))
    answers: dict[str, list[dict[str, Any]]] = {}
    deadline = time.monotonic() + 90
    while pending and time.monotonic() < deadline:
        # Requests go on as on a system in use: a route's series appears with its first request, and
        # rate() sees only what later requests add.
        system.job(never)
        # Counters and histograms need two scrapes past their first sample before rate() shows.
        for name, expr in list(pending.items()):
            answers[name] = api(prometheus, "query_range", query=expr, start=started - 5, end=time.time(), step=1)[
                "result"
            ]
            if has_data(answers[name]):
                del pending[name]
        time.sleep(1)
    assert not pending, {name: (expr, answers.get(name)) for name, expr in pending.items()}

    # The template variables' own queries: label_values(metric, label).
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"]).groups()  # type: ignore[union-attr]
            assert api(prometheus, f"label/{label}/values", **{"match[]": metric}), variable["name"]

    # The alert rules loaded and evaluate without error against the real metrics.
    def evaluated() -> list[dict[str, Any]] | None:
        rules = [rule for group in api(prometheus, "rules")["groups"] for rule in group["rules"]]
        return rules if rules and all(rule["health"] != "unknown" for rule in rules) else None

    rules = wait_for(evaluated, 30, "the alert rules evaluated")
    assert len(rules) == alert_count()
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    # Nothing in this small run is worth waking anyone for.
    assert [r["name"] for r in rules if r["state"] == "firing"] == []
