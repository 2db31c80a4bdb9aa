"""Just enough BibTeX reading for the references plugins carry: an entry's key and its fields,
and a one-line rendering for docs/cite.md.

Plugins write their references as BibTeX text (what a researcher pastes into a paper), so
this module only has to split that text, never to produce it. Values are `{...}` or `"..."`
(braces nest) or bare numbers; `@string` macros and `#` concatenation are not supported: an
entry that uses them is refused with a message naming it.
"""

from __future__ import annotations

import re

from dermbench.errors import DermbenchError

_HEAD = re.compile(r"^\s*@(?P<type>[A-Za-z]+)\s*\{\s*(?P<key>[^,\s{}]+)\s*,", re.S)
_FIELD = re.compile(r"\s*(?P<name>[A-Za-z][A-Za-z0-9_-]*)\s*=\s*", re.S)
_REQUIRED = {"title", "author", "year"}


class BibtexError(DermbenchError):
    """A reference that is not one well-formed BibTeX entry; the message quotes its start."""


def entry_key(entry: str) -> str:
    """The citation key of one BibTeX entry (`@article{key, ...}` -> `key`)."""
    head = _HEAD.match(entry)
    if head is None:
        raise BibtexError(f"not a BibTeX entry (expected '@type{{key, ...}}'): {entry.strip()[:60]!r}")
    return head["key"]


def entry_type(entry: str) -> str:
    """The entry type in lower case (`article`, `inproceedings`, `misc`, ...)."""
    entry_key(entry)
    return _HEAD.match(entry)["type"].lower()


def fields(entry: str) -> dict[str, str]:
    """{field name in lower case: value without its outer delimiters} of one entry."""
    key = entry_key(entry)
    text = entry.strip()
    pos = _HEAD.match(text).end()
    out: dict[str, str] = {}
    while True:
        rest = text[pos:].lstrip().lstrip(",").lstrip()
        if not rest:
            raise BibtexError(f"entry {key!r}: unbalanced braces (the entry never closes)")
        if rest.startswith("}"):
            if rest[1:].strip():
                raise BibtexError(f"entry {key!r}: text after the closing brace: {rest[1:].strip()[:40]!r}")
            return out
        match = _FIELD.match(text, len(text) - len(rest))
        if match is None:
            raise BibtexError(f"entry {key!r}: expected 'name = value' at {rest[:40]!r}")
        name, pos = match["name"].lower(), match.end()
        value, pos = _value(text, pos, key=key, name=name)
        if name in out:
            raise BibtexError(f"entry {key!r}: field {name!r} appears twice")
        out[name] = value


def _value(text: str, pos: int, *, key: str, name: str) -> tuple[str, int]:
    """One field value starting at `pos` and the position after it."""
    opener = text[pos : pos + 1]
    if opener == '"':
        end = text.find('"', pos + 1)
        if end < 0:
            raise BibtexError(f"entry {key!r}: field {name!r} has no closing quote")
        return text[pos + 1 : end], end + 1
    if opener == "{":
        depth = 0
        for i in range(pos, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[pos + 1 : i], i + 1
        raise BibtexError(f"entry {key!r}: field {name!r} has unbalanced braces")
    bare = re.match(r"[0-9]+", text[pos:])
    if bare is None:
        raise BibtexError(
            f'entry {key!r}: field {name!r} must be {{...}}, "..." or a number '
            "(string macros and # are not supported)"
        )
    return bare.group(), pos + bare.end()


def check_entry(entry: str) -> str:
    """`entry` itself when it parses and has a title, author and year; else a BibtexError naming
    the entry and what it lacks (so a plugin's typo fails its test, not a user's paper)."""
    found = fields(entry)
    missing = sorted(_REQUIRED - found.keys())
    if missing:
        raise BibtexError(f"entry {entry_key(entry)!r} lacks {', '.join(missing)}")
    return entry


def plain(value: str) -> str:
    """A field value for reading: braces and common accent commands dropped, spaces squeezed."""
    value = re.sub(r"\\['`^\"~]\{?([A-Za-z])\}?", r"\1", value)  # {\'o} -> o: good enough for a list
    value = value.replace("--", "–").replace("\\&", "&")
    return " ".join(value.replace("{", "").replace("}", "").split())


def authors_short(value: str) -> str:
    """'Last' for one author, 'Last and Last' for two, 'Last et al.' for more; a braced
    corporate author ("{dermbench contributors}") as it is."""
    if value.strip().startswith("{") and value.strip().endswith("}") and " and " not in value:
        return plain(value)
    names = [n.strip() for n in re.split(r"\s+and\s+", plain(value)) if n.strip()]
    lasts = [n.split(",")[0].strip() if "," in n else n.split()[-1] for n in names if n != "others"]
    if len(names) == 1:
        return lasts[0]
    if len(names) == 2 and "others" not in names:
        return f"{lasts[0]} and {lasts[1]}"
    return f"{lasts[0]} et al."


def one_line(entry: str) -> str:
    """'Authors, "Title", venue, year (arXiv id).' for README's list."""
    f = fields(entry)
    venue = f.get("journal") or f.get("booktitle") or f.get("howpublished") or f.get("publisher") or ""
    parts = [authors_short(f["author"]), f"*{plain(f['title'])}*"]
    if venue:
        parts.append(plain(re.sub(r"\\url\{([^}]*)\}", r"\1", venue)))
    parts.append(plain(f["year"]))
    line = ", ".join(parts)
    if f.get("archiveprefix", "").lower() == "arxiv" and "eprint" in f:
        line += f" (arXiv:{plain(f['eprint'])})"
    return line + f" [`{entry_key(entry)}`]"
