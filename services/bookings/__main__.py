from services.bookings.bootstrap import SPEC
from services.shared.server import main

main(SPEC)
