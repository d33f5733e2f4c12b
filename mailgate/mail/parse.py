"""MIME parsing of inbound mail into a plain, immutable record.

`parse_message` never raises: whatever goes wrong while reading a message becomes a string in
`ParsedMessage.defects`, and the record holds everything that could still be read. The raw bytes
stay the source of truth (the caller stores them); this record is a convenience view of them.
"""

from __future__ import annotations

import binascii
import bisect
import codecs
import hashlib
import itertools
import logging
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.feedparser import BufferedSubFile, BytesFeedParser, FeedParser, NeedMoreData  # type: ignore[attr-defined]
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.policy import Policy
from typing import Any

logger = logging.getLogger(__name__)

_MAX_DEFECTS = 100  # bounds the record of a hostile message with a defect in every part
_MAX_FILENAME_BYTES = 255  # the common file-system limit for one path component
_BODY_SUBTYPES = ("plain", "html")
_ASCII = ("us-ascii", "ascii", "ansi_x3.4-1968", "iso646-us")
_PARSE_POLICY = policy.default


@dataclass(frozen=True)
class ParseLimits:
    """Bounds on the work done for one message in a worker; beyond them parsing stops and says so
    (`max_dkim_signatures` is the DKIM verification's, done in the same worker call)."""

    max_parts: int = 1000
    max_depth: int = 20
    max_header_bytes: int = 256 * 1024
    max_dkim_signatures: int = 5


@dataclass(frozen=True)
class Attachment:
    """One attached or inline non-body part; `filename` is always safe to use as a file name;
    `charset` is a text part's declared charset, when Python knows it (else None)."""

    filename: str
    content_type: str
    size: int
    content_id: str | None
    disposition: str
    data: bytes = field(repr=False)
    charset: str | None = None


@dataclass(frozen=True)
class ParsedMessage:
    """What could be read from one message; `defects` says what could not."""

    message_id: str | None
    subject: str | None
    from_address: str | None
    to_address: tuple[str, ...]
    cc_address: tuple[str, ...]
    reply_to: str | None
    datetime_message: datetime | None
    body_text: str | None
    body_html: str | None
    attachments: tuple[Attachment, ...]
    headers: tuple[tuple[str, str], ...]
    defects: tuple[str, ...]
    content_hash: str


@dataclass(frozen=True)
class BodyPart:
    """Where a body's text lies in the raw message, to be decoded when it is read (`read_body`):
    its encoded bytes ``raw[start:end]``, their transfer encoding (lower case, as the part's
    Content-Transfer-Encoding reads) and the charset the text is decoded with."""

    start: int
    end: int
    transfer_encoding: str
    charset: str

    def to_json(self) -> list[Any]:
        return [self.start, self.end, self.transfer_encoding, self.charset]

    @classmethod
    def from_json(cls, value: Any) -> BodyPart:
        """The inverse of `to_json`; ValueError when ``value`` is not one."""
        if not (isinstance(value, list) and len(value) == 4 and all(isinstance(v, int) for v in value[:2])
                and all(isinstance(v, str) for v in value[2:]) and 0 <= value[0] <= value[1]):
            raise ValueError(f"not a body part location: {str(value)[:100]!r}")
        return cls(value[0], value[1], value[2], value[3])


@dataclass
class _Pending:
    filename: str | None
    content_type: str
    content_id: str | None
    disposition: str
    size: int
    data: bytes
    charset: str | None = None


@dataclass
class _Found:
    text: str | None = None  # "" when the text is left in the message (`text_at`)
    html: str | None = None
    text_at: BodyPart | None = None
    html_at: BodyPart | None = None
    attachments: list[_Pending] = field(default_factory=list)

    @property
    def has_body(self) -> bool:
        return self.text is not None or self.html is not None


class _CachingRegistry(HeaderRegistry):
    """policy.default's header factory, remembering what it made during one parse.

    The stdlib builds a new header class on every lookup and re-parses a part's Content-Type
    each time the feed parser asks for it (several times per part); with thousands of parts that
    dominated parse time. Header objects are immutable, so sharing them is safe.
    """

    # The classes depend on the header name only, so every parse shares them; making one costs
    # a type() call, about as much as parsing a short header.
    _classes: dict[str, type[BaseHeader]] = {}

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[tuple[str, str], BaseHeader] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            if len(self._classes) >= 1000:  # names are chosen by senders: bound the memory
                self._classes.clear()
            cls = self._classes[key] = super().__getitem__(name)
        return cls

    # Short header fields recur from message to message (MIME-Version, a part's Content-Type and
    # Content-Transfer-Encoding, a correspondent's From or To), so parses also share those.
    _shared: dict[tuple[str, str], BaseHeader] = {}
    _SHARED_MAX_VALUE = 200
    _SHARED_MAX = 2000

    def __call__(self, name: str, value: str) -> BaseHeader:
        key = (name, value)
        made = self._made.get(key)
        if made is None:
            shared = len(value) <= self._SHARED_MAX_VALUE
            made = self._shared.get(key) if shared else None
            if made is None:
                made = self[name](name, value)
                if shared:
                    if len(self._shared) >= self._SHARED_MAX:
                        self._shared.clear()
                    self._shared[key] = made
            if len(self._made) >= 20_000:
                self._made.clear()
            self._made[key] = made
        return made


