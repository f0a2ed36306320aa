"""Reading and writing HL7 v2 messages.

python-hl7 splits a message into segments and fields and reads escape sequences; this
module adds what a listener needs around it: the character set from MSH-18, the
segment terminator tolerated as ``\\n`` too, the encoding characters checked, and field
access by position that never raises. Messages the service writes use the standard
encoding characters ``^~\\&`` and escape every value.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import hl7

#: MSH-18 values (HL7 table 0211) and the codecs that read them. An empty MSH-18 is
#: read as UTF-8, of which ASCII (the standard's default) is a subset.
CHARSETS = {
    "": "utf-8", "ASCII": "ascii", "UNICODE UTF-8": "utf-8", "UTF-8": "utf-8",
    "8859/1": "latin-1", "8859/2": "iso8859-2", "8859/5": "iso8859-5",
    "8859/7": "iso8859-7", "8859/9": "iso8859-9", "8859/15": "iso8859-15",
}
ENCODING = "^~\\&"
_MSH18_RE = re.compile(rb"^MSH(.)")


class MessageError(Exception):
    """A message that cannot be read. ``location`` is the ERR-2 location (segment,
    field, ...), ``code`` the HL7 table 0357 code."""

    def __init__(self, reason: str, *, code: str = "102", location: Sequence[object] = ()):
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.location = tuple(location)


@dataclass
class Message:
    """A parsed message: its segments, each a list of fields (index = field number;
    ``MSH`` as the standard counts, MSH-1 the field separator)."""

    parsed: hl7.Message
    charset: str  # MSH-18 as sent
    codec: str
    separators: tuple[str, str, str, str, str] = field(default=("|", "^", "~", "\\", "&"))
    #: Each segment's fields as sent, split once (python-hl7 re-joins a field on every
    #: str(); a message is read field by field many times).
    _fields: dict[str, list[list[str]]] = field(default_factory=dict, repr=False)

    #: Field numbers sent as the explicit null ``""`` ("delete this value"), by segment
    #: (first occurrence); they read as empty.
    _nulls: dict[str, set[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for seg in self.parsed:
            fields = str(seg).split(self.separators[0])
            if fields[0] == "MSH":
                fields.insert(1, self.separators[0])
            nulls = {n for n, text in enumerate(fields) if n and text == '""'}
            for n in nulls:
                fields[n] = ""
            if fields[0] not in self._fields:
                self._nulls[fields[0]] = nulls
            self._fields.setdefault(fields[0], []).append(fields)

    def sent(self, segment: str, number: int) -> bool:
        """Whether the field has a value (HL7: an empty field means "no change")."""
        return bool(self.raw(segment, number))

    def null(self, segment: str, number: int) -> bool:
        """Whether the field was sent as ``""`` (HL7: "delete the value")."""
        return number in self._nulls.get(segment, set())

    @property
    def control_id(self) -> str:
        return self.get("MSH", 10)

    @property
    def type(self) -> tuple[str, str, str]:
        """(MSH-9.1 message code, MSH-9.2 trigger event, MSH-9.3 structure)."""
        return (self.get("MSH", 9, 1, 1), self.get("MSH", 9, 1, 2), self.get("MSH", 9, 1, 3))

    def segments(self, name: str) -> list[list[str]]:
        """Every occurrence of segment ``name``: its fields as sent."""
        return self._fields.get(name, [])

    def raw(self, segment: str, number: int, occurrence: int = 1) -> str:
        """Field ``number`` of the segment as sent (escapes and delimiters kept)."""
        found = self._fields.get(segment, [])
        if len(found) < occurrence or number >= len(found[occurrence - 1]):
            return ""
        return found[occurrence - 1][number]

    def repetitions(self, segment: str, number: int, occurrence: int = 1) -> list[str]:
        """Field ``number``'s repetitions, as sent."""
        text = self.raw(segment, number, occurrence)
        if segment == "MSH" and number in (1, 2):
            return [text]
        return [r for r in text.split(self.separators[2])] if text else []

    def get(self, segment: str, number: int, repetition: int = 1,
            component: int = 1, subcomponent: int = 1, occurrence: int = 1) -> str:
        """One value, unescaped; "" when absent."""
        if segment == "MSH" and number in (1, 2):
            return self.raw(segment, number)
        reps = self.repetitions(segment, number, occurrence)
        if repetition > len(reps):
            return ""
        return self.part(reps[repetition - 1], component, subcomponent)

    def part(self, repetition: str, component: int = 1, subcomponent: int = 1) -> str:
        """Component (and subcomponent) of one repetition as sent, unescaped."""
        comps = repetition.split(self.separators[1])
        if component > len(comps):
            return ""
        subs = comps[component - 1].split(self.separators[4])
        if subcomponent > len(subs):
            return ""
        return self.unescape(subs[subcomponent - 1])

    def components(self, repetition: str) -> list[str]:
        """Every component of a repetition, unescaped (subcomponents kept joined by &)."""
        return [self.unescape(c) for c in repetition.split(self.separators[1])]

    def unescape(self, value: str) -> str:
        if self.separators[3] not in value:
            return value.strip()
        return str(self.parsed.unescape(value)).strip()


