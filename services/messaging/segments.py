"""How many SMS segments a body costs, counted the way carriers count it.

A body travels as GSM-7 when every character is in the GSM 03.38 default
alphabet or its extension table, and as UCS-2 otherwise: one character outside
GSM-7 (an emoji, a `ç`) switches the whole message, and so shrinks a segment
from 160 to 70 units.

                 one segment   each part of a multi-part message
    GSM-7        160 septets   153 septets (7 go to the concatenation header)
    UCS-2         70 units      67 units   (UTF-16 code units)

An extension character (`€`, `[`, …) is an escape plus a character: two
septets. A character outside the Basic Multilingual Plane (most emoji) is a
surrogate pair: two UTF-16 units. Carriers never split either pair across two
parts, so a part may end a unit short and the parts are counted by packing
characters greedily, not by dividing the length by 153 or 67.

Pure Python, no IO. `gateway/static/segments.js` is the same algorithm for the
web console's live counter; a test holds the two to the same answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# The GSM 03.38 default alphabet, one row of the code table per line
# (positions 0x00 to 0x7F). 0x1B is the escape to the extension table, not a
# character a body can hold, so it is removed below. Look-alikes are not
# members: 0x09 is `Ç` (not `ç`), 0x10 is Greek `Δ` (U+0394, not the
# increment sign), 0x15 is Greek `Ω` (U+03A9, not the ohm sign).
_BASIC_ROWS = (
    "@£$¥èéùìòÇ\nØø\rÅå",  # 0x00  LF at 0x0A, CR at 0x0D
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ",  # 0x10  escape at 0x1B
    " !\"#¤%&'()*+,-./",  # 0x20  `¤` where ASCII has `$`
    "0123456789:;<=>?",  # 0x30
    "¡ABCDEFGHIJKLMNO",  # 0x40  `¡` where ASCII has `@`
    "PQRSTUVWXYZÄÖÑÜ§",  # 0x50  no `[ \\ ] ^`: those are extensions
    "¿abcdefghijklmno",  # 0x60  `¿` where ASCII has a backtick
    "pqrstuvwxyzäöñüà",  # 0x70  no `{ | } ~`: those are extensions
)
_ESCAPE = "\x1b"

GSM_7_BASIC: frozenset[str] = frozenset("".join(_BASIC_ROWS)) - {_ESCAPE}

# The extension table: each is sent as escape + code, so it costs two septets.
GSM_7_EXTENSION: frozenset[str] = frozenset(
    "\f"  # 0x0A form feed (page break)
    "^"  # 0x14
    "{"  # 0x28
    "}"  # 0x29
    "\\"  # 0x2F
    "["  # 0x3C
    "~"  # 0x3D
    "]"  # 0x3E
    "|"  # 0x40
    "€"  # 0x65
)

_BMP_END = 0xFFFF


class Encoding(StrEnum):
    GSM_7 = "GSM_7"
    UCS_2 = "UCS_2"


# (units in a lone segment, units in each part of a multi-part message)
_CAPACITY = {Encoding.GSM_7: (160, 153), Encoding.UCS_2: (70, 67)}


@dataclass(frozen=True)
class Measure:
    """What a body costs: its encoding, its length in that encoding's units
    (septets for GSM-7, UTF-16 code units for UCS-2) and its segments."""

    encoding: Encoding
    units: int
    segments: int

    @property
    def per_segment(self) -> int:
        """Units one segment of this message holds: less once it is split."""
        single, part = _CAPACITY[self.encoding]
        return single if self.segments <= 1 else part


def measure(body: str) -> Measure:
    """Measure `body` as a carrier would; an empty body is 0 segments."""
    encoding = _encoding_of(body)
    costs = [_cost(ch, encoding) for ch in body]
    return Measure(encoding=encoding, units=sum(costs), segments=_segments(costs, encoding))


def _encoding_of(body: str) -> Encoding:
    gsm = all(ch in GSM_7_BASIC or ch in GSM_7_EXTENSION for ch in body)
    return Encoding.GSM_7 if gsm else Encoding.UCS_2


def _cost(ch: str, encoding: Encoding) -> int:
    if encoding is Encoding.GSM_7:
        return 2 if ch in GSM_7_EXTENSION else 1
    return 2 if ord(ch) > _BMP_END else 1


def _segments(costs: list[int], encoding: Encoding) -> int:
    """Pack characters into parts greedily; a pair that would straddle two
    parts moves whole to the next one."""
    single, part = _CAPACITY[encoding]
    total = sum(costs)
    if total <= single:
        return 1 if total else 0
    parts, used = 1, 0
    for cost in costs:
        if used + cost > part:
            parts, used = parts + 1, 0
        used += cost
    return parts
