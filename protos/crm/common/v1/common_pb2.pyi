from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor
RULES_FIELD_NUMBER: _ClassVar[int]
rules: _descriptor.FieldDescriptor

class Bookmark(_message.Message):
    __slots__ = ("head_cursor",)
    HEAD_CURSOR_FIELD_NUMBER: _ClassVar[int]
    head_cursor: str
    def __init__(self, head_cursor: _Optional[str] = ...) -> None: ...

class FieldRules(_message.Message):
    __slots__ = ("min_length", "max_length", "pattern", "format", "minimum", "maximum", "min_items", "max_items", "unique_items", "values")
    MIN_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_FIELD_NUMBER: _ClassVar[int]
    MIN_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MAX_ITEMS_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    min_length: int
    max_length: int
    pattern: str
    format: str
    minimum: int
    maximum: int
    min_items: int
    max_items: int
    unique_items: bool
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, min_length: _Optional[int] = ..., max_length: _Optional[int] = ..., pattern: _Optional[str] = ..., format: _Optional[str] = ..., minimum: _Optional[int] = ..., maximum: _Optional[int] = ..., min_items: _Optional[int] = ..., max_items: _Optional[int] = ..., unique_items: _Optional[bool] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...
