"""Closed Loop's gRPC services: leads, bookings and messaging, and the code they share."""
