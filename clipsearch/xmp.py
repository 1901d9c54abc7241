"""XMP sidecars: tags written as ``dc:subject`` keywords, where photo tools look for them.

digiKam, darktable and Lightroom read keywords from an XMP sidecar beside the photo:
``photo.jpg.xmp`` (darktable's and digiKam's naming, the default) or ``photo.xmp``
(Lightroom's, ``style="lightroom"``).

A sidecar that exists already belongs to the user and to those tools, so it is edited,
not rewritten: the new ``<rdf:li>`` keywords are spliced into the text of its
``dc:subject`` bag (or a bag is added to its first ``rdf:Description``), and every other
byte stays as it was. XMP toolkits (exiv2, Adobe's) would re-serialise the whole packet,
reordering and reformatting what other programs wrote; that is why this is done by hand.
The result is parsed again and checked before it replaces the file, atomically. Keywords
are only ever added: a keyword the user or another tool put there is never removed.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path
from xml.sax.saxutils import escape

from .errors import ArgumentError
from .files import write_atomic
from .results import FileError, ImageTag, XmpReport

RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
DC = "http://purl.org/dc/elements/1.1/"
STYLES = ("default", "lightroom")

_EMPTY = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="clipsearch">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:dc="http://purl.org/dc/elements/1.1/">
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""


class XmpError(ValueError):
    """A sidecar that cannot be merged safely; it is left untouched."""


def sidecar_path(image: str | os.PathLike, style: str = "default") -> Path:
    image = Path(image)
    if style == "lightroom":
        return image.with_suffix(".xmp")
    if style == "default":
        return image.with_name(image.name + ".xmp")
    raise ValueError(f"unknown sidecar style {style!r}; choose one of: {', '.join(STYLES)}")


def keywords(text: str) -> list[str]:
    """The ``dc:subject`` keywords of an XMP packet, in order."""
    root = _parse(text)
    return [item.text or "" for subject in root.iter(f"{{{DC}}}subject") for item in subject.iter(f"{{{RDF}}}li")]


def merge(text: str | None, new: list[str]) -> tuple[str | None, list[str]]:
    """``text`` (a sidecar's content, None for no sidecar) with the ``new`` keywords it lacks
    added; returns ``(None, [])`` when nothing needs to change, else the text and what was added."""
    current = keywords(text) if text is not None else []
    missing = [k for k in dict.fromkeys(new) if k not in current]
    if not missing:
        return None, []
    merged = _splice(_EMPTY if text is None else text, missing)
    if keywords(merged) != current + missing:
        raise XmpError("the merged sidecar did not read back as expected")
    return merged, missing


def write_keywords(tags: Iterable[ImageTag], style: str = "default", dry_run: bool = False) -> XmpReport:
    """Merge each image's tag labels into its sidecar as keywords; a sidecar that cannot be
    merged safely is left as it is and reported."""
    if style not in STYLES:  # checked before any sidecar is written, for every caller
        raise ArgumentError(f"unknown sidecar style {style!r}", hint=f"choose one of: {', '.join(STYLES)}")
    report = XmpReport(dry_run=dry_run)
    by_path: dict[str, list[str]] = {}
    for t in tags:
        by_path.setdefault(t.path, []).append(t.label)
    for path, labels in by_path.items():
        sidecar = sidecar_path(path, style)
        try:
            old = read(sidecar)
            text, added = merge(old, labels)
            if text is not None and not dry_run:
                write(sidecar, text)
        except (XmpError, OSError) as exc:
            report.errors.append(FileError(str(sidecar), f"left unchanged: {exc}"))
            continue
        report.keywords += len(added)
        if text is None:
            report.unchanged += 1
        elif old is None:
            report.created += 1
        else:
            report.updated += 1
    return report


def read(path: Path) -> str | None:
    """A sidecar's text, line endings untouched; None if there is none."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise XmpError("not UTF-8 text") from None


def write(path: Path, text: str) -> None:
    """Replace ``path`` atomically, keeping its permissions."""
    write_atomic(path, text.encode("utf-8"))


def _parse(text: str) -> ET.Element:
    try:
        return ET.fromstring(text)
    except ET.ParseError as exc:
        raise XmpError(f"not valid XML ({exc})") from None


def _prefix(text: str, uri: str) -> str | None:
    m = re.search(r'xmlns:([A-Za-z_][\w.-]*)\s*=\s*["\']' + re.escape(uri) + '["\']', text)
    return m.group(1) if m else None


def _items(rdf: str, words: list[str], before: str = "", after: str = "") -> str:
    """One ``rdf:li`` per word, each between ``before`` and ``after`` (line breaks, indents)."""
    return "".join(f"{before}<{rdf}:li>{escape(w)}</{rdf}:li>{after}" for w in words)


def _splice(text: str, words: list[str]) -> str:
    rdf = _prefix(text, RDF)
    if rdf is None:
        raise XmpError("no RDF namespace: not an XMP packet")
    dc = _prefix(text, DC)
    if dc is not None:
        subject = re.search(rf"<{dc}:subject\b[^>]*>", text)
        if subject is not None and not subject.group(0).endswith("/>"):
            # An existing bag: the new items go right before its end tag.
            bag_end = re.compile(rf"</{rdf}:Bag\s*>").search(text, subject.end())
            empty_bag = re.compile(rf"<{rdf}:Bag\s*/>").search(text, subject.end())
            if empty_bag and (bag_end is None or empty_bag.start() < bag_end.start()):
                return (text[:empty_bag.start()] + f"<{rdf}:Bag>" + _items(rdf, words, "\n     ")
                        + f"\n    </{rdf}:Bag>" + text[empty_bag.end():])
            if bag_end is None:
                raise XmpError("dc:subject holds no rdf:Bag")
            line_start = text.rfind("\n", 0, bag_end.start()) + 1
            indent = text[line_start:bag_end.start()]
            if indent.strip() == "":  # the end tag on a line of its own: one new line per item
                return text[:line_start] + _items(rdf, words, indent + " ", "\n") + text[line_start:]
            return text[:bag_end.start()] + _items(rdf, words) + text[bag_end.start():]
        if subject is not None:
            raise XmpError("dc:subject is empty and self-closing")
    # No keywords yet: a dc:subject bag at the start of the first rdf:Description.
    description = re.search(rf"<{rdf}:Description\b[^>]*?(/?)>", text)
    if description is None:
        raise XmpError("no rdf:Description to add keywords to")
    tag = description.group(0)
    if dc is None:
        dc = "dc"
        tag = tag[:-2].rstrip() + f'\n    xmlns:dc="{DC}"/>' if tag.endswith("/>") else \
            tag[:-1].rstrip() + f'\n    xmlns:dc="{DC}">'
    bag = (f"\n   <{dc}:subject>\n    <{rdf}:Bag>" + _items(rdf, words, "\n     ")
           + f"\n    </{rdf}:Bag>\n   </{dc}:subject>")
    if tag.endswith("/>"):
        replacement = tag[:-2].rstrip() + ">" + bag + f"\n  </{rdf}:Description>"
    else:
        replacement = tag + bag
    return text[:description.start()] + replacement + text[description.end():]
