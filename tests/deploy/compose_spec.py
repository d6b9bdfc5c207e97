"""The Compose specification's JSON schema, for validating compose.yaml offline.

No schema can be fetched from the compose-spec repository here (package registries only); the PyPI
wheel of docker-compose 1.29.2 ships it (``compose/config/compose_spec.json``). The wheel is only
downloaded and unpacked, never installed, checked against a pinned digest, and the schema is kept
under ``.venv/cache`` for later runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

WHEEL = "docker-compose==1.29.2"
WHEEL_SHA256 = "8d5589373b35c8d3b1c8c1182c6e4a4ff14bffa3dd0b605fcd08f73c94cef809"
MEMBER = "compose/config/compose_spec.json"
ROOT = Path(__file__).resolve().parents[2]


def schema() -> dict[str, Any]:
    cached = ROOT / ".venv" / "cache" / "compose-spec" / "compose_spec.json"
    if not cached.exists():
        with tempfile.TemporaryDirectory() as tmp:
            argv = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, WHEEL]
            subprocess.run(argv, check=True, capture_output=True, timeout=300)
            [wheel] = Path(tmp).glob("*.whl")
            data = wheel.read_bytes()
        if hashlib.sha256(data).hexdigest() != WHEEL_SHA256:
            raise RuntimeError(f"{WHEEL}: the wheel's sha256 is not the pinned one")
        text = zipfile.ZipFile(io.BytesIO(data)).read(MEMBER)
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".partial")
        partial.write_bytes(text)
        partial.rename(cached)
    loaded: dict[str, Any] = json.loads(cached.read_text())
    return loaded
