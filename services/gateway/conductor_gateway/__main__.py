"""``python -m conductor_gateway``"""

from __future__ import annotations

import uvicorn

from conductor_gateway.app import create_app
from conductor_gateway.settings import GatewaySettings
from conductor_platform import logging as logs
from conductor_platform import metrics, tracing


def main(argv: list[str] | None = None) -> None:
    settings = GatewaySettings()
    logs.setup("gateway", settings.log_level)
    tracing.setup("gateway")
    metrics.serve("gateway", settings.metrics_port, settings.host)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
