"""How a name from outside (tensor name, file or asset path) is written into a message.

Owns: ``shown`` — the one quoting rule for names in problems and remedies. A name that is
NFC and printable is quoted as Python's ``repr`` (``'model.embed.weight'``, ``'模型.bin'``); any
other name is written with ``ascii()``, so a decomposed accent (``'cafe\\u0301'``), a zero-width
or bidirectional character or a control character is visible instead of looking like the name
it imitates. Does not own refusing such names (``format.directory.check_label``).
"""

from __future__ import annotations

import unicodedata


def shown(value: object, limit: int = 80) -> str:
    """``value`` quoted for a message: ``repr`` if a printable NFC string, else ``ascii``; at most ``limit`` chars."""
    if isinstance(value, str) and value.isprintable() and unicodedata.normalize("NFC", value) == value:
        text = repr(value)
    else:
        text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_VOWEL_SOUND_LETTERS = frozenset("FHLMNRSX")  # spelled out in an acronym: "an RSA key", "an HTTP error"


def a_or_an(noun: str) -> str:
    """``noun`` with its indefinite article, for type and dtype names in messages ("an object", "a uint8")."""
    head = noun[:1]
    if not head:
        return noun
    if head.lower() in "aeio" or (head == "u" and not noun.startswith(("uint", "uni", "use", "usb"))):
        return f"an {noun}"
    if head in _VOWEL_SOUND_LETTERS and noun[1:2].isupper():  # an acronym, letter by letter
        return f"an {noun}"
    return f"a {noun}"
