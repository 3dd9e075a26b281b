"""What a text is, for every door it comes in by: `/predict`, V2, `/feedback`,
`/retrain/submit` and `refit train` files all use this one check and this one normalisation.

A lone UTF-16 surrogate (U+D800..U+DFFF on its own; JSON can spell one as `"\\ud800"`) is
not a Unicode character: no UTF-8 encoder, tokenizer or database accepts it. It is refused
with a 4xx that names where it is, never replaced: a replacement would silently train on,
or answer for, a text other than the one sent. Control characters other than tab and
newlines are refused the same way. Everything else that is valid Unicode is accepted as is
(non-characters, bidi controls, combining sequences, emoji): it is the caller's text.
"""

from __future__ import annotations

import re
import unicodedata

_REFUSED = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")

FIXES = {
    "control character": "remove control characters (tab and newlines are fine)",
    "lone surrogate": "send valid Unicode: a surrogate escape (\\ud800-\\udfff) must be half of"
    " a pair; remove it or send the whole character",
}


def invalid_character(text: str) -> tuple[str, str] | None:
    """The first refused character as (kind, `U+0007 at position 3`), kind being one of
    FIXES' keys; None when the text has none."""
    found = _REFUSED.search(text)
    if found is None:
        return None
    code = ord(found.group())
    kind = "lone surrogate" if 0xD800 <= code <= 0xDFFF else "control character"
    return kind, f"U+{code:04X} at position {found.start()}"


def normalize_text(text: str) -> str:
    """NFC, and every run of whitespace one space (strip at both ends)."""
    return " ".join(unicodedata.normalize("NFC", text).split())