class _PartLimitReached(Exception):
    pass


class _PartBudget:
    """Message factory for the feed parser that stops it after `limit` parts.

    The stdlib parser has no limit of its own and costs roughly a tenth of a millisecond per
    part, so a few megabytes of tiny parts would otherwise cost many seconds of CPU. Parts
    already attached to the root when the budget runs out stay readable.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.reset()

    def reset(self) -> None:
        self.left = self.limit
        self.root: EmailMessage | None = None
        self.exhausted = False

    def __call__(self, policy: Policy = _PARSE_POLICY) -> EmailMessage:
        if self.left <= 0:
            self.exhausted = True
            raise _PartLimitReached
        self.left -= 1
        msg = EmailMessage(policy=policy)
        if self.root is None:
            self.root = msg
        return msg


_ESCAPED = re.compile("[\udc80-\udcff]")  # bytes that surrogateescape kept


def clean_text(value: str) -> str:
    """Return `value` as valid Unicode without NUL: surrogate-escaped bytes become UTF-8 (or
    Latin-1 when they are not UTF-8), NUL becomes U+FFFD (PostgreSQL text cannot hold NUL)."""
    if value.isascii():  # the common case, and no copy of a big text: nothing to repair but NUL
        return value.replace("\x00", "\ufffd")
    if _ESCAPED.search(value):
        raw = value.encode("utf-8", "surrogateescape")
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            value = raw.decode("latin-1")
    value = value.encode("utf-8", "replace").decode("utf-8")  # any other lone surrogate
    return value.replace("\x00", "\ufffd")


def sanitize_filename(name: str | None, fallback: str) -> str:
    """Return a single safe path component for `name`, or `fallback` when nothing is left.

    Drops everything up to the last path separator, control and format characters (which
    includes NUL, CR, LF and bidi overrides), leading dots and surrounding blanks, and cuts the
    name to 255 bytes of UTF-8 keeping a short extension.
    """
    if not name:
        return fallback
    name = unicodedata.normalize("NFC", clean_text(name).replace("\ufffd", ""))
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(
        ch for ch in name if unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Zl", "Zp")
    )
    name = name.strip().lstrip(".").strip()
    if len(name.encode("utf-8")) > _MAX_FILENAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        if not dot or len(ext.encode("utf-8")) > 16:
            stem, ext = name, ""
        else:
            ext = "." + ext
        budget = _MAX_FILENAME_BYTES - len(ext.encode("utf-8"))
        stem = stem.encode("utf-8")[:budget].decode("utf-8", "ignore")
        name = stem + ext
    return name or fallback


class _Parser:
    """The state of one parse: limits, counters and the defects found on the way."""

    def __init__(self, limits: ParseLimits, data: bytes = b"", attachment_data: bool = True,
                 inline_body: int | None = None) -> None:
        self.limits = limits
        self.data = data  # what the feed parser was given: leaf bodies are read from it (see _LeanInput)
        # (offset in `data`, offset in the raw message) of the body: where `data` (the header block cut
        # to its limit) and the raw message line up again; None when they never do
        self.body_shift: tuple[int, int] | None = (0, 0)
        self.attachment_data = attachment_data
        self.inline_body = inline_body
        self.defects: list[str] = []
        self.visited = 0
        self.over_parts = 0
        self.over_depth = 0

    def defect(self, text: str) -> None:
        text = text[:300]
        if text not in self.defects:
            self.defects.append(text)

    def note_email_defects(self, where: str, defects: Iterable[Exception]) -> None:
        for d in defects:
            detail = str(d)
            self.defect(f"{where}{type(d).__name__}" + (f": {detail}" if detail else ""))

    def visit(self, part: Message, depth: int, want_body: bool) -> _Found:
        """Read one MIME part: its body candidates and its attachments."""
        if self.visited >= self.limits.max_parts:
            self.over_parts += _subtree_size(part)
            return _Found()
        self.visited += 1
        number = self.visited
        try:
            if part.get_content_maintype() == "multipart" and part.is_multipart():
                return self.visit_multipart(part, depth, want_body)
            return self.visit_leaf(part, want_body)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 -- a broken part must not lose the others
            self.defect(
                f"part {number} ({_safe_type(part)}) unreadable: {type(exc).__name__}: {exc}"
            )
            return _Found()
        finally:
            # After the visit: decoding a payload adds defects (e.g. bad base64) to the part.
            self.note_email_defects("", part.defects)

    def visit_multipart(self, part: Message, depth: int, want_body: bool) -> _Found:
        children = [c for c in part.get_payload() if isinstance(c, Message)]
        if depth >= self.limits.max_depth:
            self.over_depth += sum(_subtree_size(c) for c in children)
            return _Found()
        subtype = part.get_content_subtype()
        if subtype == "alternative":
            return self.visit_alternative(children, depth + 1, want_body)
        if subtype == "related" and children:
            # RFC 2387: the root is named by the start parameter, else it is the first part.
            param = part.get_param("start")
            start = param.strip().strip("<>") if isinstance(param, str) else ""
            root = next((c for c in children if start and _content_id(c) == start), children[0])
            children = [root] + [c for c in children if c is not root]
        found = _Found()
        for child in children:  # mixed, related, signed, report and unknown subtypes
            sub = self.visit(child, depth + 1, want_body and not found.has_body)
            if sub.has_body and not found.has_body:
                found.text, found.html, found.text_at, found.html_at = sub.text, sub.html, sub.text_at, sub.html_at
            found.attachments.extend(sub.attachments)
        return found

    def visit_alternative(self, children: list[Message], depth: int, want_body: bool) -> _Found:
        # RFC 2046 section 5.1.4: alternatives come in increasing faithfulness, so the last
        # plain and the last html alternative win, wherever they stand.
        subs = [self.visit(child, depth, want_body) for child in children]
        found = _Found()
        text_from = next((s for s in reversed(subs) if s.text is not None), None)
        html_from = next((s for s in reversed(subs) if s.html is not None), None)
        if text_from is not None:
            found.text, found.text_at = text_from.text, text_from.text_at
        if html_from is not None:
            found.html, found.html_at = html_from.html, html_from.html_at
        for sub in subs:
            if sub is text_from or sub is html_from or not sub.has_body:
                found.attachments.extend(sub.attachments)
        return found

    def visit_leaf(self, part: Message, want_body: bool) -> _Found:
        ctype = part.get_content_type()
        disposition = _disposition(part)
        filename = _filename(part)
        if part.get_content_maintype() == "multipart" and want_body:
            # A multipart without a usable boundary: the stdlib keeps its content as one text.
            text, at = self.body(part)
            return _Found(text=text, text_at=at)
        is_text_body = (
            part.get_content_maintype() == "text"
            and part.get_content_subtype() in _BODY_SUBTYPES
            and disposition != "attachment"
            and (filename is None or disposition == "inline")
        )
        if is_text_body and want_body:
            text, at = self.body(part)
            return _Found(text=text, text_at=at) if ctype == "text/plain" else _Found(html=text, html_at=at)
        cid = _content_id(part)
        if disposition is None:
            disposition = "inline" if cid else "attachment"
        if self.attachment_data:
            data = self.part_bytes(part)
            pending = _Pending(filename, ctype, cid, disposition, len(data), data, _declared_charset(part))
        else:
            pending = _Pending(filename, ctype, cid, disposition, self.part_size(part), b"", _declared_charset(part))
        return _Found(attachments=[pending])

    def body(self, part: Message) -> tuple[str, BodyPart | None]:
        """A body part's text; or "" and where it lies in the raw message, when it is longer than
        ``inline_body`` (the text is decoded all the same: its defects are the message's)."""
        span, shift = _span(part), self.body_shift  # before decoding: that may give the part its payload
        text = self.decode_text(part)
        if self.inline_body is None or len(text) <= self.inline_body:
            return text, None
        if span is None or shift is None or span[0] < shift[0]:
            return text, None  # read another way than from the data: kept as text (rare)
        start = span[0] - shift[0] + shift[1]
        return "", BodyPart(start, start + span[1] - span[0], _cte(part), _charset(part))

    def decode_text(self, part: Message) -> str:
        data = self.payload(part)
        text = _text_of(data, _charset(part), self.defect)
        del data
        if "\x00" in text:
            self.defect("NUL characters in a text part replaced by U+FFFD")
        return clean_text(text)

    def payload(self, part: Message) -> bytes | bytearray | memoryview:
        """What ``part.get_payload(decode=True)`` gives for a leaf, without a copy of the part where
        the transfer encoding is the identity (a view of the message) or well-formed base64."""
        span = _span(part)
        if span is not None:
            cte = _cte(part)
            if cte not in _DECODING:
                return memoryview(self.data)[span[0] : span[1]]
            if cte == "base64":
                out = bytearray()
                if _base64_stream(memoryview(self.data)[span[0] : span[1]], out.extend):
                    return out
        _materialize(part, self.data)
        payload = part.get_payload(decode=True)
        return payload if isinstance(payload, bytes) else b""

    def part_size(self, part: Message) -> int:
        """``len(self.part_bytes(part))``, with no decoded copy of a leaf that is not needed."""
        span = _span(part)
        if span is not None:
            cte = _cte(part)
            if cte not in _DECODING:
                return span[1] - span[0]
            if cte == "base64":
                sizes: list[int] = []
                if _base64_stream(memoryview(self.data)[span[0] : span[1]], lambda b: sizes.append(len(b))):
                    return sum(sizes)
        return len(self.part_bytes(part))

    def part_bytes(self, part: Message) -> bytes:
        if part.is_multipart():  # message/rfc822 and other container attachments
            inner = part.get_payload()
            target = inner[0] if isinstance(inner, list) and len(inner) == 1 else part
            if not isinstance(target, Message):
                return b""
            for node in part.walk():  # the generator writes every leaf's body
                _materialize(node, self.data)
            for pol in (policy.compat32, policy.default):
                try:
                    data = target.as_bytes(policy=pol)
                    return data if target is not part else data.split(b"\n\n", 1)[-1]
                except Exception as exc:  # noqa: BLE001 -- try the other generator, then give up
                    self.defect(
                        f"cannot re-serialise a {_safe_type(part)} part: {type(exc).__name__}"
                    )
            return b""
        payload = self.payload(part)
        return payload if isinstance(payload, bytes) else bytes(payload)


def _charset(part: Message) -> str:
    return str(part.get_content_charset() or "us-ascii")


_CHARSET_NAME = re.compile(r"[a-z0-9][a-z0-9._:+-]{0,39}", re.ASCII)


def _declared_charset(part: Message) -> str | None:
    """A text part's declared charset, if it is a plain name that Python can decode (so that it can be
    used to read the part and be given back in a Content-Type header); None otherwise."""
    if part.get_content_maintype() != "text":
        return None
    try:
        name = part.get_content_charset()
    except Exception:  # noqa: BLE001 -- a broken parameter reads as none declared
        return None
    if not isinstance(name, str) or not _CHARSET_NAME.fullmatch(name):
        return None
    try:
        if not codecs.lookup(name)._is_text_encoding:  # type: ignore[attr-defined]  # base64_codec and the like
            return None
    except LookupError:
        return None
    return name


def _text_of(data: bytes | bytearray | memoryview, charset: str, defect: Callable[[str], object]) -> str:
    """A body's decoded bytes as text in ``charset``, as mailgate reads it: undeclared 8-bit text as
    UTF-8 or Latin-1, an unknown charset likewise (said through ``defect``)."""
    if isinstance(data, memoryview) and charset not in _VIEW_CHARSETS:
        data = bytes(data)  # codecs written in Python may not take a memoryview
    try:
        return str(data, charset)
    except UnicodeDecodeError:
        # Undeclared 8-bit text is most often UTF-8 in a part that claims ASCII.
        return _utf8_or_latin1(data) if charset in _ASCII else str(data, charset, "replace")
    except Exception:  # noqa: BLE001 -- unknown or non-text codec names
        defect(f"unknown charset {clean_text(charset)[:60]!r}; decoded as UTF-8 or Latin-1")
        return _utf8_or_latin1(data)


def read_body(raw: bytes, part: BodyPart) -> str:
    """The text of the body ``part`` of the raw message ``raw``: exactly what `parse_message` gives
    as ``body_text`` or ``body_html`` for it (a test compares both over the corpus)."""
    if part.end > len(raw):
        raise ValueError(f"a body part at bytes {part.start}-{part.end} of a message of {len(raw)} bytes")
    view = memoryview(raw)[part.start : part.end]
    data: bytes | bytearray | memoryview = view
    if part.transfer_encoding in _DECODING:
        out = bytearray()
        if part.transfer_encoding == "base64" and _base64_stream(view, out.extend):
            data = out
        else:  # as the part's own get_payload(decode=True) decodes it (see _Parser.payload)
            del out
            holder = Message()
            holder["Content-Transfer-Encoding"] = part.transfer_encoding
            holder.set_payload(str(view, "ascii", "surrogateescape"))
            payload = holder.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
    return clean_text(_text_of(data, part.charset, lambda _: None))


def _utf8_or_latin1(data: bytes | bytearray | memoryview) -> str:
    try:
        return str(data, "utf-8")
    except UnicodeDecodeError:
        return str(data, "latin-1")


# Transfer encodings `Message.get_payload(decode=True)` decodes; any other gives the body's bytes.
_DECODING = ("quoted-printable", "base64", "x-uuencode", "uuencode", "uue", "x-uue")
# Charsets whose codec (in C) decodes a memoryview as it decodes bytes.
_VIEW_CHARSETS = (*_ASCII, "utf-8", "utf8", "iso-8859-1", "latin-1", "latin1")
_BASE64_BLOCK = 1 << 20


def _cte(part: Message) -> str:
    return str(part.get("content-transfer-encoding", "")).lower()  # as Message.get_payload reads it


def _base64_stream(view: memoryview, sink: Callable[[bytes], object]) -> bool:
    """Decode base64 ``view`` block by block into ``sink``, as ``get_payload(decode=True)`` decodes
    it when it is well formed (line ends dropped, strict alphabet, padding only at the very end,
    a length that is a multiple of 4); False at the first sign it is not: the caller then lets the
    stdlib decode it (and note its defects), and ``sink`` has been given a part of it."""
    carry = b""
    padded = False
    for start in range(0, len(view), _BASE64_BLOCK):
        block = carry + bytes(view[start : start + _BASE64_BLOCK]).translate(None, b"\r\n")
        cut = len(block) - len(block) % 4
        carry, block = block[cut:], block[:cut]
        if not block:
            continue
        if padded:
            return False  # data after padding: the stdlib's error path
        try:
            sink(binascii.a2b_base64(block, strict_mode=True))
        except binascii.Error:
            return False
        padded = block.endswith(b"=")
    return not carry


def _subtree_size(part: Message) -> int:
    count, stack = 0, [part]
    while stack:
        node = stack.pop()
        count += 1
        # is_multipart() first: it needs no header parsing, and most parts are leaves.
        if node.is_multipart() and node.get_content_maintype() == "multipart":
            stack.extend(c for c in node.get_payload() if isinstance(c, Message))
    return count


def _safe_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:  # noqa: BLE001 -- only used inside defect texts
        return "unknown"


def _disposition(part: Message) -> str | None:
    try:
        value = part.get_content_disposition()
    except Exception:  # noqa: BLE001 -- a broken header reads as no disposition
        return None
    return value if value in ("attachment", "inline") else None


def _filename(part: Message) -> str | None:
    for getter in (part.get_filename, lambda: part.get_param("name")):
        try:
            value = getter()
        except Exception:  # noqa: BLE001 -- a broken parameter reads as no file name
            continue
        if isinstance(value, tuple):  # an RFC 2231 value the stdlib left undecoded
            value = value[2]
        if isinstance(value, str) and value.strip():
            return clean_text(value)
    return None


def _content_id(part: Message) -> str | None:
    try:
        value = part.get("Content-ID")
    except Exception:  # noqa: BLE001 -- a broken header reads as no content id
        return None
    if value is None:
        return None
    value = clean_text(str(value)).strip().strip("<>").strip()
    return value or None


# The fields a message's record and its DMARC check cannot do without: read even when they come
# after `max_header_bytes` (a sender can put any amount of Received: above them), the first
# occurrence of each, up to _RESCUE_BYTES in all. DKIM-Signature fields need no rescue: DKIM
# reads the raw header block itself.
_RESCUED = (b"from", b"sender", b"reply-to", b"to", b"cc", b"subject", b"message-id", b"date", b"mime-version",
            b"content-type", b"content-transfer-encoding", b"content-disposition")
_RESCUE_BYTES = 64 * 1024
_RESCUE_FIELD = re.compile(rb"(?im)^(" + b"|".join(_RESCUED) + rb")[ \t]*:[^\n]*(?:\n|\Z)(?:[ \t][^\n]*(?:\n|\Z))*")
_FIELD_NAME = re.compile(rb"(?im)^(" + b"|".join(_RESCUED) + rb")[ \t]*:")


def _split_headers(raw: bytes, limit: int, parser: _Parser) -> bytes:
    """Return `raw` with its header block cut to `limit` bytes at a line end, if it is longer,
    plus the first occurrence of each `_RESCUED` field found past the cut and not before it."""
    end = re.search(rb"\r?\n\r?\n", raw)
    header_len = end.start() if end else len(raw)
    if header_len <= limit:
        return raw
    head = raw[:limit]
    head = head[: head.rfind(b"\n") + 1]
    parser.defect(
        f"header block of {header_len} bytes exceeds limit ({limit}); parsed the first {len(head)}"
    )
    have = {m.group(1).lower() for m in _FIELD_NAME.finditer(head)}
    rescued: list[bytes] = []
    size = 0
    block_end = raw.index(b"\n", header_len) + 1 if end else len(raw)  # with the last field's line end
    for m in _RESCUE_FIELD.finditer(raw, len(head), block_end):
        name = m.group(1).lower()
        if name in have:
            continue
        have.add(name)
        if size + len(m.group(0)) > _RESCUE_BYTES:
            parser.defect(f"{clean_text(m.group(1).decode('latin-1'))} field past the header limit not read: too long")
            continue
        size += len(m.group(0))
        rescued.append(m.group(0) if m.group(0).endswith(b"\n") else m.group(0) + b"\r\n")
    if rescued:
        names = ", ".join(clean_text(f.split(b":", 1)[0].strip().decode("latin-1")) for f in rescued)
        parser.defect(f"read past the header limit all the same: {names}")
        head += b"".join(rescued)
    body = raw[end.end() :] if end else b""
    head += b"\r\n" if head.endswith(b"\r\n") else b"\n"
    parser.body_shift = (len(head), end.end()) if end else None
    return head + body


def _addresses(msg: Message, name: str, parser: _Parser) -> list[str]:
    out: list[str] = []
    try:
        for header in msg.get_all(name) or []:
            parser.note_email_defects(f"{name} header: ", getattr(header, "defects", ()))
            for addr in getattr(header, "addresses", ()):
                spec = clean_text(addr.addr_spec).strip()
                if spec and spec != "<>":
                    out.append(spec)
    except Exception as exc:  # noqa: BLE001 -- an unreadable address header reads as empty
        parser.defect(f"{name} header unreadable: {type(exc).__name__}: {exc}")
    return out


def _header_text(msg: Message, name: str, parser: _Parser) -> str | None:
    try:
        value = msg.get(name)
    except Exception as exc:  # noqa: BLE001 -- an unreadable header reads as missing
        parser.defect(f"{name} header unreadable: {type(exc).__name__}: {exc}")
        return None
    if value is None:
        return None
    # a single-line field: an encoded CR/LF must not reach a log line or a reply header as a break
    return _BREAKS.sub(" ", clean_text(str(value))).strip()


_BREAKS = re.compile(r"[\r\n\u2028\u2029]+")


def _date(msg: Message, parser: _Parser) -> datetime | None:
    try:
        header = msg.get("Date")
        value = getattr(header, "datetime", None)
    except Exception as exc:  # noqa: BLE001 -- an unreadable date reads as missing
        parser.defect(f"Date header unreadable: {type(exc).__name__}: {exc}")
        return None
    if header is not None and value is None:
        parser.defect(f"Date header not understood: {clean_text(str(header))[:100]!r}")
    if not isinstance(value, datetime):
        return None
    # RFC 5322 section 3.3: -0000 (and, by extension, no zone at all) means UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# Header names the default policy parses into a structure (addresses, dates, MIME parameters);
# every other header is unstructured text.
_STRUCTURED = frozenset(HeaderRegistry().registry)
_PLAIN_TEXT = re.compile(r"[\x20-\x7e\t\r\n]*\Z")
_LINE_BREAK = re.compile(r"[\r\n]")


def _all_headers(msg: Message, parser: _Parser) -> tuple[tuple[str, str], ...]:
    """Every header field as (name, text), in order, the text as the default policy reads it.

    An unstructured field of printable ASCII with no encoded word reads as itself, unfolded; such
    fields (DKIM-Signature, Received, ARC-*, X-*) are most of a message's header and the policy's
    tokenizer spends a tenth of a millisecond on a long one, so they skip it. A test checks that both
    ways give the same text.
    """
    out: list[tuple[str, str]] = []
    for name, raw_value in msg.raw_items():
        try:
            if name.lower() not in _STRUCTURED and "=?" not in raw_value and _PLAIN_TEXT.match(raw_value):
                value = _LINE_BREAK.sub("", raw_value)
            else:
                value = str(msg.policy.header_fetch_parse(name, raw_value))
        except Exception as exc:  # noqa: BLE001 -- keep the undecoded text instead
            parser.defect(f"{clean_text(name)} header undecodable: {type(exc).__name__}")
            value = raw_value
        out.append((clean_text(name), clean_text(value)))
    return tuple(out)


_FEED_BLOCK = 64 * 1024


class _LeanInput(BufferedSubFile):
    """The feed parser's line source, which hands it a leaf part's body as a few short stand-ins.

    The stdlib feed parser keeps every body line of a part as a string of its own until the part
    ends (about 60 bytes of overhead per line: 33 MB of empty lines took 1.7 GB), then joins them.
    Here, once the headers of a part that is not a container are read (`_LeanFeedParser`), the
    lines the parser asks for are taken in runs, each run up to the next line an end-of-part matcher
    stops at, and handed over as its last two characters: what the parser does with a leaf's
    body (join it, then drop one line end before the boundary that follows) then depends on those
    only. Where the real body lies in the data is noted on the part (`_span`), and it is read from
    there when needed (`_materialize`, `_Parser.payload`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.pos = 0  # offset in the fed data of the next line `readline` returns
        self.leaf: Message | None = None
        self.start = 0
        self.handed = 0  # characters of stand-ins handed over for the current leaf

    def begin_leaf(self, msg: Message) -> None:
        self.leaf, self.start, self.handed = msg, self.pos, 0

    def end_leaf(self) -> None:
        if self.leaf is not None:
            self.leaf.__dict__["_mailgate_span"] = (self.start, self.pos, self.handed)
            self.leaf = None

    def unreadline(self, line: str) -> None:
        assert self.leaf is None, "the feed parser never pushes back a leaf's body line"
        super().unreadline(line)
        self.pos -= len(line)

    def readline(self) -> Any:
        line = super().readline()
        if line is NeedMoreData:
            return line
        if line == "":
            self.end_leaf()
            return line
        self.pos += len(line)
        if self.leaf is None:
            return line
        lines, matchers = self._lines, self._eofstack  # type: ignore[attr-defined]
        tail = line[-2:]
        if not matchers:  # a message that is not multipart: every line there is is body
            if lines:
                self.pos += sum(map(len, lines))
                last = lines[-1]
                tail = last[-2:] if len(last) >= 2 else (lines[-2] if len(lines) > 1 else line)[-1:] + last
                lines.clear()
        elif all(_is_boundary_matcher(m) for m in matchers):
            tail = self._skip_to_dash(tail)
        else:  # message/delivery-status blocks: a blank line ends one
            while lines:
                following = lines[0]
                if any(match(following) for match in matchers):
                    break
                lines.popleft()
                self.pos += len(following)
                tail = following[-2:] if len(following) >= 2 else tail[-1:] + following
        self.handed += len(tail)
        return tail

    def _skip_to_dash(self, tail: str) -> str:
        """Take the buffered lines up to the first one an end-of-part matcher stops at, knowing
        that each of them matches boundary lines only, which begin with "--"; return the run's tail."""
        lines, matchers = self._lines, self._eofstack  # type: ignore[attr-defined]
        if not lines:
            return tail
        text = "".join(lines)
        stop, taken = len(lines), len(text)
        ends: list[int] = []
        at = text.find("-")
        while at >= 0:
            if at == 0 or text[at - 1] in "\r\n":  # a line begins with "-"
                ends = ends or list(itertools.accumulate(map(len, lines)))
                index = bisect.bisect_right(ends, at)
                if any(match(lines[index]) for match in matchers):
                    stop, taken = index, at
                    break
            at = text.find("-", at + 1)
        if taken:
            tail = text[max(taken - 2, 0) : taken] if taken >= 2 else tail[-1:] + text[:taken]
            self.pos += taken
            if stop == len(lines):
                lines.clear()
            else:
                for _ in range(stop):
                    lines.popleft()
        return tail


class _LeanFeedParser(BytesFeedParser):
    """The stdlib feed parser reading leaf bodies through `_LeanInput`, fed in blocks."""

    def __init__(self, _factory: Callable[..., Message], policy: Policy) -> None:
        super().__init__(_factory=_factory, policy=policy)
        self._input: _LeanInput = _LeanInput()

    def _parse_headers(self, lines: list[str]) -> None:
        super()._parse_headers(lines)  # type: ignore[misc]
        msg: Message = self._cur  # type: ignore[attr-defined]
        if self._headersonly:  # type: ignore[attr-defined]
            return
        # As _parsegen goes on: a part that is not message/* nor a multipart with a boundary
        # has the rest of its input as its payload.
        maintype = msg.get_content_maintype()
        if maintype != "message" and (maintype != "multipart" or msg.get_boundary() is None):
            self._input.begin_leaf(msg)

    def feed_all(self, data: bytes) -> Message:
        view = memoryview(data)
        inp = self._input
        for start in range(0, len(data), _FEED_BLOCK):
            FeedParser.feed(self, str(view[start : start + _FEED_BLOCK], "ascii", "surrogateescape"))
            if inp.leaf is not None and not inp._eofstack:  # type: ignore[attr-defined]
                # The body of a message that is no container: the rest of the data is its payload,
                # and no line end of it is dropped, so one stand-in for all of it will do.
                rest = len(inp._partial.getvalue()) + sum(map(len, inp._lines)) + max(len(data) - start - _FEED_BLOCK, 0)  # type: ignore[attr-defined]
                inp._partial.seek(0)  # type: ignore[attr-defined]
                inp._partial.truncate()  # type: ignore[attr-defined]
                inp._lines.clear()  # type: ignore[attr-defined]
                if rest > 0:
                    inp.pos += rest - 1
                    inp._lines.append("x")  # type: ignore[attr-defined]
                break
        root = self.close()
        self._input.end_leaf()
        return root


_BOUNDARY_START = "(?P<sep>" + re.escape("--")  # how _parsegen's boundary patterns begin


def _is_boundary_matcher(match: Callable[[str], object]) -> bool:
    pattern = getattr(getattr(match, "__self__", None), "pattern", None)
    return isinstance(pattern, str) and pattern.startswith(_BOUNDARY_START)


def _span(part: Message) -> tuple[int, int] | None:
    """Where ``part``'s payload lies in the data fed to `_LeanFeedParser`, if it was read so."""
    span = part.__dict__.get("_mailgate_span")
    if span is None:
        return None
    start, end, handed = span
    payload = part._payload  # type: ignore[attr-defined]
    # the stand-ins joined, less the line end the parser dropped before a boundary
    return start, end - (handed - len(payload))


def _materialize(part: Message, data: bytes) -> None:
    """Give ``part`` its real payload, as the stdlib parser would have set it."""
    span = _span(part)
    if span is not None:
        part._payload = str(memoryview(data)[span[0] : span[1]], "ascii", "surrogateescape")  # type: ignore[attr-defined]
        del part.__dict__["_mailgate_span"]


def _feed_parser(budget: _PartBudget, parse_policy: Policy) -> _LeanFeedParser:
    feed = _LeanFeedParser(budget, parse_policy)
    budget.reset()  # the constructor calls the factory once to probe its signature
    return feed


_DEFAULT_LIMITS = ParseLimits()


def parse_message(raw: bytes, limits: ParseLimits = _DEFAULT_LIMITS, *, attachment_data: bool = True) -> ParsedMessage:
    """Parse `raw` into a `ParsedMessage`; never raises.

    The body is chosen by MIME structure: in multipart/alternative the last text/plain and the
    last text/html alternatives; in multipart/mixed the first text part; in multipart/related
    the root part. Every other leaf, every message/rfc822 part and every part marked as an
    attachment (or carrying a file name without being inline) becomes an `Attachment`.
    ``attachment_data=False`` leaves `Attachment.data` empty (its size is still given): no decoded
    copy of an attachment is made then.
    """
    return _parse(raw, limits, attachment_data, None)[0]


def parse_with_body_parts(raw: bytes, limits: ParseLimits = _DEFAULT_LIMITS, *, inline_body: int,
                          attachment_data: bool = False) -> tuple[ParsedMessage, BodyPart | None, BodyPart | None]:
    """`parse_message`, except that a body whose text is longer than ``inline_body`` characters is
    not in the record (its ``body_text`` or ``body_html`` is None) but located in ``raw``: the
    record, the text `BodyPart` and the HTML one (None for a body given as text, or absent).
    `read_body` then gives exactly the text `parse_message` would have given. So a big body
    costs no copy once parsed: it is read from the stored raw message when someone reads it."""
    return _parse(raw, limits, attachment_data, inline_body)


def _parse(raw: bytes, limits: ParseLimits, attachment_data: bool, inline_body: int | None
           ) -> tuple[ParsedMessage, BodyPart | None, BodyPart | None]:
    parser = _Parser(limits, attachment_data=attachment_data, inline_body=inline_body)
    parse_policy = policy.default.clone(header_factory=_CachingRegistry())
    content_hash = hashlib.sha256(raw).hexdigest()
    data = parser.data = _split_headers(raw, limits.max_header_bytes, parser)
    budget = _PartBudget(2 * limits.max_parts + 2)
    msg: Message | None = None
    structure_read = False
    try:
        msg = _feed_parser(budget, parse_policy).feed_all(data)
        structure_read = True
    except _PartLimitReached:
        msg, structure_read = budget.root, True
    except MemoryError:  # not a defect of the message: the worker's limit (see mailgate.mail.workers)
        raise
    except Exception as exc:  # noqa: BLE001 -- fall back to the headers alone
        parser.defect(f"message structure unreadable: {type(exc).__name__}: {exc}")
        try:
            msg = BytesParser(policy=parse_policy).parsebytes(data, headersonly=True)
        except Exception as exc2:  # noqa: BLE001 -- nothing could be read but the hash
            parser.defect(f"headers unreadable: {type(exc2).__name__}: {exc2}")
    if msg is None:
        msg = EmailMessage()
    found = _Found()
    if structure_read:
        try:
            found = parser.visit(msg, 0, want_body=True)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 -- keep the header fields read below
            parser.defect(f"body unreadable: {type(exc).__name__}: {exc}")
    if budget.exhausted:
        parser.over_parts = max(parser.over_parts, 1)
    if parser.over_parts:
        rest = " and the rest of the message" if budget.exhausted else ""
        parser.defect(
            f"part limit ({limits.max_parts}) reached; {parser.over_parts} parts{rest} not parsed"
        )
    if parser.over_depth:
        parser.defect(
            f"depth limit ({limits.max_depth}) reached; {parser.over_depth} parts not parsed"
        )

    from_addresses = _addresses(msg, "From", parser)
    if "From" not in msg:
        parser.defect("missing From header")
    reply_to = _addresses(msg, "Reply-To", parser)
    to_address = tuple(_addresses(msg, "To", parser))
    cc_address = tuple(_addresses(msg, "Cc", parser))
    message_id = _header_text(msg, "Message-ID", parser) or None
    subject = _header_text(msg, "Subject", parser)
    datetime_message = _date(msg, parser)
    headers = _all_headers(msg, parser)
    defects = [clean_text(d) for d in parser.defects[:_MAX_DEFECTS]]
    if len(parser.defects) > _MAX_DEFECTS:
        defects.append(f"{len(parser.defects) - _MAX_DEFECTS} more defects not recorded")
    if defects:
        logger.debug("message %s parsed with %d defects", content_hash[:12], len(defects), extra={"event": "mail.defects"})
    record = ParsedMessage(
        message_id=message_id,
        subject=subject,
        from_address=from_addresses[0] if from_addresses else None,
        to_address=to_address,
        cc_address=cc_address,
        reply_to=reply_to[0] if reply_to else None,
        datetime_message=datetime_message,
        body_text=None if found.text_at is not None else found.text,
        body_html=None if found.html_at is not None else found.html,
        attachments=tuple(
            Attachment(
                filename=sanitize_filename(p.filename, f"attachment-{i}"),
                content_type=p.content_type,
                size=p.size,
                content_id=p.content_id,
                disposition=p.disposition,
                data=p.data,
                charset=p.charset,
            )
            for i, p in enumerate(found.attachments, start=1)
        ),
        headers=headers,
        defects=tuple(defects),
        content_hash=content_hash,
    )
    return record, found.text_at, found.html_at
