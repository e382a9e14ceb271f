"""Text files as people save them: UTF-8 (with or without a byte-order mark), and UTF-16 or
UTF-32 (Windows editors and spreadsheets write them), with a byte-order mark or without one.

Without a byte-order mark a UTF-16 or UTF-32 file is recognised by where its NUL bytes fall (the
high bytes of Latin text: every second byte for UTF-16, three of every four for UTF-32); decoded
as UTF-8 it would be valid, and every prompt would be garbage interleaved with NULs. Text that
holds NUL bytes in no such pattern is refused: no prompt, template or system prompt holds a NUL.
"""

from __future__ import annotations

import codecs
import unicodedata

from rosi.errors import RosiError

_BOMS = (  # UTF-32's marks first: UTF-32-LE's starts with UTF-16-LE's
    (codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32"),
    (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32"),
    (codecs.BOM_UTF8, "utf-8", "UTF-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16"),
    (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16"),
)
_SAMPLE = 4096  # (a multiple of 4) bytes looked at to recognise a file without a byte-order mark


class TextEncodingError(RosiError):
    """A text file is in no encoding rosi reads (UTF-8, UTF-16, UTF-32)."""


def decode_text(data: bytes, where: str) -> str:
    """The text of a file's bytes (``where`` names it in errors): UTF-8, UTF-16 or UTF-32, with or
    without a byte-order mark (which is dropped)."""
    for bom, codec, name in _BOMS:
        if data.startswith(bom):
            text = _decode(data[len(bom) :], codec, name, where)
            return text if name == "UTF-8" else _plausible(text, name, where)
    wide = _wide_codec(data)
    if wide is not None:
        return _plausible(_decode(data, wide, wide[:6].upper(), where), wide[:6].upper(), where)
    return _decode(data, "utf-8", "UTF-8", where)


def _decode(data: bytes, codec: str, name: str, where: str) -> str:
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as e:
        raise TextEncodingError(
            f"{where} is not {name} text (byte {e.object[e.start]:#04x} at offset {e.start}); save it as UTF-8"
        ) from None
    if "\x00" in text:
        raise TextEncodingError(
            f"{where} holds NUL characters (read as {name}): it is not a text file, or a UTF-16/UTF-32 file of a layout rosi "
            "does not recognise; save it as UTF-8"
        )
    return text


def _plausible(text: str, name: str, where: str) -> str:
    """``text`` unless it holds what no text does (unassigned or private code points, controls other
    than whitespace): binary bytes that happen to start with a byte-order mark."""
    for i, c in enumerate(text):
        kind = unicodedata.category(c)
        if kind in ("Cn", "Co", "Cs") or (kind == "Cc" and c not in "\t\n\r\f\v"):
            raise TextEncodingError(f"{where} is not {name} text (it holds U+{ord(c):04X} at character {i}); save it as UTF-8")
    return text


def _wide_codec(data: bytes) -> str | None:
    """The UTF-16 or UTF-32 codec whose NUL-byte pattern ``data`` shows (None: none does)."""
    if b"\x00" not in data[:_SAMPLE]:
        return None
    sample = data[:_SAMPLE]  # a whole number of UTF-32 units where the data has one
    if len(data) % 4 == 0 and len(sample) >= 4:
        lanes = [sample[i::4] for i in range(4)]
        if not any(lanes[3]) and max(lanes[2]) <= 0x10:
            return "utf-32-le"
        if not any(lanes[0]) and max(lanes[1]) <= 0x10:
            return "utf-32-be"
    if len(data) % 2 == 0:
        even, odd = sample[0::2], sample[1::2]
        zeros_even, zeros_odd = even.count(0), odd.count(0)
        if zeros_odd > len(odd) // 4 and zeros_even * 8 < zeros_odd:
            return "utf-16-le"
        if zeros_even > len(even) // 4 and zeros_odd * 8 < zeros_even:
            return "utf-16-be"
    return None
