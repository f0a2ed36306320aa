"""Identity domains (assigning authorities) as the API shows and takes them."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from mpi.domain.patient import SourceCode, SystemUri, Text
from mpi.domain.types import UtcDatetime

_OID_RE = re.compile(r"^urn:oid:[0-2](\.(0|[1-9][0-9]*))+$")
_SOURCE_RE = re.compile(r"^(\*|[A-Za-z0-9][A-Za-z0-9._:-]*)$")
#: An HL7 v2 namespace id: printable, none of the v2 delimiters.
_NAMESPACE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._:/-]{0,63}$"
#: The built-in domains: each source's own record ids, and the enterprise identity.
SOURCE_SYSTEM = "urn:mpi:source:"
PERSON_SYSTEM = "urn:mpi:person"


class IdentityDomainInput(BaseModel):
    """A domain to register."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    system: SystemUri = Field(description="The identifier system: a URI; an OID as urn:oid:",
                              examples=["urn:oid:2.16.840.1.113883.4.1"])
    name: Text = Field(description="What people call it", examples=["US Social Security"])
    sources: list[SourceCode] = Field(
        min_length=1, max_length=100,
        description="The sources that may assign identifiers in it ('*': any)",
        examples=[["st-marys-ehr"]])
    namespace: Annotated[str, StringConstraints(pattern=_NAMESPACE_PATTERN)] | None = Field(
        default=None, description="Its HL7 v2 namespace id (HD-1 of an assigning authority), "
                                  "for messages that name the domain without its OID",
        examples=["STMARYS"])

    @field_validator("system")
    @classmethod
    def _system(cls, value: str) -> str:
        if ":" not in value or any(c.isspace() for c in value):
            raise ValueError("must be a URI such as urn:oid:2.16.840.1.113883.4.1 or https://…")
        if value.startswith("urn:oid:") and not _OID_RE.match(value):
            raise ValueError("is not a valid OID (urn:oid: then numbers separated by dots)")
        if value.startswith(SOURCE_SYSTEM) or value == PERSON_SYSTEM:
            raise ValueError("is one of the built-in domains")
        return value

    @field_validator("sources")
    @classmethod
    def _sources(cls, value: list[str]) -> list[str]:
        for source in value:
            if not _SOURCE_RE.match(source):
                raise ValueError(f"{source!r} is not a source name or *")
        return sorted(set(value))


class IdentityDomain(BaseModel):
    id: str
    system: str
    oid: str | None = Field(default=None, description="The OID, when the system is urn:oid:")
    name: str
    sources: list[str]
    namespace: str | None = Field(default=None, description="Its HL7 v2 namespace id")
    created_at: UtcDatetime

    def may_assign(self, source: str) -> bool:
        return "*" in self.sources or source in self.sources


class IdentityDomainList(BaseModel):
    items: list[IdentityDomain]


def domain_of(id: str, system: str, name: str, sources: list[str],
              created_at: datetime, namespace: str | None = None) -> IdentityDomain:
    oid = system[len("urn:oid:"):] if system.startswith("urn:oid:") else None
    return IdentityDomain(id=id, system=system, oid=oid, name=name, sources=sources,
                          namespace=namespace, created_at=created_at)
