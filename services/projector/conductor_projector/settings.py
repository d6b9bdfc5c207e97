from __future__ import annotations

from conductor_platform.settings import CommonSettings


class ProjectorSettings(CommonSettings):
    consumer: str = "projector"
    batch_size: int = 500
