"""A real Prometheus and promtool for the tests, from Debian's ``prometheus`` package: downloaded with
``apt-get download`` (no root needed for that, no install), its sha256 checked, unpacked with
``dpkg-deb -x`` into a cache folder inside the virtualenv (``make clean`` removes it), and reused.

Debian's package is used because Debian's archive is a registry the developers' machines and CI reach
and prometheus.io's release downloads are not; no PyPI or npm package ships the server. When the
binaries cannot be had, ``tools()`` raises with the reason: the tests that need them fail, never skip.
``CONDUCTOR_PROMETHEUS_DIR`` names a folder that already holds ``prometheus`` and ``promtool`` (a
machine without apt, or another version on purpose).

    python -m tests.prometheus      # fetches them now and prints where they are
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "prometheus"
# The version the dashboard's queries and the alert rules were checked with, and its .deb's sha256
# (Debian 12, as `apt-cache show prometheus` gives it). Debian keeps only a release's latest build on
# its mirrors, so when a newer build replaces this one, that build is taken and checked against the
# sha256 of apt's signed package index instead, and a pin for it is worth adding here.
PINNED_VERSION = "2.42.0+ds-5+deb12u1"
PINNED_SHA256 = {"amd64": "81d59a24fce84f7fbe97a45a4f2914b6a5881b5cd1db2a6a0e129e515e1a5f55"}


class PrometheusUnavailable(RuntimeError):
    """Prometheus could not be fetched: the message says why and what to do."""


@dataclass(frozen=True)
class Tools:
    prometheus: Path
    promtool: Path


def cache_root() -> Path:
    # sys.prefix is the project's .venv under `make test`: a fresh CI machine fetches anew, a
    # developer's second run does not.
    return Path(sys.prefix) / "cache" / PACKAGE


def tools() -> Tools:
    given = os.environ.get("CONDUCTOR_PROMETHEUS_DIR")
    if given:
        found = Tools(Path(given) / "prometheus", Path(given) / "promtool")
        if not (_runs(found.prometheus) and _runs(found.promtool)):
            raise PrometheusUnavailable(f"CONDUCTOR_PROMETHEUS_DIR={given} holds no working prometheus and promtool")
        return found
    arch = _debian_arch()
    for folder in sorted(cache_root().glob(f"*_{arch}"), reverse=True):
        found = _unpacked(folder)
        if _runs(found.prometheus) and _runs(found.promtool):
            return found
    return _fetch(arch)


def _fetch(arch: str) -> Tools:
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise PrometheusUnavailable(
            "apt-get and dpkg-deb are needed to fetch Debian's prometheus package; "
            "or set CONDUCTOR_PROMETHEUS_DIR to a folder holding prometheus and promtool"
        )
    version, expected = _choose(arch)
    with tempfile.TemporaryDirectory(prefix="prometheus-deb-") as tmp:
        _run(["apt-get", "download", "-q", f"{PACKAGE}={version}"], cwd=tmp)
        [deb] = Path(tmp).glob("*.deb")
        digest = hashlib.sha256(deb.read_bytes()).hexdigest()
        if digest != expected:
            raise PrometheusUnavailable(f"{deb.name}: sha256 {digest}, expected {expected}; not used")
        folder = cache_root() / f"{version}_{arch}"
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        _run(["dpkg-deb", "-x", str(deb), str(partial)])
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)  # whole or not at all: a run killed while unpacking leaves no half
    found = _unpacked(folder)
    if not (_runs(found.prometheus) and _runs(found.promtool)):
        raise PrometheusUnavailable(f"{folder}: the unpacked prometheus or promtool does not run")
    return found


def _choose(arch: str) -> tuple[str, str]:
    """The version to fetch and the sha256 its .deb must have: the pinned one while the mirror has it,
    else apt's candidate with the sha256 of the (signed) package index."""
    pinned = PINNED_SHA256.get(arch)
    listed = _listed()
    if listed is None or (pinned and PINNED_VERSION not in listed):
        # No package lists yet (a fresh machine), or old ones: fetch them once, as root can.
        _run(["apt-get", "update", "-q"])
        listed = _listed()
    if not listed:
        raise PrometheusUnavailable("apt knows no 'prometheus' package (is this Debian 12 or newer?)")
    if pinned and PINNED_VERSION in listed:
        return PINNED_VERSION, pinned
    version = next(iter(listed))
    shown = _run(["apt-cache", "show", "--no-all-versions", f"{PACKAGE}={version}"])
    sha = next((line.split()[1] for line in shown.splitlines() if line.startswith("SHA256:")), None)
    if sha is None:
        raise PrometheusUnavailable(f"apt-cache show gives no SHA256 for {PACKAGE}={version}")
    print(f"tests.prometheus: {PINNED_VERSION} is gone from the mirror; using {version} (sha256 {sha})")
    return version, sha


def _listed() -> dict[str, None] | None:
    """Versions apt can fetch, newest first; None when apt has no lists at all."""
    try:
        out = subprocess.run(
            ["apt-cache", "madison", PACKAGE], capture_output=True, text=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    versions = [line.split("|")[1].strip() for line in out.splitlines() if line.count("|") >= 2]
    return dict.fromkeys(versions) if versions else None


def _unpacked(folder: Path) -> Tools:
    return Tools(folder / "usr" / "bin" / "prometheus", folder / "usr" / "bin" / "promtool")


def _runs(binary: Path) -> bool:
    try:
        return subprocess.run([binary, "--version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _debian_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _run(argv: list[str], cwd: str | None = None) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as err:
        raise PrometheusUnavailable(f"{' '.join(argv)}: {err}") from err
    if done.returncode != 0:
        raise PrometheusUnavailable(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


if __name__ == "__main__":
    found = tools()
    print(found.prometheus)
    print(found.promtool)
