import pytest

from conductor_contracts.parsing import parse_memory_mb, parse_time_limit_seconds


@pytest.mark.parametrize(
    ("text", "mb"),
    [("8G", 8192), ("512M", 512), ("512", 512), ("1T", 1024 * 1024), ("2048K", 2), ("4g", 4096), ("1GB", 1024)],
)
def test_memory(text: str, mb: int) -> None:
    assert parse_memory_mb(text) == mb


@pytest.mark.parametrize("text", ["8X", "", "G", "-1G", "1.5G", "512K" * 2, "100K"])
def test_bad_memory_says_why(text: str) -> None:
    with pytest.raises(ValueError, match="invalid memory"):
        parse_memory_mb(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("60", 3600),
        ("1", 60),
        ("0:30", 30),
        ("01:00:00", 3600),
        ("1-0", 86400),
        ("1-02:30", 86400 + 2 * 3600 + 30 * 60),
        ("2-00:00:10", 2 * 86400 + 10),
        ("UNLIMITED", None),
        ("infinite", None),
    ],
)
def test_time_limit(text: str, seconds: int | None) -> None:
    assert parse_time_limit_seconds(text) == seconds


@pytest.mark.parametrize("text", ["abc", "", "1:2:3:4", "0", "00:00", "x-1", "1-1:2:3:4", "-5"])
def test_bad_time_limit_says_why(text: str) -> None:
    with pytest.raises(ValueError, match="invalid time limit"):
        parse_time_limit_seconds(text)
