"""Conversions between protobuf's well-known types and enums and Python's."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum
from typing import Any, TypeVar, overload

from google.protobuf import timestamp_pb2

E = TypeVar("E", bound=Enum)
# The `enum` arguments below are protobuf EnumDescriptors (pb.LeadStatus.DESCRIPTOR),
# typed Any: the C implementation's descriptors are another class than the stubs'.


@overload
def timestamp(value: datetime) -> timestamp_pb2.Timestamp: ...
@overload
def timestamp(value: None) -> None: ...
def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """`Timestamp.FromDatetime`'s stamp (a naive datetime is UTC), made without its
    detour through a time tuple: a write makes a dozen."""
    if value is None:
        return None
    delta = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)) - _EPOCH
    seconds = delta.days * 86400 + delta.seconds
    if not _FIRST <= seconds <= _LAST:  # out of Timestamp's range: refused as FromDatetime does
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(value)
        return stamp
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=value.microsecond * 1000)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_FIRST, _LAST = -62135596800, 253402300799


def when(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def enum_prefix(enum: Any) -> str:
    """What every value of a contract's enum starts with ("LEAD_STATUS_" of
    LeadStatus), read off its zero value, `…_UNSPECIFIED`."""
    zero: str = enum.values_by_number[0].name
    return zero.removesuffix("UNSPECIFIED")


def short_names(enum: Any) -> dict[int, str]:
    """The enum's values but the zero one, by number, without the prefix ("NEW")."""
    prefix = enum_prefix(enum)
    return {v.number: v.name.removeprefix(prefix) for v in enum.values if v.number}


def enum_numbers(domain: type[E], enum: Any) -> dict[E, int]:
    """The contract's number for each member of a domain enum, matched by name.

    The contract is the source of the values: a domain enum with a member the
    contract lacks, or lacking one it has, stops the service at import.
    """
    numbers = {name: number for number, name in short_names(enum).items()}
    members = {member.name: member for member in domain}
    if set(numbers) != set(members):
        raise TypeError(f"{domain.__name__} has {sorted(members)}, but the contract's "
                        f"{enum.full_name} has {sorted(numbers)}")
    return {members[name]: number for name, number in numbers.items()}
