from alembic import context

from services.bookings.adapters import metadata
from services.shared.migrations import run_env

run_env(context, metadata)
