"""The bookings service through real gRPC servers, on SQLite and PostgreSQL."""
