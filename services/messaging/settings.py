"""The messaging service's own configuration: SMS limits, the breaker, Twilio."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.messaging.domain import MAX_SEGMENTS, MIN_SEGMENTS
from services.messaging.numbers import Numbers
from services.shared.config import ConfigError, Env, integer, number

TWILIO_API = "https://api.twilio.com"


@dataclass(frozen=True)
class SmsSettings:
    max_segments: int = 1
    breaker_fail_max: int = 5
    breaker_reset_seconds: float = 30.0
    retry_max_attempts: int = 5
    # The first backoff (then 2x, 4x … with full jitter).
    retry_base_seconds: float = 1.0
    # How long one request to the provider may take.
    provider_timeout_seconds: float = 10.0
    twilio_account_sid: str = ""
    twilio_auth_token: str = field(default="", repr=False)
    twilio_from_number: str = ""
    twilio_api_base_url: str = TWILIO_API
    # Which org texts from which number (CRM_SMS_FROM_NUMBERS; services.messaging.numbers).
    numbers: Numbers = field(default_factory=Numbers)

    @property
    def uses_twilio(self) -> bool:
        return bool(self.twilio_account_sid)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SmsSettings:
        env = Env(environ)
        settings = cls(
            max_segments=env.get("CRM_SMS_MAX_SEGMENTS", integer(MIN_SEGMENTS, MAX_SEGMENTS), 1),
            breaker_fail_max=env.get("CRM_SMS_BREAKER_FAIL_MAX", integer(1, 1000), 5),
            breaker_reset_seconds=env.get("CRM_SMS_BREAKER_RESET_SECONDS", number(0.01, 86400),
                                          30.0),
            retry_max_attempts=env.get("CRM_SMS_RETRY_MAX_ATTEMPTS", integer(1, 20), 5),
            retry_base_seconds=env.get("CRM_SMS_RETRY_BASE_SECONDS", number(0.001, 60), 1.0),
            provider_timeout_seconds=env.get("CRM_SMS_PROVIDER_TIMEOUT_SECONDS",
                                             number(0.1, 120), 10.0),
            twilio_account_sid=env.str("TWILIO_ACCOUNT_SID"),
            twilio_auth_token=env.str("TWILIO_AUTH_TOKEN"),
            twilio_from_number=env.str("TWILIO_FROM_NUMBER"),
            twilio_api_base_url=env.str("TWILIO_API_BASE_URL", TWILIO_API),
            numbers=Numbers.parse(env.str("CRM_SMS_FROM_NUMBERS")),
        )
        credentials = {"TWILIO_ACCOUNT_SID": settings.twilio_account_sid,
                       "TWILIO_AUTH_TOKEN": settings.twilio_auth_token,
                       "TWILIO_FROM_NUMBER": settings.twilio_from_number}
        if settings.numbers.mapped:
            # Each org's number is its own; TWILIO_FROM_NUMBER is then not needed.
            credentials.pop("TWILIO_FROM_NUMBER")
        missing = [name for name, value in credentials.items() if not value]
        if 0 < len(missing) < len(credentials):
            raise ConfigError(f"{', '.join(missing)}: set all of TWILIO_ACCOUNT_SID, "
                              "TWILIO_AUTH_TOKEN and TWILIO_FROM_NUMBER (or CRM_SMS_FROM_NUMBERS), "
                              "or none for the console")
        return settings
