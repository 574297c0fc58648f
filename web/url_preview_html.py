"""OpenGraph data of an HTML page, for URL previews: pure functions over bytes, parsed with
the standard library's ``html.parser`` (a tolerant, maintained HTML tokenizer).

What is read, as Synapse reads it (Synapse's ``media/preview_html.py``):

- ``<meta property="og:…">`` (and ``article:…``, ``profile:…``) with non-blank content,
  the first of each property winning (the OpenGraph rule); at most 50 per prefix.
- ``<meta name="twitter:…">`` as the matching ``og:`` property when the page has none
  (``twitter:site`` is ``og:site_name``; ``twitter:card`` / ``twitter:creator`` ignored).
- No ``og:title``: the ``<title>``, else the first ``<h1>``–``<h3>`` with text.
- No ``og:image``: a ``<meta itemprop="image">``, else the largest ``<img>`` above 10×10
  pixels by its width/height attributes, else the first ``<img>``, else the favicon
  (``<link rel="icon">``).
- No ``og:description``: a ``<meta name="description">``, else the page's text outside
  ``head``, ``header``, ``nav``, ``aside``, ``footer``, scripts, styles and embedded media
  and outside menus and toolbars (ARIA roles), summarised to 200–500 characters on word
  boundaries.  A given description is trimmed the same way.

The document is decoded with the charset of its Content-Type, else of its ``<meta charset>``
(or ``http-equiv``), else its byte-order mark, else UTF-8 (bad bytes replaced).
"""
from __future__ import annotations

import codecs
from email.message import Message
from html.parser import HTMLParser
from typing import Any

OG_PREFIXES = ("og", "article", "profile")
MAX_TAGS_PER_PREFIX = 50
SKIPPED_TAGS = frozenset({"head", "header", "nav", "aside", "footer", "script", "noscript",
                          "style", "svg", "iframe", "video", "canvas", "img", "picture",
                          "template"})
SKIPPED_ROLES = frozenset({"directory", "menu", "menubar", "toolbar"})
VOID_TAGS = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link",
                       "meta", "param", "source", "track", "wbr"})
MAX_TEXT = 4000            # characters of page text kept for the description
MIN_SUMMARY, MAX_SUMMARY = 200, 500


def header_param(header: str | None, param: str) -> str | None:
    """A parameter of a MIME header value (``charset`` of a Content-Type, ``filename`` of
    a Content-Disposition), parsed by the standard library's email package."""
    if not header:
        return None
    m = Message()
    try:
        m["x"] = header
        v = m.get_param(param, header="x")
    except Exception:  # noqa: BLE001 - a malformed header has no usable parameter
        return None
    if isinstance(v, tuple):  # RFC 2231 (charset, language, value)
        v = v[2]
    return v.strip() if isinstance(v, str) and v.strip() else None


