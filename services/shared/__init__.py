"""What every service is built from: configuration, server runtime, auth,
idempotency, the event log, storage and error translation."""
