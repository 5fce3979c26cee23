from datetime import timedelta

import pytest

from inferstack.core.durations import format_duration, parse_duration, parse_seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("30s", 30.0, id="seconds"),
        pytest.param("5m", 300.0, id="minutes"),
        pytest.param("1h", 3600.0, id="hours"),
        pytest.param("500ms", 0.5, id="milliseconds-not-minutes"),
        pytest.param("1h30m", 5400.0, id="compound"),
        pytest.param("1m30s500ms", 90.5, id="three-units"),
        pytest.param("1.5h", 5400.0, id="fraction"),
        pytest.param("0s", 0.0, id="zero"),
        pytest.param(" 10s ", 10.0, id="surrounding-space"),
    ],
)
def test_parse_seconds(text: str, seconds: float) -> None:
    assert parse_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("10", id="no-unit"),
        pytest.param("5d", id="days-unsupported"),
        pytest.param("-5s", id="negative"),
        pytest.param("5m garbage", id="trailing-garbage"),
        pytest.param("x5m", id="leading-garbage"),
        pytest.param("1h 30m", id="inner-space"),
    ],
)
def test_parse_seconds_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_seconds(text)


def test_parse_duration_is_timedelta() -> None:
    assert parse_duration("1h30m") == timedelta(hours=1, minutes=30)


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        pytest.param(timedelta(0), "0s", id="zero"),
        pytest.param(timedelta(seconds=90), "1m30s", id="minutes-seconds"),
        pytest.param(timedelta(hours=1, milliseconds=5), "1h5ms", id="hours-ms"),
    ],
)
def test_format_duration_round_trips(delta: timedelta, text: str) -> None:
    assert format_duration(delta) == text
    assert parse_duration(text) == delta
