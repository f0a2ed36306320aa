"""Which FHIR format a request wants (http.html 3.1.0.1.10): ``_format`` overrides
``Accept``; JSON when neither says; ``application/json`` and ``xml``/``application/xml``
count as FHIR JSON and XML."""

from __future__ import annotations

from typing import Literal

FHIR_JSON = "application/fhir+json"
FHIR_XML = "application/fhir+xml"
Format = Literal["json", "xml"]
_BY_NAME: dict[str, Format] = {
    "json": "json", FHIR_JSON: "json", "application/json": "json",
    "application/json+fhir": "json", "xml": "xml", FHIR_XML: "xml",
    "application/xml": "xml", "text/xml": "xml", "application/xml+fhir": "xml"}
CONTENT_TYPES: dict[Format, str] = {"json": FHIR_JSON, "xml": FHIR_XML}


def named(media_type: str | None) -> Format | None:
    """The format a ``_format`` value or a Content-Type names, else None."""
    if media_type is None:
        return None
    return _BY_NAME.get(media_type.split(";", 1)[0].strip().lower())


def wanted(format_param: str | None, accept: str | None,
           prefers: dict[str, float] | None = None) -> Format | None:
    """The answer's format; None when neither JSON nor XML is acceptable. ``prefers``:
    the Accept header's media types with their quality (as the web framework parsed it)."""
    if format_param is not None:
        return named(format_param)
    if not accept:
        return "json"
    ranked = sorted(((q, -i, t) for i, (t, q) in enumerate((prefers or {}).items()) if q > 0),
                    reverse=True)
    for _, _, media in ranked:
        if media in ("*/*", "application/*"):
            return "json"
        found = named(media)
        if found is not None:
            return found
    return None


def parse_accept(accept: str) -> dict[str, float]:
    """``Accept`` as media type -> quality, in the order given."""
    out: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if not media:
            continue
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        out.setdefault(media.lower(), quality)
    return out
