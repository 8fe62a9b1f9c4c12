import datetime

from crm.common.v1 import common_pb2 as _common_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MessageStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MESSAGE_STATUS_UNSPECIFIED: _ClassVar[MessageStatus]
    MESSAGE_STATUS_QUEUED: _ClassVar[MessageStatus]
    MESSAGE_STATUS_SENDING: _ClassVar[MessageStatus]
    MESSAGE_STATUS_SENT: _ClassVar[MessageStatus]
    MESSAGE_STATUS_DELIVERED: _ClassVar[MessageStatus]
    MESSAGE_STATUS_UNDELIVERED: _ClassVar[MessageStatus]
    MESSAGE_STATUS_FAILED: _ClassVar[MessageStatus]
    MESSAGE_STATUS_RECEIVED: _ClassVar[MessageStatus]

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCODING_UNSPECIFIED: _ClassVar[Encoding]
    ENCODING_GSM_7: _ClassVar[Encoding]
    ENCODING_UCS_2: _ClassVar[Encoding]

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIRECTION_UNSPECIFIED: _ClassVar[Direction]
    DIRECTION_OUTBOUND: _ClassVar[Direction]
    DIRECTION_INBOUND: _ClassVar[Direction]

class BreakerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BREAKER_STATE_UNSPECIFIED: _ClassVar[BreakerState]
    BREAKER_STATE_CLOSED: _ClassVar[BreakerState]
    BREAKER_STATE_OPEN: _ClassVar[BreakerState]
    BREAKER_STATE_HALF_OPEN: _ClassVar[BreakerState]
MESSAGE_STATUS_UNSPECIFIED: MessageStatus
MESSAGE_STATUS_QUEUED: MessageStatus
MESSAGE_STATUS_SENDING: MessageStatus
MESSAGE_STATUS_SENT: MessageStatus
MESSAGE_STATUS_DELIVERED: MessageStatus
MESSAGE_STATUS_UNDELIVERED: MessageStatus
MESSAGE_STATUS_FAILED: MessageStatus
MESSAGE_STATUS_RECEIVED: MessageStatus
ENCODING_UNSPECIFIED: Encoding
ENCODING_GSM_7: Encoding
ENCODING_UCS_2: Encoding
DIRECTION_UNSPECIFIED: Direction
DIRECTION_OUTBOUND: Direction
DIRECTION_INBOUND: Direction
BREAKER_STATE_UNSPECIFIED: BreakerState
BREAKER_STATE_CLOSED: BreakerState
BREAKER_STATE_OPEN: BreakerState
BREAKER_STATE_HALF_OPEN: BreakerState

class Message(_message.Message):
    __slots__ = ("message_id", "lead_id", "direction", "to", "from_number", "body", "segments", "encoding", "status", "provider", "provider_message_id", "error_code", "error_message", "created_by", "created_at", "updated_at")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    FROM_NUMBER_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    lead_id: str
    direction: Direction
    to: str
    from_number: str
    body: str
    segments: int
    encoding: Encoding
    status: MessageStatus
    provider: str
    provider_message_id: str
    error_code: int
    error_message: str
    created_by: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, message_id: _Optional[str] = ..., lead_id: _Optional[str] = ..., direction: _Optional[_Union[Direction, str]] = ..., to: _Optional[str] = ..., from_number: _Optional[str] = ..., body: _Optional[str] = ..., segments: _Optional[int] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., status: _Optional[_Union[MessageStatus, str]] = ..., provider: _Optional[str] = ..., provider_message_id: _Optional[str] = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ..., created_by: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SendSmsRequest(_message.Message):
    __slots__ = ("lead_id", "body")
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    lead_id: str
    body: str
    def __init__(self, lead_id: _Optional[str] = ..., body: _Optional[str] = ...) -> None: ...

class GetMessageRequest(_message.Message):
    __slots__ = ("message_id",)
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    def __init__(self, message_id: _Optional[str] = ...) -> None: ...

