"""Names a spec gives (its ``name``, the levels of its named axes): any script, and safe wherever they go.

``name`` becomes the MLflow experiment and the folder ``results/<name>/``; a level name becomes part of variant
ids, run names and report rows. So a name is Unicode letters (with their combining marks, as Devanagari needs)
and digits, plus ``-``, ``_`` and ``.``, starting with a letter or digit: no path separator, no ``..`` or
leading dot, no space, control or invisible (bidi) character. It must be in NFC, the composed form every
keyboard types, so that one name has one spelling: in NFD the same Korean name would be a second experiment and
a second folder, and two levels differing only so would look like one.
"""

from __future__ import annotations

import unicodedata

NAME_PUNCTUATION = "-_."
MAX_NAME_BYTES = 200  # a folder name may have 255 bytes (ext4, APFS); a Hangul syllable is 3 bytes of UTF-8


def _allowed(char: str) -> bool:
    return unicodedata.category(char)[0] in "LM" or unicodedata.category(char) == "Nd" or char in NAME_PUNCTUATION


def _describe(char: str) -> str:
    return f"{char!r} (U+{ord(char):04X} {unicodedata.name(char, 'unnamed character')})"


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name an experiment or a level, or None. Expects a ``str``."""
    if not name:
        return "is empty"
    nfc = unicodedata.normalize("NFC", name)
    if nfc != name:
        return (
            f"{name!r} is not in Unicode NFC (composed) form: {len(name)} code points where NFC has {len(nfc)} "
            f"(e.g. Hangul as separate jamo); write it as {nfc!r}"
        )
    if "/" in name or "\\" in name:
        return f"{name!r} has a path separator; a name is one folder name"
    if name.startswith("."):
        return f"{name!r} starts with a dot (a hidden folder, or '..')"
    bad = next((c for c in name if not _allowed(c)), None)
    if bad is not None:
        return f"{name!r} has {_describe(bad)}; use letters and digits of any script, and -_. only"
    if unicodedata.category(name[0])[0] == "M" or name[0] in NAME_PUNCTUATION:
        return f"{name!r} must start with a letter or digit"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"is {len(name.encode('utf-8'))} bytes of UTF-8, over {MAX_NAME_BYTES} (a folder name holds 255)"
    return None


def nfc_twins(names) -> dict[str, str]:
    """``{name: an earlier name}`` for names equal to an earlier one under NFC (their spelling differs)."""
    first: dict[str, str] = {}
    twins = {}
    for name in names:
        if not isinstance(name, str):
            continue
        key = unicodedata.normalize("NFC", name)
        if key in first and first[key] != name:
            twins[name] = first[key]
        first.setdefault(key, name)
    return twins
