"""The fixed 128-symbol character vocabulary: symbol id == 7-bit ASCII code.

Cleaned text (see ``babyssm.data.clean``) holds only printable ASCII (32..126) and the
newline (10), so a symbol id is simply the character's code point and a prepared
corpus is the text's bytes. Id 0 (NUL never survives cleaning) is reserved as the
start-of-text symbol ``BOS_ID``: every sequence a model scores starts from it.
The other control codes stay in the table, unused, so the vocabulary is a fixed
128 symbols whatever the corpus.

>>> encode("Hi!\\n")
[72, 105, 33, 10]
>>> decode([72, 105, 33, 10])
'Hi!\\n'
>>> symbol_name(BOS_ID), symbol_name(10), symbol_name(32), symbol_name(65)
('<s>', '\\\\n', '<sp>', 'A')
"""

from __future__ import annotations

from collections.abc import Iterable

VOCAB_SIZE = 128  # 7-bit ASCII
BOS_ID = 0  # start of text; NUL is removed by cleaning, so it never collides
NEWLINE_ID = 10
SPACE_ID = 32
# Symbols that cleaned text may contain: newline and printable ASCII.
TEXT_IDS = frozenset([NEWLINE_ID, *range(32, 127)])


def symbol_name(i: int) -> str:
    """A printable label for symbol ``i`` (used in meta.json, stats and plots)."""
    if i == BOS_ID:
        return "<s>"
    if i == NEWLINE_ID:
        return "\\n"
    if i == SPACE_ID:
        return "<sp>"
    if 32 < i < 127:
        return chr(i)
    return f"<0x{i:02x}>"


SYMBOLS = [symbol_name(i) for i in range(VOCAB_SIZE)]


def encode(text: str) -> list[int]:
    """Map cleaned text to symbol ids; raises ValueError on a symbol outside TEXT_IDS."""
    ids = list(text.encode("ascii", errors="strict")) if text.isascii() else None
    if ids is None or any(i not in TEXT_IDS for i in ids):
        bad = next(c for c in text if ord(c) not in TEXT_IDS)
        raise ValueError(
            f"character {bad!r} (U+{ord(bad):04X}) is not in the babyssm vocabulary; "
            "run the text through babyssm.data.clean.clean_text first"
        )
    return ids


def decode(ids: Iterable[int]) -> str:
    """Map symbol ids back to text; BOS and unused control ids are dropped."""
    return "".join(chr(i) for i in (int(i) for i in ids) if i in TEXT_IDS)
