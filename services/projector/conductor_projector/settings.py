from __future__ import annotations

from conductor_platform.settings import CommonSettings


class ProjectorSettings(CommonSettings):
    # The name its position is stored under: two projectors with different names keep separate tables' cursors.
    consumer: str = "projector"
    batch_size: int = 500
