"""A FITS file's layout read without astropy: is it plainly a valid file of images?

``butler put`` checks every file before it is written (``FitsFormat.check``).
Importing astropy's FITS stack takes about 0.3 s, most of a one-file put, while
the headers of an image file are a few 2880-byte blocks of 80-character cards.
So `judge` reads the headers itself and answers one of three things:

- **valid**: every HDU is an image (the primary HDU, ``XTENSION = 'IMAGE'``),
  every card is in the strict form of the FITS standard, the mandatory keywords
  are where and what the standard says, and the file ends exactly where the
  last HDU's padded data ends.  astropy's own check (``verify("exception")``,
  no warnings, no truncation) passes such a file;
- **invalid**, with the reason: the file does not begin with a primary header,
  or it is shorter than its headers say.  astropy refuses such a file too;
- **unsure**: anything else (tables, random groups, long strings, HIERARCH,
  free-form mandatory values, trailing bytes, a header cut short...).  The
  caller then asks astropy, which gives the exact verdict and message.

"Valid" is the only answer that skips astropy, so the rules below may be stricter
than the standard, never looser; tests/butler/test_formats.py compares the two
on files astropy writes and on many damaged ones.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import IO

BLOCK = 2880  # FITS is written in blocks of 2880 bytes
CARD = 80  # of 36 cards of 80 characters each in a header
_BITPIX = {8: 1, 16: 2, 32: 4, 64: 8, -32: 4, -64: 8}  # value -> bytes per pixel
_MAX_HEADER_BLOCKS = 1000  # 36,000 cards: beyond that, let astropy decide

_PRINTABLE = re.compile(rb"[ -~]*\Z")
_KEYWORD = re.compile(r"[A-Z0-9_-]*\Z")
# The value of a card in the standard's strict form: a string, T or F, or a number
# (astropy's "FITS standard compliant" grammar, without complex or undefined values),
# then an optional comment after a slash.
_VALUE = re.compile(
    r" *(?:(?P<string>'(?:[ -&(-~]|'')*')(?=[ /]|\Z)|(?P<logical>[FT])"
    r"|(?P<number>[+-]?(?:\.\d+|\d+(?:\.\d*)?)(?:[DE][+-]?\d+)?))"
    r" *(?:/ *(?:[!-~][ -~]*)?)?\Z"
)
_COMMENTARY = frozenset({"", "COMMENT", "HISTORY"})
_SIMPLE = "SIMPLE  =                    T"  # fixed format: the value in column 30
_COMPRESSED = (b"\x1f\x8b", b"BZh", b"PK\x03\x04", b"\xfd7zXZ")  # gzip, bzip2, zip, xz

Value = str | bool | int | float


@dataclass(frozen=True)
class Verdict:
    """``valid``: surely a good file of images; ``problem``: surely not (and why)."""

    valid: bool
    problem: str | None = None

    @property
    def sure(self) -> bool:
        return self.valid or self.problem is not None


VALID = Verdict(True)
UNSURE = Verdict(False)


class _Unsure(Exception):
    """Something the strict rules do not cover: astropy must decide."""


def judge(path: str) -> Verdict:
    """Read the headers of ``path`` (not its data); OSError passes through unchanged."""
    size = os.path.getsize(path)
    with open(path, "rb") as stream:
        start = stream.read(CARD)
        if not start.startswith(b"SIMPLE  "):
            if start.startswith(_COMPRESSED):
                return UNSURE  # astropy opens gzip, bzip2, zip and xz files transparently
            return Verdict(False, "it does not begin with a FITS primary header (SIMPLE = T)")
        stream.seek(0)
        try:
            return _judge_hdus(stream, size)
        except _Unsure:
            return UNSURE


def _judge_hdus(stream: IO[bytes], size: int) -> Verdict:
    offset = 0
    primary = True
    extend = False
    while True:
        cards = _read_header(stream)
        values = _check_mandatory(cards, primary)
        if not primary and not extend:
            raise _Unsure  # extensions without EXTEND = T in the primary header
        extend = extend or values.get("EXTEND") is True
        header_bytes = _padded((len(cards) + 1) * CARD)  # the cards and the END card
        end = offset + header_bytes + _padded(_data_bytes(values))
        if end > size:
            return Verdict(False, f"it is {size} bytes long but its HDUs need {end}")
        if end == size:
            return VALID
        offset = end
        primary = False
        stream.seek(offset)
        if stream.read(10) != b"XTENSION= ":
            raise _Unsure  # trailing bytes, padding or something astropy may take or refuse
        stream.seek(offset)


def _read_header(stream: IO[bytes]) -> list[str]:
    """The cards of the header that starts here, up to (not including) END."""
    cards: list[str] = []
    for _ in range(_MAX_HEADER_BLOCKS):
        block = stream.read(BLOCK)
        if len(block) < BLOCK or not _PRINTABLE.match(block):
            raise _Unsure  # cut short, or bytes astropy reports in its own words
        text = block.decode("ascii")
        for start in range(0, BLOCK, CARD):
            card = text[start : start + CARD]
            if card.startswith("END     ") and not card[8:].strip():
                if text[start + CARD :].strip():
                    raise _Unsure  # cards after END
                return cards
            cards.append(card)
    raise _Unsure


def _check_mandatory(cards: list[str], primary: bool) -> dict[str, Value]:
    """Each card's value by keyword; raises _Unsure unless the header is strictly standard."""
    values: dict[str, Value] = {}
    for card in cards:
        keyword = card[:8].rstrip()
        if not _KEYWORD.match(keyword) or " " in keyword:
            raise _Unsure
        if keyword in _COMMENTARY:
            continue
        if card[8:10] != "= " or keyword in ("CONTINUE", "HIERARCH"):
            raise _Unsure
        if keyword in values:
            raise _Unsure  # a repeated keyword: let astropy say which one counts
        values[keyword] = _value(card[10:])
    expected = ["SIMPLE"] if primary else ["XTENSION"]
    expected += ["BITPIX", "NAXIS"]
    naxis = values.get("NAXIS")
    if not isinstance(naxis, int) or isinstance(naxis, bool) or not 0 <= naxis <= 999:
        raise _Unsure
    expected += [f"NAXIS{axis}" for axis in range(1, naxis + 1)]
    if not primary:
        expected += ["PCOUNT", "GCOUNT"]
    elif "EXTEND" in values:
        expected.append("EXTEND")
    if [card[:8].rstrip() for card in cards[: len(expected)]] != expected:
        raise _Unsure
    if primary and not cards[0].startswith(_SIMPLE):
        raise _Unsure
    if not primary and str(values["XTENSION"]).rstrip() != "IMAGE":
        raise _Unsure  # tables and other extensions: astropy knows their rules
    if _integer(values["BITPIX"]) not in _BITPIX:
        raise _Unsure
    for axis in range(1, naxis + 1):
        if _integer(values[f"NAXIS{axis}"]) < 0:
            raise _Unsure
    naxis_keywords = {key for key in values if key.startswith("NAXIS")}
    if naxis_keywords - set(expected):
        raise _Unsure  # an NAXISj beyond NAXIS
    if not primary and (values["PCOUNT"] != 0 or values["GCOUNT"] != 1):
        raise _Unsure
    if primary and (
        values.get("EXTEND", True) is not True or {"GROUPS", "PCOUNT", "GCOUNT"} & set(values)
    ):
        raise _Unsure  # random groups, or an EXTEND = F astropy would question
    if "EXTNAME" in values and not isinstance(values["EXTNAME"], str):
        raise _Unsure
    if "BLANK" in values and not (
        isinstance(values["BLANK"], int) and _integer(values["BITPIX"]) > 0
    ):
        raise _Unsure  # astropy warns about a BLANK it must ignore
    return values


def _value(text: str) -> Value:
    match = _VALUE.match(text)
    if match is None:
        raise _Unsure
    if match["string"] is not None:
        return match["string"][1:-1].replace("''", "'").rstrip()
    if match["logical"] is not None:
        return match["logical"] == "T"
    number = match["number"]
    if re.fullmatch(r"[+-]?\d+", number):
        return int(number)
    return float(number.replace("D", "E"))


def _integer(value: Value) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Unsure
    return value


def _data_bytes(values: dict[str, Value]) -> int:
    naxis = _integer(values["NAXIS"])
    if naxis == 0:
        return 0
    pixels = 1
    for axis in range(1, naxis + 1):
        pixels *= _integer(values[f"NAXIS{axis}"])
    return _BITPIX[_integer(values["BITPIX"])] * pixels


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK
