"""The services the gateway fronts, as their contracts describe them.

Routes, request parsing, JSON and the OpenAPI document are all derived from
these descriptors; nothing about a particular RPC is written by hand.
"""

from __future__ import annotations

from crm.bookings.v1 import bookings_pb2
from crm.leads.v1 import leads_pb2
from crm.messaging.v1 import messaging_pb2
from google.api import field_behavior_pb2
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)

SERVICES: dict[str, ServiceDescriptor] = {
    "leads": leads_pb2.DESCRIPTOR.services_by_name["LeadsService"],
    "bookings": bookings_pb2.DESCRIPTOR.services_by_name["BookingsService"],
    "messaging": messaging_pb2.DESCRIPTOR.services_by_name["MessagingService"],
}

# Well-known types whose JSON form is a string (or a scalar), not an object.
SCALAR_LIKE = {
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
}
# Well-known types with a JSON form of their own (objects, any value).
FREE_FORM = {"google.protobuf.Any", "google.protobuf.Struct", "google.protobuf.Value",
             "google.protobuf.ListValue", "google.protobuf.Empty"}

INT64_TYPES = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64,
               FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_FIXED64,
               FieldDescriptor.TYPE_SFIXED64}
INT32_TYPES = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_UINT32,
               FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_FIXED32,
               FieldDescriptor.TYPE_SFIXED32}
FLOAT_TYPES = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}


def full_method(method: MethodDescriptor) -> str:
    """The gRPC path of a method, as in "/crm.leads.v1.LeadsService/GetLead"."""
    return f"/{method.containing_service.full_name}/{method.name}"


def is_message(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE


def message_of(field: FieldDescriptor) -> Descriptor:
    """The message type of a message field."""
    assert field.message_type is not None, f"{field.full_name} is not a message field"
    return field.message_type


def enum_of(field: FieldDescriptor) -> EnumDescriptor:
    assert field.enum_type is not None, f"{field.full_name} is not an enum field"
    return field.enum_type


def type_name(field: FieldDescriptor) -> str:
    """The full name of a message field's type ("" for other fields)."""
    return field.message_type.full_name if field.message_type is not None else ""


def is_map(field: FieldDescriptor) -> bool:
    return (is_message(field) and field.is_repeated
            and message_of(field).GetOptions().map_entry)


def is_plain_message(field: FieldDescriptor) -> bool:
    """A message field whose JSON is an object of its fields (not a well-known type)."""
    return (is_message(field) and not is_map(field)
            and type_name(field) not in SCALAR_LIKE | FREE_FORM)


def behaviors(field: FieldDescriptor) -> set[int]:
    return set(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def is_required(field: FieldDescriptor) -> bool:
    return field_behavior_pb2.REQUIRED in behaviors(field)


def is_output_only(field: FieldDescriptor) -> bool:
    return field_behavior_pb2.OUTPUT_ONLY in behaviors(field)


def field_named(message: Descriptor, name: str) -> FieldDescriptor | None:
    """A field by its proto name or its JSON (lowerCamelCase) name."""
    found = message.fields_by_name.get(name)
    if found is not None:
        return found
    return next((f for f in message.fields if f.json_name == name), None)
