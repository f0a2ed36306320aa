"""FHIR XML (xml.html) to and from the JSON form the routes build.

The two forms are mechanical translations of each other: a JSON property is an XML
element of the same name, in the same order (the routes build every resource in its
StructureDefinition's element order); a primitive is ``<name value="..."/>``; an array
repeats its element; a resource inside another (``Bundle.entry.resource``,
``Parameters.parameter.resource``) is wrapped in an element named by its type; an
extension's ``url`` is an attribute. Written here rather than through a model library
because the service emits and reads a handful of known shapes: the dependency would be
tens of megabytes of generated models and lxml in the runtime image for a walk over a
dict. Tests check every shape against ``fhir.resources``' XML parser.

Input is parsed by the standard library's expat parser with document type declarations
and entity declarations refused by its handlers (what defusedxml installs, set here
directly): no entity is ever declared, so none is expanded, and nothing external is
fetched.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any
from xml.parsers import expat

from mpi.domain.errors import MalformedInput

NS = "http://hl7.org/fhir"
_XHTML = "http://www.w3.org/1999/xhtml"
# Elements that repeat (cardinality 0..*), by the element they are in, for the resources
# this server reads (JSON gives them as arrays whatever their number).
_REPEATING: dict[str, frozenset[str]] = {
    "Patient": frozenset({"identifier", "name", "telecom", "address", "contact",
                          "communication", "photo", "generalPractitioner", "link",
                          "contained"}),
    "name": frozenset({"given", "prefix", "suffix"}),
    "address": frozenset({"line"}),
    "contact": frozenset({"relationship", "telecom"}),
    "type": frozenset({"coding"}), "maritalStatus": frozenset({"coding"}),
    "language": frozenset({"coding"}), "relationship": frozenset({"coding"}),
    "meta": frozenset({"profile", "security", "tag"}),
    "Parameters": frozenset({"parameter"}), "parameter": frozenset({"part"}),
    "part": frozenset({"part"}),
    "Bundle": frozenset({"link", "entry"}),
    "OperationOutcome": frozenset({"issue"}), "issue": frozenset({"expression", "location"}),
}
_ANYWHERE = frozenset({"extension", "modifierExtension"})
_BOOLEAN = frozenset({"active", "deceasedBoolean", "multipleBirthBoolean", "valueBoolean"})
_INTEGER = frozenset({"rank", "valueInteger", "multipleBirthInteger",
                      "valuePositiveInt", "valueUnsignedInt", "total"})
_DECIMAL = frozenset({"valueDecimal", "score"})
MAX_DEPTH = 32


def to_xml(resource: dict[str, Any]) -> bytes:
    root = ET.Element(resource["resourceType"], {"xmlns": NS})
    _children(root, resource)
    return b'<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(root, encoding="utf-8",
                                                                    xml_declaration=False)


def _children(parent: ET.Element, value: dict[str, Any]) -> None:
    extension = parent.tag in ("extension", "modifierExtension")
    for key, item in value.items():
        if key == "resourceType" or (extension and key == "url"):
            continue
        for one in item if isinstance(item, list) else [item]:
            _element(parent, key, one)


def _element(parent: ET.Element, name: str, value: Any) -> None:
    if isinstance(value, dict):
        node = ET.SubElement(parent, name)
        if "resourceType" in value:  # a resource inside a resource
            inner = ET.SubElement(node, value["resourceType"])
            _children(inner, value)
            return
        if name in ("extension", "modifierExtension") and "url" in value:
            node.set("url", str(value["url"]))
        _children(node, value)
        return
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    ET.SubElement(parent, name, {"value": text})


def from_xml(body: bytes) -> dict[str, Any]:
    """A FHIR XML resource as its JSON form; :class:`MalformedInput` when it is not one."""
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate(namespace_separator="}")
    parser.StartDoctypeDeclHandler = _refuse_dtd  # type: ignore[assignment]
    parser.EntityDeclHandler = _refuse_dtd  # type: ignore[assignment]
    parser.ExternalEntityRefHandler = _refuse_dtd  # type: ignore[assignment]
    parser.StartElementHandler = lambda tag, attrs: builder.start(_clark(tag), attrs)
    parser.EndElementHandler = lambda tag: builder.end(_clark(tag))
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(body, True)
        root = builder.close()
    except _DoctypeRefused:
        raise MalformedInput("the XML body must not have a document type declaration") \
            from None
    except (expat.ExpatError, AssertionError) as exc:
        raise MalformedInput(f"the body is not well-formed XML: {exc}") from None
    namespace, local = _split(root.tag)
    if namespace != NS:
        raise MalformedInput(f"the root element must be in the FHIR namespace {NS}")
    return {"resourceType": local, **_object(root, local, 0)}


class _DoctypeRefused(Exception):
    pass


def _refuse_dtd(*_: Any) -> None:
    raise _DoctypeRefused


def _clark(name: str) -> str:
    """expat's ``namespace}local`` as ElementTree's ``{namespace}local``."""
    return "{" + name if "}" in name else name


def _split(tag: str) -> tuple[str | None, str]:
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        return namespace, local
    return None, tag


def _object(element: ET.Element, kind: str, depth: int) -> dict[str, Any]:
    """The JSON object of ``element``; ``kind`` is its local name (or resource type)."""
    if depth > MAX_DEPTH:
        raise MalformedInput("the XML body is nested too deeply")
    out: dict[str, Any] = {}
    if element.get("url") is not None:
        out["url"] = element.get("url")
    for child in element:
        namespace, name = _split(child.tag)
        if namespace == _XHTML:
            continue  # narrative: dropped like JSON's text.div
        if namespace != NS:
            raise MalformedInput(f"element {name!r} is not in the FHIR namespace")
        value = _value(child, name, depth + 1)
        if name in _ANYWHERE or name in _REPEATING.get(kind, ()):
            out.setdefault(name, []).append(value)
        elif name in out:
            raise MalformedInput(f"element {name!r} appears more than once")
        else:
            out[name] = value
    return out


def _value(child: ET.Element, name: str, depth: int) -> Any:
    inner = list(child)
    if name in ("resource", "contained") and len(inner) == 1 and _split(inner[0].tag)[1][:1] \
            .isupper():
        kind = _split(inner[0].tag)[1]
        return {"resourceType": kind, **_object(inner[0], kind, depth)}
    raw = child.get("value")
    if raw is None:
        return _object(child, name, depth)
    if name in _BOOLEAN:
        if raw not in ("true", "false"):
            raise MalformedInput(f"{name} must be true or false")
        return raw == "true"
    if name in _INTEGER:
        try:
            return int(raw)
        except ValueError:
            raise MalformedInput(f"{name} must be an integer") from None
    if name in _DECIMAL:
        try:
            return float(raw)
        except ValueError:
            raise MalformedInput(f"{name} must be a decimal") from None
    return raw
