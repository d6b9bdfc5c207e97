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


@pytest.mark.parametrize(("text", "mb"), [("2047T", 2047 * 1024 * 1024), ("2147483647", 2**31 - 1), ("0001G", 1024)])
def test_memory_up_to_what_an_int32_column_holds(text: str, mb: int) -> None:
    assert parse_memory_mb(text) == mb


@pytest.mark.parametrize("text", ["2048T", "2147483648", "1" + "0" * 400 + "K", "9" * 5000, "99999999999999T"])
def test_memory_over_the_bound_says_so_without_overflowing(text: str) -> None:
    # Was an OverflowError (int to float) for 400 zeros, a value int32 cannot hold for 2048T.
    with pytest.raises(ValueError, match="at most 2147483647M"):
        parse_memory_mb(text)


@pytest.mark.parametrize("text", ["\u0663G", "\uff18G", "8\u00a0G"])
def test_memory_digits_are_ascii(text: str) -> None:
    with pytest.raises(ValueError, match="invalid memory"):
        parse_memory_mb(text)


@pytest.mark.parametrize(
    ("text", "seconds"), [("525600", 365 * 86400), ("365-0", 365 * 86400), ("0:31536000", 31536000)]
)
def test_time_limit_up_to_a_year(text: str, seconds: int) -> None:
    assert parse_time_limit_seconds(text) == seconds


@pytest.mark.parametrize("text", ["99999999", "525601", "366-0", "1-" + "9" * 500, "9" * 5000, "0:0:31536001"])
def test_time_limit_over_a_year_says_so(text: str) -> None:
    with pytest.raises(ValueError, match="at most 365 days"):
        parse_time_limit_seconds(text)


@pytest.mark.parametrize("text", ["\u00b2", "\u0663", "1-\u00b2", "1:\uff10"])
def test_time_limit_digits_are_ascii(text: str) -> None:
    # str.isdigit() takes '²', which int() then refuses: the message must be ours, not int()'s.
    with pytest.raises(ValueError, match="invalid time limit"):
        parse_time_limit_seconds(text)


def test_messages_quote_a_bounded_printable_value() -> None:
    with pytest.raises(ValueError) as err:
        parse_memory_mb("\ud800" + "x" * 10_000)
    message = str(err.value)
    assert len(message) < 300 and "\\ud800" in message
    message.encode()  # would raise on a lone surrogate