def decode(block: bytes) -> Message:
    """Parse one MLLP block: MSH first, the character set its MSH-18 names."""
    text = block.lstrip(b"\r\n")
    match = _MSH18_RE.match(text)
    if match is None:
        raise MessageError("the message does not start with an MSH segment", code="100",
                           location=("MSH",))
    sep = match.group(1)
    if sep.isalnum() or sep in b"\r\n ":
        raise MessageError("MSH-1 is not a field separator", location=("MSH", 1, 1))
    first = text.split(b"\r", 1)[0].split(b"\n", 1)[0]
    fields = first.split(sep)
    encoding = fields[1].decode("latin-1") if len(fields) > 1 else ""
    if (len(encoding) not in (4, 5) or len(set(encoding[:4])) != 4
            or any(c.isalnum() or c == sep.decode("latin-1") for c in encoding)):
        raise MessageError("MSH-2 must be four distinct encoding characters such as ^~\\&",
                           location=("MSH", 1, 2))
    charset = fields[17].decode("latin-1").split(encoding[1])[0].strip() \
        if len(fields) > 17 else ""
    codec = CHARSETS.get(charset.upper())
    if codec is None:
        raise MessageError(f"character set {charset!r} is not supported (UNICODE UTF-8, "
                           "8859/1, ASCII, ...)", code="103", location=("MSH", 1, 18))
    try:
        body = text.decode(codec)
    except UnicodeDecodeError:
        raise MessageError(f"the bytes are not {charset or 'UTF-8'} as MSH-18 declares",
                           code="102", location=("MSH", 1, 18)) from None
    body = body.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    try:
        parsed = hl7.parse(body)
    except Exception as exc:  # python-hl7 raises plain errors on what it cannot split
        raise MessageError(f"the message cannot be parsed: {exc}", code="100",
                           location=("MSH",)) from None
    seps = (sep.decode("latin-1"), encoding[0], encoding[1], encoding[2], encoding[3])
    message = Message(parsed, charset, codec, seps)
    for name, number in (("MSH", 9), ("MSH", 10), ("MSH", 12)):
        if not message.get(name, number):
            raise MessageError(f"{name}-{number} is required", code="101",
                               location=(name, 1, number))
    return message


def decode_header(block: bytes) -> Message | None:
    """The MSH alone, read as Latin-1 (every byte is a character), to acknowledge a
    message whose body could not be read; None when there is no usable MSH either."""
    first = block.lstrip(b"\r\n").replace(b"\n", b"\r").split(b"\r", 1)[0]
    try:
        header = decode(_without_charset(first))
    except MessageError:
        return None
    header.charset, header.codec = "", "utf-8"
    return header


def _without_charset(msh: bytes) -> bytes:
    fields = msh.split(msh[3:4]) if len(msh) > 3 else [msh]
    if len(fields) > 17:
        fields[17] = b"8859/1"
    return msh[3:4].join(fields)


# --- writing -------------------------------------------------------------------------------

Value = str | Sequence["Value"] | None


def escape(value: str) -> str:
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\E\\")
        elif ch == "|":
            out.append("\\F\\")
        elif ch == "^":
            out.append("\\S\\")
        elif ch == "&":
            out.append("\\T\\")
        elif ch == "~":
            out.append("\\R\\")
        elif ch in "\r\n":
            out.append("\\.br\\")
        else:
            out.append(ch)
    return "".join(out)


def component(*subcomponents: str | None) -> str:
    """One component from subcomponents (escaped), trailing empties dropped."""
    return _join([escape(s or "") for s in subcomponents], "&")


def repetition(*components: str | None) -> str:
    """One repetition from components that are already escaped (:func:`component`, or
    :func:`escape` for a plain value)."""
    return _join([c or "" for c in components], "^")


def value(*components: str | None) -> str:
    """A repetition of plain values: each escaped."""
    return repetition(*(escape(c) if c else "" for c in components))


def segment(name: str, *fields: str | Sequence[str] | None) -> str:
    """A segment; a field given as a list is a list of repetitions."""
    parts = [name]
    for f in fields:
        if f is None:
            parts.append("")
        elif isinstance(f, str):
            parts.append(f)
        else:
            parts.append("~".join(f))
    return _join(parts, "|")


def msh(*, application: str, facility: str, to_application: str, to_facility: str,
        message_type: str, control_id: str, charset: str, now: datetime) -> str:
    return "|".join(["MSH", ENCODING, escape(application), escape(facility),
                     to_application, to_facility, timestamp(now), "", message_type,
                     escape(control_id), "P", "2.5", "", "", "", "", "",
                     escape(charset) if charset else ""]).rstrip("|")


def timestamp(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S")


def _join(parts: list[str], sep: str) -> str:
    while len(parts) > 1 and not parts[-1]:
        parts.pop()
    return sep.join(parts)


def encode(segments: Sequence[str], codec: str) -> bytes:
    return "\r".join(segments).encode(codec, errors="replace") + b"\r"