class ListMessagesRequest(_message.Message):
    __slots__ = ("lead_id", "page_size", "page_token")
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    lead_id: str
    page_size: int
    page_token: str
    def __init__(self, lead_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListMessagesResponse(_message.Message):
    __slots__ = ("messages", "next_page_token")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    next_page_token: str
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetProviderStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProviderStatus(_message.Message):
    __slots__ = ("provider", "state", "failure_count", "fail_max", "reset_timeout", "opened_at", "closes_at", "sent_count", "transient_failure_count", "rejected_count", "short_circuited_count", "max_segments")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_COUNT_FIELD_NUMBER: _ClassVar[int]
    FAIL_MAX_FIELD_NUMBER: _ClassVar[int]
    RESET_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    OPENED_AT_FIELD_NUMBER: _ClassVar[int]
    CLOSES_AT_FIELD_NUMBER: _ClassVar[int]
    SENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRANSIENT_FAILURE_COUNT_FIELD_NUMBER: _ClassVar[int]
    REJECTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHORT_CIRCUITED_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    provider: str
    state: BreakerState
    failure_count: int
    fail_max: int
    reset_timeout: _duration_pb2.Duration
    opened_at: _timestamp_pb2.Timestamp
    closes_at: _timestamp_pb2.Timestamp
    sent_count: int
    transient_failure_count: int
    rejected_count: int
    short_circuited_count: int
    max_segments: int
    def __init__(self, provider: _Optional[str] = ..., state: _Optional[_Union[BreakerState, str]] = ..., failure_count: _Optional[int] = ..., fail_max: _Optional[int] = ..., reset_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., opened_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., closes_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sent_count: _Optional[int] = ..., transient_failure_count: _Optional[int] = ..., rejected_count: _Optional[int] = ..., short_circuited_count: _Optional[int] = ..., max_segments: _Optional[int] = ...) -> None: ...

class MessageTemplate(_message.Message):
    __slots__ = ("template_id", "name", "body", "created_by", "created_at", "updated_by", "updated_at", "version")
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    template_id: str
    name: str
    body: str
    created_by: str
    created_at: _timestamp_pb2.Timestamp
    updated_by: str
    updated_at: _timestamp_pb2.Timestamp
    version: int
    def __init__(self, template_id: _Optional[str] = ..., name: _Optional[str] = ..., body: _Optional[str] = ..., created_by: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_by: _Optional[str] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., version: _Optional[int] = ...) -> None: ...

class ListMessageTemplatesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListMessageTemplatesResponse(_message.Message):
    __slots__ = ("templates", "next_page_token")
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    templates: _containers.RepeatedCompositeFieldContainer[MessageTemplate]
    next_page_token: str
    def __init__(self, templates: _Optional[_Iterable[_Union[MessageTemplate, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SaveMessageTemplateRequest(_message.Message):
    __slots__ = ("template_id", "name", "body")
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    template_id: str
    name: str
    body: str
    def __init__(self, template_id: _Optional[str] = ..., name: _Optional[str] = ..., body: _Optional[str] = ...) -> None: ...

class DeleteMessageTemplateRequest(_message.Message):
    __slots__ = ("template_id",)
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    template_id: str
    def __init__(self, template_id: _Optional[str] = ...) -> None: ...

class ReceiveInboundMessageRequest(_message.Message):
    __slots__ = ("from_number", "to", "body", "provider_message_id")
    FROM_NUMBER_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    from_number: str
    to: str
    body: str
    provider_message_id: str
    def __init__(self, from_number: _Optional[str] = ..., to: _Optional[str] = ..., body: _Optional[str] = ..., provider_message_id: _Optional[str] = ...) -> None: ...

class ReceiveInboundMessageResponse(_message.Message):
    __slots__ = ("message", "consent")
    class Consent(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        CONSENT_UNSPECIFIED: _ClassVar[ReceiveInboundMessageResponse.Consent]
        CONSENT_UNCHANGED: _ClassVar[ReceiveInboundMessageResponse.Consent]
        CONSENT_OPTED_OUT: _ClassVar[ReceiveInboundMessageResponse.Consent]
        CONSENT_OPTED_IN: _ClassVar[ReceiveInboundMessageResponse.Consent]
    CONSENT_UNSPECIFIED: ReceiveInboundMessageResponse.Consent
    CONSENT_UNCHANGED: ReceiveInboundMessageResponse.Consent
    CONSENT_OPTED_OUT: ReceiveInboundMessageResponse.Consent
    CONSENT_OPTED_IN: ReceiveInboundMessageResponse.Consent
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CONSENT_FIELD_NUMBER: _ClassVar[int]
    message: Message
    consent: ReceiveInboundMessageResponse.Consent
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ..., consent: _Optional[_Union[ReceiveInboundMessageResponse.Consent, str]] = ...) -> None: ...

class RecordDeliveryStatusRequest(_message.Message):
    __slots__ = ("provider_message_id", "provider_status", "error_code", "error_message", "message_id")
    PROVIDER_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    provider_message_id: str
    provider_status: str
    error_code: int
    error_message: str
    message_id: str
    def __init__(self, provider_message_id: _Optional[str] = ..., provider_status: _Optional[str] = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ..., message_id: _Optional[str] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("after_cursor", "lead_ids", "types")
    AFTER_CURSOR_FIELD_NUMBER: _ClassVar[int]
    LEAD_IDS_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    after_cursor: str
    lead_ids: _containers.RepeatedScalarFieldContainer[str]
    types: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, after_cursor: _Optional[str] = ..., lead_ids: _Optional[_Iterable[str]] = ..., types: _Optional[_Iterable[str]] = ...) -> None: ...

class Consent(_message.Message):
    __slots__ = ("phone", "opted_out")
    PHONE_FIELD_NUMBER: _ClassVar[int]
    OPTED_OUT_FIELD_NUMBER: _ClassVar[int]
    phone: str
    opted_out: bool
    def __init__(self, phone: _Optional[str] = ..., opted_out: _Optional[bool] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("cursor", "type", "occurred_at", "actor", "lead_id", "message_id", "bookmark", "message", "consent", "provider", "template")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    BOOKMARK_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CONSENT_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    type: str
    occurred_at: _timestamp_pb2.Timestamp
    actor: str
    lead_id: str
    message_id: str
    bookmark: _common_pb2.Bookmark
    message: Message
    consent: Consent
    provider: ProviderStatus
    template: MessageTemplate
    def __init__(self, cursor: _Optional[str] = ..., type: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., lead_id: _Optional[str] = ..., message_id: _Optional[str] = ..., bookmark: _Optional[_Union[_common_pb2.Bookmark, _Mapping]] = ..., message: _Optional[_Union[Message, _Mapping]] = ..., consent: _Optional[_Union[Consent, _Mapping]] = ..., provider: _Optional[_Union[ProviderStatus, _Mapping]] = ..., template: _Optional[_Union[MessageTemplate, _Mapping]] = ...) -> None: ...
