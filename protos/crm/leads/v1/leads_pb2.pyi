import datetime

from crm.common.v1 import common_pb2 as _common_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LeadStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LEAD_STATUS_UNSPECIFIED: _ClassVar[LeadStatus]
    LEAD_STATUS_NEW: _ClassVar[LeadStatus]
    LEAD_STATUS_CONTACTED: _ClassVar[LeadStatus]
    LEAD_STATUS_QUALIFIED: _ClassVar[LeadStatus]
    LEAD_STATUS_PROPOSAL_SENT: _ClassVar[LeadStatus]
    LEAD_STATUS_NEGOTIATING: _ClassVar[LeadStatus]
    LEAD_STATUS_WON: _ClassVar[LeadStatus]
    LEAD_STATUS_LOST: _ClassVar[LeadStatus]
LEAD_STATUS_UNSPECIFIED: LeadStatus
LEAD_STATUS_NEW: LeadStatus
LEAD_STATUS_CONTACTED: LeadStatus
LEAD_STATUS_QUALIFIED: LeadStatus
LEAD_STATUS_PROPOSAL_SENT: LeadStatus
LEAD_STATUS_NEGOTIATING: LeadStatus
LEAD_STATUS_WON: LeadStatus
LEAD_STATUS_LOST: LeadStatus

class Lead(_message.Message):
    __slots__ = ("lead_id", "name", "phone", "email", "status", "version", "created_by", "created_at", "updated_at", "phone_display")
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PHONE_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    PHONE_DISPLAY_FIELD_NUMBER: _ClassVar[int]
    lead_id: str
    name: str
    phone: str
    email: str
    status: LeadStatus
    version: int
    created_by: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    phone_display: str
    def __init__(self, lead_id: _Optional[str] = ..., name: _Optional[str] = ..., phone: _Optional[str] = ..., email: _Optional[str] = ..., status: _Optional[_Union[LeadStatus, str]] = ..., version: _Optional[int] = ..., created_by: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., phone_display: _Optional[str] = ...) -> None: ...

class StatusChange(_message.Message):
    __slots__ = ("lead_id", "from_status", "to_status", "actor", "changed_at", "idempotency_key", "version")
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_STATUS_FIELD_NUMBER: _ClassVar[int]
    TO_STATUS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    lead_id: str
    from_status: LeadStatus
    to_status: LeadStatus
    actor: str
    changed_at: _timestamp_pb2.Timestamp
    idempotency_key: str
    version: int
    def __init__(self, lead_id: _Optional[str] = ..., from_status: _Optional[_Union[LeadStatus, str]] = ..., to_status: _Optional[_Union[LeadStatus, str]] = ..., actor: _Optional[str] = ..., changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class CreateLeadRequest(_message.Message):
    __slots__ = ("name", "phone", "email")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PHONE_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    phone: str
    email: str
    def __init__(self, name: _Optional[str] = ..., phone: _Optional[str] = ..., email: _Optional[str] = ...) -> None: ...

class GetLeadRequest(_message.Message):
    __slots__ = ("lead_id",)
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    lead_id: str
    def __init__(self, lead_id: _Optional[str] = ...) -> None: ...

class ListLeadsRequest(_message.Message):
    __slots__ = ("status", "page_size", "page_token", "phone")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PHONE_FIELD_NUMBER: _ClassVar[int]
    status: LeadStatus
    page_size: int
    page_token: str
    phone: str
    def __init__(self, status: _Optional[_Union[LeadStatus, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., phone: _Optional[str] = ...) -> None: ...

class ListLeadsResponse(_message.Message):
    __slots__ = ("leads", "next_page_token")
    LEADS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    leads: _containers.RepeatedCompositeFieldContainer[Lead]
    next_page_token: str
    def __init__(self, leads: _Optional[_Iterable[_Union[Lead, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateLeadStatusRequest(_message.Message):
    __slots__ = ("lead_id", "status", "expected_version")
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    lead_id: str
    status: LeadStatus
    expected_version: int
    def __init__(self, lead_id: _Optional[str] = ..., status: _Optional[_Union[LeadStatus, str]] = ..., expected_version: _Optional[int] = ...) -> None: ...

class BatchUpdateLeadStatusRequest(_message.Message):
    __slots__ = ("lead_ids", "status")
    LEAD_IDS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    lead_ids: _containers.RepeatedScalarFieldContainer[str]
    status: LeadStatus
    def __init__(self, lead_ids: _Optional[_Iterable[str]] = ..., status: _Optional[_Union[LeadStatus, str]] = ...) -> None: ...

class BatchUpdateLeadStatusResponse(_message.Message):
    __slots__ = ("updated_leads", "unchanged_lead_ids")
    UPDATED_LEADS_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_LEAD_IDS_FIELD_NUMBER: _ClassVar[int]
    updated_leads: _containers.RepeatedCompositeFieldContainer[Lead]
    unchanged_lead_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, updated_leads: _Optional[_Iterable[_Union[Lead, _Mapping]]] = ..., unchanged_lead_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ListStatusChangesRequest(_message.Message):
    __slots__ = ("lead_id", "page_size", "page_token")
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    lead_id: str
    page_size: int
    page_token: str
    def __init__(self, lead_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListStatusChangesResponse(_message.Message):
    __slots__ = ("status_changes", "next_page_token")
    STATUS_CHANGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    status_changes: _containers.RepeatedCompositeFieldContainer[StatusChange]
    next_page_token: str
    def __init__(self, status_changes: _Optional[_Iterable[_Union[StatusChange, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("after_cursor", "lead_ids", "types")
    AFTER_CURSOR_FIELD_NUMBER: _ClassVar[int]
    LEAD_IDS_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    after_cursor: str
    lead_ids: _containers.RepeatedScalarFieldContainer[str]
    types: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, after_cursor: _Optional[str] = ..., lead_ids: _Optional[_Iterable[str]] = ..., types: _Optional[_Iterable[str]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("cursor", "type", "occurred_at", "actor", "lead_id", "bookmark", "lead", "status_change")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    BOOKMARK_FIELD_NUMBER: _ClassVar[int]
    LEAD_FIELD_NUMBER: _ClassVar[int]
    STATUS_CHANGE_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    type: str
    occurred_at: _timestamp_pb2.Timestamp
    actor: str
    lead_id: str
    bookmark: _common_pb2.Bookmark
    lead: Lead
    status_change: StatusChange
    def __init__(self, cursor: _Optional[str] = ..., type: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., lead_id: _Optional[str] = ..., bookmark: _Optional[_Union[_common_pb2.Bookmark, _Mapping]] = ..., lead: _Optional[_Union[Lead, _Mapping]] = ..., status_change: _Optional[_Union[StatusChange, _Mapping]] = ...) -> None: ...
