"""Render the Helm chart offline: lint, template, parse, validate against Kubernetes' schemas.

The chart's dependencies (nats, postgresql) live in repositories CI cannot reach, so each render
works on a copy of the chart whose ``charts/`` holds empty stand-ins with the pinned names and
versions: helm's dependency checks pass and the ``*.enabled`` conditions work as in a real install,
but the subcharts' own objects are not rendered. What is checked is this chart's templates.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from kubernetes_validate import utils as kv

from tests.deploy.helm import ROOT, helm_binary

CHART = ROOT / "deploy" / "k8s" / "scns-conductor"
VALUES_SETS = sorted((CHART / "ci").glob("*-values.yaml"))
# The floor in Chart.yaml's kubeVersion and the newest version kubernetes-validate knows.
KUBE_VERSIONS = ("1.30.0", "1.37.0")
# Custom resources without a schema in kubernetes-validate: asserted on by the tests instead.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

Manifest = dict[str, Any]


class RenderError(RuntimeError):
    """helm refused the chart or the values; the message is helm's."""


@contextmanager
def offline_chart() -> Iterator[Path]:
    """A copy of the chart with stand-in subcharts, and helm's own folders kept out of $HOME."""
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / CHART.name
        shutil.copytree(CHART, copy, ignore=shutil.ignore_patterns("charts"))
        for dependency in yaml.safe_load((CHART / "Chart.yaml").read_text())["dependencies"]:
            stub = copy / "charts" / dependency["name"]
            stub.mkdir(parents=True)
            meta = {"apiVersion": "v2", "name": dependency["name"], "version": dependency["version"]}
            (stub / "Chart.yaml").write_text(yaml.safe_dump(meta))
        yield copy


def helm(*args: str, cwd: Path | None = None) -> str:
    """Run the pinned helm with its config, cache and data under a throwaway folder."""
    with tempfile.TemporaryDirectory() as home:
        env = {f"HELM_{k}_HOME": f"{home}/{k.lower()}" for k in ("CONFIG", "CACHE", "DATA")}
        env["PATH"] = "/usr/bin:/bin"
        done = subprocess.run(
            [str(helm_binary()), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
        )
    if done.returncode != 0:
        raise RenderError((done.stderr or done.stdout).strip())
    return done.stdout


def lint(values: Sequence[Path] = (), sets: Sequence[str] = ()) -> str:
    with offline_chart() as chart:
        return helm("lint", "--strict", str(chart), *_values_args(values, sets))


def render(
    values: Sequence[Path] = (), sets: Sequence[str] = (), release: str = "conductor", kube_version: str = "1.30.0"
) -> list[Manifest]:
    """``helm template`` parsed into its objects, in helm's order."""
    with offline_chart() as chart:
        out = helm("template", release, str(chart), "--namespace", "batch", "--kube-version", kube_version,
                   *_values_args(values, sets))  # fmt: skip
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _values_args(values: Sequence[Path], sets: Sequence[str]) -> list[str]:
    args = [arg for path in values for arg in ("--values", str(path))]
    return args + [arg for item in sets for arg in ("--set", item)]


def validate(manifest: Manifest, kube_version: str) -> None:
    """kubernetes-validate's ``--strict`` check of one object (unknown fields are errors too)."""
    if (manifest["apiVersion"], manifest["kind"]) in CUSTOM_KINDS:
        return
    kv.validate(manifest, kube_version, strict=True)


def find(manifests: Sequence[Manifest], kind: str, suffix: str) -> Manifest:
    """The one object of a kind whose name ends with ``-<suffix>``."""
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"].endswith(f"-{suffix}")]
    assert len(found) == 1, f"{len(found)} {kind} named *-{suffix}"
    return found[0]


def container(workload: Manifest) -> Manifest:
    containers: list[Manifest] = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env(workload: Manifest) -> dict[str, Manifest]:
    """A workload's container environment by name: each entry as rendered (value or valueFrom)."""
    return {item["name"]: item for item in container(workload).get("env", [])}
