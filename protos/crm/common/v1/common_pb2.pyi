from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Bookmark(_message.Message):
    __slots__ = ("head_cursor",)
    HEAD_CURSOR_FIELD_NUMBER: _ClassVar[int]
    head_cursor: str
    def __init__(self, head_cursor: _Optional[str] = ...) -> None: ...
