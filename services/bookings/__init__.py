"""The bookings service: appointments between agents and leads, never double-booked
(crm.bookings.v1)."""
