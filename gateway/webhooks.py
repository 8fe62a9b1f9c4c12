"""Twilio's webhooks: verified here, then handed to the messaging service.

    POST /webhooks/twilio/status    (a message status callback)
      → RecordDeliveryStatus(provider_message_id=MessageSid, provider_status=MessageStatus,
                             message_id=<the callback URL's message_id query parameter>,
                             error_code=ErrorCode, error_message=ErrorMessage)
      ← 204
    POST /webhooks/twilio/inbound   (an incoming text: STOP, START, …)
      → ReceiveInboundMessage(from=From, to=To, body=Body, provider_message_id=MessageSid)
      ← 200 <Response/> (empty TwiML, text/xml: no reply text)

Both are form-encoded, as Twilio posts them, and refused with 403 unless
`X-Twilio-Signature` is valid for CRM_PUBLIC_URL + the request's path and
query under TWILIO_AUTH_TOKEN (checked by the twilio library's
RequestValidator); with TWILIO_AUTH_TOKEN unset every webhook is refused.
Nothing refused is forwarded. Cookies and Authorization headers are ignored:
the gateway forwards with its own service token.

Orgs: a status callback is recorded in the org its URL names (`org`, put
there by the messaging service; the signature covers it), forwarded in
`x-crm-org`; an incoming text belongs to the org owning the number it was
sent to, which the messaging service knows (CRM_SMS_FROM_NUMBERS).

Twilio retries a webhook it got no answer to, so each is forwarded with an
idempotency key: Twilio's `I-Twilio-Idempotency-Token` when it sends one, else
a digest of the path and the sorted form parameters. A messaging outage is 503,
so Twilio tries again later.
"""

from __future__ import annotations

import hashlib
import logging
import re

from aiohttp import web
from crm.messaging.v1 import messaging_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from gateway import contracts
from gateway.bodies import read_form
from gateway.config import Settings
from gateway.errors import GatewayError
from gateway.upstream import REQUEST_ID, Upstreams
from services.shared.auth import ORG_METADATA
from services.shared.orgs import is_org

log = logging.getLogger("crm.gateway.webhooks")

SIGNATURE = "X-Twilio-Signature"
TWILIO_IDEMPOTENCY = "I-Twilio-Idempotency-Token"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


def idempotency_key(path: str, form: MultiDict[str], token: str | None) -> str:
    """Twilio's own token for this webhook, or a digest of what it posted."""
    if token and len(token) <= 200 and all(33 <= ord(c) <= 126 for c in token):
        return f"twilio:{token}"
    digest = hashlib.sha256(path.encode())
    for key, value in sorted(form.items()):
        digest.update(b"\0" + key.encode() + b"=" + value.encode())
    return f"twilio-sha256:{digest.hexdigest()}"


def _org_of(request: web.Request) -> str | None:
    """The org a status callback's URL names (a callback of before orgs names none:
    `default`'s); one that is no org's name is refused."""
    org = request.query.get("org")
    if org is None:
        return None
    if not is_org(org):
        raise GatewayError(code_pb2.INVALID_ARGUMENT, "INVALID_ORG",
                           "the callback URL's `org` is not an org's name")
    return org


def _error_code(form: MultiDict[str]) -> int:
    raw = form.get("ErrorCode", "").strip()
    if not raw:
        return 0
    if not re.fullmatch(r"[0-9]{1,9}", raw):
        raise GatewayError.bad_field("ErrorCode", "must be a whole number of up to 9 digits")
    return int(raw)


class TwilioWebhooks:
    def __init__(self, settings: Settings, upstreams: Upstreams) -> None:
        self.settings = settings
        self.upstreams = upstreams
        self.validator = (RequestValidator(settings.twilio_auth_token)
                          if settings.twilio_auth_token else None)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/webhooks/twilio/status", self.status, name="webhooks.twilio_status"),
            web.post("/webhooks/twilio/inbound", self.inbound, name="webhooks.twilio_inbound"),
        ]

    async def status(self, request: web.Request) -> web.Response:
        form = await self._verified(request)
        await self._forward(request, form, "RecordDeliveryStatus",
                            messaging_pb2.RecordDeliveryStatusRequest(
                                provider_message_id=form.get("MessageSid", ""),
                                provider_status=form.get("MessageStatus", ""),
                                error_code=_error_code(form),
                                error_message=form.get("ErrorMessage", ""),
                                # The messaging service put its own id in the
                                # callback URL, so a callback that beats its
                                # commit still finds the message.
                                message_id=request.query.get("message_id", ""),
                            ), org=_org_of(request))
        return web.Response(status=204)

    async def inbound(self, request: web.Request) -> web.Response:
        form = await self._verified(request)
        received = messaging_pb2.ReceiveInboundMessageRequest(
            from_number=form.get("From", ""), to=form.get("To", ""), body=form.get("Body", ""),
            provider_message_id=form.get("MessageSid", ""),
        )
        await self._forward(request, form, "ReceiveInboundMessage", received)
        return web.Response(text=EMPTY_TWIML, content_type="text/xml")

    async def _verified(self, request: web.Request) -> MultiDict[str]:
        """The form Twilio posted, if its signature holds; 403 otherwise."""
        if self.validator is None:
            log.warning("a Twilio webhook was refused: TWILIO_AUTH_TOKEN is not set")
            raise GatewayError(code_pb2.PERMISSION_DENIED, "TWILIO_WEBHOOKS_DISABLED",
                               "this gateway verifies no Twilio webhooks (TWILIO_AUTH_TOKEN "
                               "is not set)")
        signature = request.headers.get(SIGNATURE)
        form = await read_form(request)
        url = self.settings.public_url + request.raw_path
        if not signature or not self.validator.validate(url, form, signature):
            log.warning("a Twilio webhook was refused: bad signature", extra={"path": request.path})
            raise GatewayError(code_pb2.PERMISSION_DENIED, "TWILIO_SIGNATURE_INVALID",
                               f"{SIGNATURE} is missing or not valid for this request")
        return form

    async def _forward(self, request: web.Request, form: MultiDict[str], rpc: str,
                       message: Message, *, org: str | None = None) -> None:
        key = idempotency_key(request.path, form, request.headers.get(TWILIO_IDEMPOTENCY))
        metadata = [
            ("authorization", f"Bearer {self.settings.service_token}"),
            ("idempotency-key", key),
            ("x-request-id", request[REQUEST_ID]),
        ]
        if org is not None:
            metadata.append((ORG_METADATA, org))
        method = contracts.SERVICES["messaging"].methods_by_name[rpc]
        await self.upstreams.call("messaging", method, message, metadata)
