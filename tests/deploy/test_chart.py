"""The Helm chart, rendered by a real helm: lint, schemas, and what the objects say.

Every values set in ``deploy/k8s/scns-conductor/ci`` is linted (``--strict``) and rendered, and every
object validated against Kubernetes' schemas (kubernetes-validate, strict: unknown fields fail).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic_settings import BaseSettings

from conductor_executor.settings import ExecutorSettings
from conductor_gateway.settings import GatewaySettings
from conductor_projector.settings import ProjectorSettings
from conductor_scheduler.settings import SchedulerSettings
from tests.deploy import chart
from tests.deploy.chart import CHART, Manifest, RenderError, container, env, find, render
from tests.deploy.helm import HELM_SHA256, HELM_VERSION, _sha256, helm_binary, supported_platform

# Off CI's platform there is no pinned helm to run; a failed download still fails the tests.
pytestmark = pytest.mark.skipif(not supported_platform(), reason="the pinned helm is for Linux x86-64")

CI = CHART / "ci"
EXTERNAL = [CI / "external-values.yaml"]
SETTINGS: dict[str, type[BaseSettings]] = {
    "gateway": GatewaySettings,
    "scheduler": SchedulerSettings,
    "projector": ProjectorSettings,
    "executor": ExecutorSettings,
}
WORKLOADS = {"gateway": "Deployment", "scheduler": "Deployment", "projector": "Deployment", "executor": "DaemonSet"}


def test_helm_is_the_pinned_release() -> None:
    binary = helm_binary()
    assert _sha256(binary.read_bytes()) == HELM_SHA256
    assert chart.helm("version", "--short").startswith(HELM_VERSION)


def test_chart_lock_is_in_step_with_chart_yaml() -> None:
    # `helm dependency build` checks the lock's digest first, then needs the (unreachable)
    # repositories: getting as far as the repositories means the lock is in step.
    with chart.offline_chart() as copy:
        for stub in (copy / "charts").iterdir():
            for path in sorted(stub.iterdir()):
                path.unlink()
            stub.rmdir()
        with pytest.raises(RenderError) as refused:
            chart.helm("dependency", "build", str(copy))
    assert "out of sync" not in str(refused.value)
    assert "no repository definition" in str(refused.value)


@pytest.mark.parametrize("values", chart.VALUES_SETS, ids=lambda p: p.name)
def test_lint_strict(values: Path) -> None:
    assert "0 chart(s) failed" in chart.lint([values])


@pytest.mark.parametrize("kube_version", chart.KUBE_VERSIONS)
@pytest.mark.parametrize("values", chart.VALUES_SETS, ids=lambda p: p.name)
def test_every_object_is_valid_kubernetes(values: Path, kube_version: str) -> None:
    manifests = render([values], kube_version=kube_version)
    assert {m["kind"] for m in manifests} >= {"Deployment", "DaemonSet", "Service", "PodDisruptionBudget"}
    for manifest in manifests:
        chart.validate(manifest, kube_version)


def test_values_sets_cover_the_ways_to_reach_the_servers() -> None:
    names = {p.name for p in chart.VALUES_SETS}
    assert {"bundled-values.yaml", "external-values.yaml", "external-secret-values.yaml"} <= names


# --- Defects found by rendering the chart ------------------------------------------------------


def test_database_password_comes_from_the_postgresql_secret_at_run_time() -> None:
    # It was looked up at template time (`lookup`), which finds nothing under `helm template`,
    # `--dry-run` or a first install: DATABASE_URL had an empty password and nothing could log in.
    manifests = render()
    assert not [m for m in manifests if m["kind"] == "Secret"], "no Secret built from a lookup"
    for component in ("gateway", "projector"):
        variables = env(find(manifests, "Deployment", component))
        assert variables["DATABASE_URL"]["value"] == (
            "postgresql://conductor@conductor-postgresql.batch.svc:5432/conductor"
        )
        # asyncpg reads PGPASSWORD when the URL has none: the password is never part of a URL.
        ref = variables["PGPASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "conductor-postgresql", "key": "password"}


def test_database_password_from_an_existing_postgresql_secret() -> None:
    sets = ["postgresql.auth.existingSecret=pg-auth", "postgresql.auth.secretKeys.userPasswordKey=user-pw"]
    variables = env(find(render(sets=sets), "Deployment", "gateway"))
    assert variables["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "pg-auth", "key": "user-pw"}


def test_only_the_services_that_use_postgresql_get_its_credentials() -> None:
    # The executor passes its environment on to jobs (minus CONDUCTOR_*): no password there.
    manifests = render()
    for component in ("scheduler", "executor"):
        variables = env(find(manifests, WORKLOADS[component], component))
        assert "PGPASSWORD" not in variables
        assert "DATABASE_URL" not in variables


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["postgresql.enabled=false"], "postgresql.enabled=false needs databaseUrl or databaseUrlSecret"),
        (["nats.enabled=false"], "nats.enabled=false needs natsUrl"),
    ],
)
def test_an_external_server_without_its_address_fails_at_render_time(sets: list[str], message: str) -> None:
    # It rendered a reference to a Secret or Service that does not exist: pods never started.
    with pytest.raises(RenderError, match=re.escape(message)):
        render(sets=sets)


def test_large_numbers_render_as_written() -> None:
    # `quote` on a number from a values file printed 1048576 as "1.048576e+06".
    values = CI / "full-values.yaml"
    gateway = env(find(render([values]), "Deployment", "gateway"))
    assert yaml.safe_load(values.read_text())["gateway"]["maxOutputBytes"] == 1048576
    assert gateway["CONDUCTOR_MAX_OUTPUT_BYTES"]["value"] == "1048576"
    executor = env(find(render(), "DaemonSet", "executor"))
    assert executor["CONDUCTOR_OUTPUT_MAX_BYTES"]["value"] == "16777216"
    assert executor["CONDUCTOR_NODE_LOST_AFTER_S"]["value"] == "30"
    assert executor["CONDUCTOR_HEARTBEAT_S"]["value"] == "2"


def test_names_fit_in_63_characters_for_the_longest_release_name() -> None:
    # The component suffix was added after truncating to 63: "-executor" made 72.
    release = "r" * 53  # helm's own limit on release names
    manifests = render(EXTERNAL, release=release)
    names = [m["metadata"]["name"] for m in manifests]
    assert all(len(name) <= 63 for name in names), [n for n in names if len(n) > 63]
    assert find(manifests, "DaemonSet", "executor")["metadata"]["name"].startswith("r" * 40)


# --- What each service is given -----------------------------------------------------------------


@pytest.mark.parametrize("values", chart.VALUES_SETS, ids=lambda p: p.name)
@pytest.mark.parametrize("component", SETTINGS)
def test_every_variable_is_one_the_service_reads(values: Path, component: str) -> None:
    workload = find(render([values]), WORKLOADS[component], component)
    settings = SETTINGS[component]
    known = {name.upper() for name in _env_names(settings)} | {"CONDUCTOR_HOST"}
    if component in ("gateway", "projector"):
        known.add("PGPASSWORD")  # read by asyncpg
    for name in env(workload):
        assert name in known, f"{component} does not read {name}"


@pytest.mark.parametrize("values", chart.VALUES_SETS, ids=lambda p: p.name)
@pytest.mark.parametrize("component", SETTINGS)
def test_the_rendered_values_are_valid_settings(values: Path, component: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Downward API values, as Kubernetes fills them in on a node (limits.memory in MiB).
    filled = {"CONDUCTOR_NODE": "ip-10-0-0-7.ec2.internal", "CONDUCTOR_CPUS": "8", "CONDUCTOR_MEMORY": "31000"}
    for name, item in env(find(render([values]), WORKLOADS[component], component)).items():
        if "value" in item:
            monkeypatch.setenv(name, item["value"])
        elif name in filled:
            monkeypatch.setenv(name, filled[name])
    SETTINGS[component]()


def _env_names(settings: type[BaseSettings]) -> set[str]:
    prefix = settings.model_config.get("env_prefix", "")
    names = set()
    for field, info in settings.model_fields.items():
        names.add(f"{prefix}{field}")
        choices = getattr(info.validation_alias, "choices", [])
        names.update(c for c in choices if isinstance(c, str))
    return names


def test_the_gateway_serves_output_only_from_the_object_store() -> None:
    gateway = find(render(), "Deployment", "gateway")
    assert env(gateway)["CONDUCTOR_LOCAL_OUTPUT"]["value"] == "false"
    assert {p["name"]: p["containerPort"] for p in container(gateway)["ports"]} == {"http": 8000, "metrics": 9100}
    assert container(gateway)["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_every_service_has_the_same_liveness_timing_and_replicas() -> None:
    manifests = render()
    for component, kind in WORKLOADS.items():
        variables = env(find(manifests, kind, component))
        assert variables["CONDUCTOR_STREAM_REPLICAS"]["value"] == "3"
        assert variables["NATS_URL"]["value"] == "nats://conductor-nats.batch.svc:4222"
        assert variables["CONDUCTOR_METRICS_PORT"]["value"] == "9100"
        if component in ("scheduler", "executor"):
            assert variables["CONDUCTOR_NODE_LOST_AFTER_S"]["value"] == "30"
            assert variables["CONDUCTOR_HEARTBEAT_S"]["value"] == "2"


def test_scheduler_runs_two_with_stable_lease_ids() -> None:
    scheduler = find(render(), "Deployment", "scheduler")
    assert scheduler["spec"]["replicas"] == 2
    ref = env(scheduler)["CONDUCTOR_SCHEDULER_ID"]["valueFrom"]["fieldRef"]
    assert ref["fieldPath"] == "metadata.name"


def test_executor_takes_its_node_name_and_capacity_from_the_node() -> None:
    executor = find(render(), "DaemonSet", "executor")
    variables = env(executor)
    assert variables["CONDUCTOR_NODE"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # Without limits, the downward API gives the node's allocatable CPUs and memory.
    cpus = variables["CONDUCTOR_CPUS"]["valueFrom"]["resourceFieldRef"]
    memory = variables["CONDUCTOR_MEMORY"]["valueFrom"]["resourceFieldRef"]
    assert (cpus["resource"], memory["resource"], memory["divisor"]) == ("limits.cpu", "limits.memory", "1Mi")
    assert variables["CONDUCTOR_STATE_DIR"]["value"] == "/var/lib/conductor"


def test_executor_capacity_from_values() -> None:
    variables = env(find(render(sets=["executor.cpus=16", "executor.memory=64G"]), "DaemonSet", "executor"))
    assert variables["CONDUCTOR_CPUS"] == {"name": "CONDUCTOR_CPUS", "value": "16"}
    assert variables["CONDUCTOR_MEMORY"] == {"name": "CONDUCTOR_MEMORY", "value": "64G"}


def test_services_run_as_non_root_and_the_executor_as_configured() -> None:
    manifests = render()
    for component in ("gateway", "scheduler", "projector"):
        workload = find(manifests, "Deployment", component)
        pod = workload["spec"]["template"]["spec"]["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert pod["runAsUser"] == 1000
        own = container(workload)["securityContext"]
        assert own["allowPrivilegeEscalation"] is False
        assert own["readOnlyRootFilesystem"] is True
        assert own["capabilities"] == {"drop": ["ALL"]}
    executor = container(find(manifests, "DaemonSet", "executor"))
    assert executor["securityContext"]["runAsUser"] == 0


def test_every_container_requests_resources() -> None:
    for manifest in render():
        if manifest["kind"] in ("Deployment", "DaemonSet"):
            assert set(container(manifest)["resources"]["requests"]) == {"cpu", "memory"}
    # No limits on the executor by default: its jobs run in its container and share its limits.
    assert "limits" not in container(find(render(), "DaemonSet", "executor"))["resources"]


def test_arm64_nodes() -> None:
    manifests = render([CI / "arm64-values.yaml"])
    for component, kind in WORKLOADS.items():
        pod = find(manifests, kind, component)["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"kubernetes.io/arch": "arm64"}
        assert {"key": "kubernetes.io/arch", "operator": "Equal", "value": "arm64", "effect": "NoSchedule"} in pod[
            "tolerations"
        ]


def test_disruption_budgets() -> None:
    manifests = render()
    for component in ("gateway", "scheduler"):
        pdb = find(manifests, "PodDisruptionBudget", component)
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == component
    # A single projector and per-node executors: a budget would only block node drains.
    assert {m["metadata"]["name"] for m in manifests if m["kind"] == "PodDisruptionBudget"} == {
        "conductor-scns-conductor-gateway",
        "conductor-scns-conductor-scheduler",
    }


def test_optional_objects_are_off_by_default() -> None:
    kinds = {m["kind"] for m in render()}
    assert not kinds & {"Ingress", "HorizontalPodAutoscaler", "ServiceMonitor", "CronJob", "PersistentVolumeClaim"}


def test_compaction_runs_on_a_schedule_into_a_kept_volume() -> None:
    manifests = render([CI / "full-values.yaml"])
    cron = find(manifests, "CronJob", "compaction")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (job,) = pod["containers"]
    assert job["args"] == ["compact", "--keep", "3d", "--archive", "/archive"]
    assert {"NATS_URL", "DATABASE_URL"} <= set(env({"spec": {"template": {"spec": pod}}}))
    claim = find(manifests, "PersistentVolumeClaim", "archive")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["archive"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    with pytest.raises(RenderError, match="schema"):
        render(sets=["compaction.keep=a week"])


def test_ingress_autoscaler_and_service_monitor() -> None:
    manifests = render([CI / "full-values.yaml"])
    ingress = find(manifests, "Ingress", "gateway")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "conductor-scns-conductor-gateway", "port": {"name": "http"}}
    hpa = find(manifests, "HorizontalPodAutoscaler", "gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "conductor-scns-conductor-gateway"
    assert "replicas" not in find(manifests, "Deployment", "gateway")["spec"], "the autoscaler owns replicas"
    monitor = find(manifests, "ServiceMonitor", "metrics")
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    service = find(manifests, "Service", "metrics")
    assert service["spec"]["clusterIP"] == "None"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert "app.kubernetes.io/component" not in service["spec"]["selector"], "every service's pods"


def test_external_database_url_from_a_secret() -> None:
    manifests = render([CI / "external-secret-values.yaml"])
    variables = env(find(manifests, "Deployment", "projector"))
    assert variables["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "conductor-db", "key": "DATABASE_URL"}
    assert "PGPASSWORD" not in variables


def test_values_schema_refuses_what_the_services_would() -> None:
    for bad in ("streamReplicas=6", "gateway.maxScriptBytes=1048576", "executor.partitions=default"):
        with pytest.raises(RenderError, match="schema"):
            render(sets=[bad])


def test_workload_pods_select_only_their_component() -> None:
    manifests = render()
    for component, kind in WORKLOADS.items():
        workload: Manifest = find(manifests, kind, component)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert labels["app.kubernetes.io/component"] == component