def _codec(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codecs.lookup(name.strip().strip("'\"")).name
    except LookupError:
        return None


class _CharsetSniffer(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.charset: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "meta" or self.charset is not None:
            return
        a = {k: (v or "") for k, v in attrs}
        if a.get("charset"):
            self.charset = a["charset"]
        elif a.get("http-equiv", "").lower() == "content-type":
            self.charset = header_param(a.get("content"), "charset")


def decode(body: bytes, content_type: str | None) -> str:
    """The document's text (see the module docstring for the charset's source)."""
    codec = _codec(header_param(content_type, "charset"))
    if codec is None:
        sniffer = _CharsetSniffer()
        try:
            sniffer.feed(body[:4096].decode("latin-1"))
        except Exception:  # noqa: BLE001 - HTMLParser is tolerant; be sure anyway
            pass
        codec = _codec(sniffer.charset)
    if codec is None:
        for bom, name in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                          (codecs.BOM_UTF16_BE, "utf-16")):
            if body.startswith(bom):
                codec = name
                break
    return body.decode(codec or "utf-8", errors="replace")


def _number(v: str | None) -> float:
    try:
        return float(v) if v else 0.0
    except ValueError:
        return 0.0


class _OpenGraphParser(HTMLParser):
    """Collects, in one pass, everything :func:`open_graph` may need."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.og: dict[str, str] = {}
        self.counts: dict[str, int] = {}
        self.twitter: dict[str, str] = {}
        self.meta_image: str | None = None
        self.meta_description: str | None = None
        self.title: str | None = None
        self.heading: str | None = None
        self.images: list[tuple[str, float, float]] = []
        self.favicon: str | None = None
        self.text: list[str] = []
        self._text_len = 0
        self._in_title = False
        self._title_parts: list[str] = []
        self._heading_tag: str | None = None
        self._heading_parts: list[str] = []
        self._skip: str | None = None     # the tag whose content is being skipped
        self._skip_depth = 0

    # -- tags -------------------------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v if v is not None else "") for k, v in attrs}
        if tag == "meta":
            self._meta(a)
        elif tag == "img" and a.get("src", "").strip():
            self.images.append((a["src"].strip(), _number(a.get("width")),
                                _number(a.get("height"))))
        elif tag == "link" and self.favicon is None and a.get("href", "").strip() \
                and "icon" in a.get("rel", "").lower().split():
            self.favicon = a["href"].strip()
        elif tag == "title" and self.title is None:
            self._in_title, self._title_parts = True, []
        elif tag in ("h1", "h2", "h3") and self.heading is None and self._heading_tag is None:
            self._heading_tag, self._heading_parts = tag, []
        if tag in VOID_TAGS:
            return
        if self._skip is not None:
            if tag == self._skip:
                self._skip_depth += 1
        elif tag in SKIPPED_TAGS or a.get("role", "").strip().lower() in SKIPPED_ROLES:
            self._skip, self._skip_depth = tag, 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self._in_title:
            self._in_title = False
            t = " ".join("".join(self._title_parts).split())
            if t:
                self.title = t
        elif tag == self._heading_tag:
            t = " ".join("".join(self._heading_parts).split())
            self._heading_tag = None
            if t:
                self.heading = t
        if self._skip is not None and tag == self._skip:
            self._skip_depth -= 1
            if self._skip_depth <= 0:
                self._skip = None

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self._title_parts.append(data)
        if self._heading_tag is not None:
            self._heading_parts.append(data)
        if self._skip is None and self._text_len < MAX_TEXT:
            words = " ".join(data.split())
            if words:
                self.text.append(words)
                self._text_len += len(words)

    def _meta(self, a: dict[str, str]) -> None:
        content = a.get("content", "")
        if not content.strip():
            return
        prop = a.get("property", "")
        prefix = prop.partition(":")[0]
        if prefix in OG_PREFIXES and ":" in prop:
            n = self.counts.get(prefix, 0)
            if n < MAX_TAGS_PER_PREFIX:
                self.counts[prefix] = n + 1
                self.og.setdefault(prop, content)
        name = a.get("name", "")
        if name.startswith("twitter:"):
            self.twitter.setdefault(name, content)
        if self.meta_description is None and "description" in name.lower():
            self.meta_description = content
        if self.meta_image is None and "image" in a.get("itemprop", "").lower():
            self.meta_image = content


def _twitter_to_og(key: str) -> str | None:
    if key in ("twitter:card", "twitter:creator"):
        return None
    if key == "twitter:site":
        return "og:site_name"
    return "og:" + key[len("twitter:"):]


def summarize(paragraphs: list[str], min_size: int = MIN_SUMMARY,
              max_size: int = MAX_SUMMARY) -> str | None:
    """Paragraphs joined until at least ``min_size`` characters; past ``max_size`` cut on
    a word boundary and ended with an ellipsis."""
    out = ""
    for p in paragraphs:
        if len(out) >= min_size:
            break
        p = " ".join(p.split())
        if p:
            out += p + "\n\n"
    out = out.strip()
    if len(out) > max_size:
        cut = out[:max_size]
        space = max(cut.rfind(" "), cut.rfind("\n"))
        if space >= min_size:          # end on a word boundary when that keeps enough
            cut = cut[:space]
        out = cut.rstrip() + "…"
    return out or None


def open_graph(html: str) -> dict[str, Any]:
    """The OpenGraph properties of a document (see the module docstring)."""
    p = _OpenGraphParser()
    try:
        p.feed(html)
        p.close()
    except Exception:  # noqa: BLE001 - HTMLParser is tolerant; keep what was read
        pass
    og: dict[str, Any] = dict(p.og)
    for key, value in p.twitter.items():
        mapped = _twitter_to_og(key)
        if mapped is not None and mapped not in og:
            og[mapped] = value
    if "og:title" not in og and (p.title or p.heading):
        og["og:title"] = p.title or p.heading
    if "og:image" not in og:
        big = sorted((i for i in p.images if i[1] > 10 and i[2] > 10),
                     key=lambda i: -i[1] * i[2])
        image = p.meta_image or (big[0][0] if big else None) \
            or (p.images[0][0] if p.images else None) or p.favicon
        if image:
            og["og:image"] = image
    if "og:description" in og:
        og["og:description"] = summarize([og["og:description"]])
    else:
        og["og:description"] = p.meta_description or summarize(p.text)
    return {k: v for k, v in og.items() if v is not None}
