"""`protos.timestamp`: the stamp `Timestamp.FromDatetime` makes, made faster."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import timestamp_pb2

from services.shared.protos import timestamp


def from_datetime(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


ZONES = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8)), None]


def test_every_kind_of_datetime_stamps_as_from_datetime_does() -> None:
    chance = random.Random(15)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for _ in range(20_000):
        when = epoch + timedelta(seconds=chance.randint(-62135510400, 253402214400),
                                 microseconds=chance.randint(0, 999_999))
        zone = chance.choice(ZONES)
        value = when.astimezone(zone) if zone else when.replace(tzinfo=None)
        assert timestamp(value) == from_datetime(value), value


@pytest.mark.parametrize("value", [
    datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(1970, 1, 1), datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),
])
def test_the_edges_stamp_as_from_datetime_does(value: datetime) -> None:
    assert timestamp(value) == from_datetime(value)


def test_outside_timestamps_range_it_is_refused_as_from_datetime_refuses() -> None:
    value = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))  # 0000-12-31 in UTC
    with pytest.raises(Exception) as expected:
        from_datetime(value)
    with pytest.raises(type(expected.value)):
        timestamp(value)


def test_none_is_none() -> None:
    assert timestamp(None) is None
