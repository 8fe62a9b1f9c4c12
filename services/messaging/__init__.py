"""The messaging service: SMS to leads through a provider behind a circuit breaker
(crm.messaging.v1)."""
