"""The patient record: its JSON shape, validation rules and the stored form.

The shape is snake_case and close to FHIR ``Patient`` so that mapping stays
simple. ``PatientInput`` is what a source system sends; ``Patient`` is what
the service returns (the input plus id, version, active and timestamps).
Validation runs in pydantic's strict mode straight from the JSON bytes, so a
number where a name belongs, an impossible date or an unknown gender is a
field-level error, never a guess.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mpi.domain.errors import FieldProblem, InvalidInput, MalformedInput, reject_duplicate_keys

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _printable(value: str) -> str:
    """No control characters (C0, DEL, C1): PostgreSQL refuses NUL, and none belongs in a
    record. (One regular-expression scan: a generator over the characters was a tenth of
    a record read's time.)"""
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


def _length(max_length: int, min_length: int = 1) -> StringConstraints:
    return StringConstraints(strip_whitespace=True, min_length=min_length, max_length=max_length)


_PRINTABLE = AfterValidator(_printable)
# Trimmed, printable strings of bounded length.
Text = Annotated[str, _length(200), _PRINTABLE]
ShortText = Annotated[str, _length(64), _PRINTABLE]
SourceCode = Annotated[str, _length(100), _PRINTABLE]
SourceId = Annotated[str, _length(200), _PRINTABLE]
SystemUri = Annotated[str, _length(256, 3), _PRINTABLE]
IdentifierValue = Annotated[str, _length(128), _PRINTABLE]
ContactValue = Annotated[str, _length(256), _PRINTABLE]

NameUse = Literal["usual", "official", "temp", "nickname", "anonymous", "old", "maiden"]
Gender = Literal["male", "female", "other", "unknown"]
IdentifierUse = Literal["usual", "official", "temp", "secondary", "old"]
AddressUse = Literal["home", "work", "temp", "old", "billing"]
AddressType = Literal["postal", "physical", "both"]
TelecomSystem = Literal["phone", "fax", "email", "pager", "url", "sms", "other"]
TelecomUse = Literal["home", "work", "temp", "old", "mobile"]

_SOURCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
_TYPE_RE = re.compile(r"^[A-Z][A-Z0-9]{0,9}$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE_RE = re.compile(r"^\+?[0-9 ().\-/]+(?:\s*(?:x|ext\.?)\s*[0-9]+)?$", re.IGNORECASE)
EARLIEST_BIRTH_DATE = date(1850, 1, 1)

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)


class HumanName(BaseModel):
    """One of a patient's names (FHIR HumanName)."""

    model_config = _STRICT

    use: NameUse | None = None
    family: Text | None = None
    given: list[Text] = Field(default_factory=list, max_length=10)
    prefix: list[ShortText] = Field(default_factory=list, max_length=5)
    suffix: list[ShortText] = Field(default_factory=list, max_length=5)

    @model_validator(mode="after")
    def _not_empty(self) -> HumanName:
        if self.family is None and not self.given:
            raise ValueError("a name needs a family name or at least one given name")
        return self


class Identifier(BaseModel):
    """A business identifier: medical record number, SSN, driver's licence, ..."""

    model_config = _STRICT

    system: SystemUri
    value: IdentifierValue
    type: str | None = Field(
        default=None,
        description="HL7 v2 table 0203 code such as MR, SS, DL, PPN",
        examples=["MR", "SS"],
    )
    use: IdentifierUse | None = None

    @field_validator("system")
    @classmethod
    def _system_is_uri(cls, value: str) -> str:
        if ":" not in value or any(c.isspace() for c in value):
            raise ValueError("must be a URI such as urn:oid:2.16.840.1.113883.4.1 or https://…")
        return value

    @field_validator("type")
    @classmethod
    def _type_code(cls, value: str | None) -> str | None:
        if value is not None and not _TYPE_RE.match(value):
            raise ValueError("must be an upper-case code such as MR, SS or DL")
        return value


class Address(BaseModel):
    """A postal or physical address."""

    model_config = _STRICT

    use: AddressUse | None = None
    type: AddressType | None = None
    line: list[Text] = Field(default_factory=list, max_length=5)
    city: Text | None = None
    district: Text | None = None
    state: Text | None = None
    postal_code: ShortText | None = None
    country: ShortText | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> Address:
        if not (self.line or self.city or self.district or self.state or self.postal_code
                or self.country):
            raise ValueError(
                "an address needs at least a line, city, state, postal code or country")
        return self


class ContactPoint(BaseModel):
    """A phone number, e-mail address or other way to reach the patient."""

    model_config = _STRICT

    system: TelecomSystem
    value: ContactValue
    use: TelecomUse | None = None
    rank: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None

    @model_validator(mode="after")
    def _value_fits_system(self) -> ContactPoint:
        if self.system == "email" and not _EMAIL_RE.match(self.value):
            raise ValueError("value is not an e-mail address")
        if self.system in ("phone", "fax", "sms", "pager"):
            digits = sum(c.isdigit() for c in self.value)
            if not _PHONE_RE.match(self.value) or digits < 3:
                raise ValueError("value is not a phone number")
        return self


MaritalStatus = Literal["A", "D", "I", "L", "M", "C", "P", "T", "U", "S", "W", "UNK"]
ContactRelationship = Literal["C", "E", "EP", "F", "I", "N", "O", "S", "U"]
_LANGUAGE_RE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{1,8})*$")


class Communication(BaseModel):
    """A language the patient speaks (BCP 47), and whether it is the one to use."""

    model_config = _STRICT

    language: ShortText = Field(examples=["en", "es-MX"])
    preferred: bool | None = None

    @field_validator("language")
    @classmethod
    def _bcp47(cls, value: str) -> str:
        if not _LANGUAGE_RE.match(value):
            raise ValueError("must be a BCP 47 language tag such as en or es-MX")
        return value


class Contact(BaseModel):
    """Someone to contact about the patient: next of kin, emergency contact, guardian."""

    model_config = _STRICT

    relationship: list[ContactRelationship] = Field(
        default_factory=list, max_length=5,
        description="HL7 v2 table 0131: C emergency contact, N next of kin, E employer, ...")
    name: HumanName | None = None
    telecom: list[ContactPoint] = Field(default_factory=list, max_length=10)
    address: Address | None = None
    gender: Gender | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> Contact:
        if self.name is None and not self.telecom and self.address is None:
            raise ValueError("a contact needs a name, a telecom or an address")
        return self


#: What the server sets on a record and a client may only echo back.
READ_ONLY = frozenset({"id", "version", "created_at", "updated_at", "person_id", "replaced_by",
                       "replaces"})


class PatientInput(BaseModel):
    """A patient record as a source system sends it."""

    model_config = _STRICT

    source: SourceCode = Field(
        description="The sending system, e.g. st-marys-ehr", examples=["st-marys-ehr"])
    source_id: SourceId = Field(
        description="The record's id in the sending system", examples=["A-1001"])
    active: bool = True
    names: list[HumanName] = Field(default_factory=list, max_length=20, description=(
        "May be empty (an unidentified patient) if an identifier or birth date is given"))
    gender: Gender | None = None
    birth_date: date | None = None
    birth_date_partial: Annotated[str, StringConstraints(
        pattern=r"^[0-9]{4}(-(0[1-9]|1[0-2]))?$")] | None = Field(
        default=None, description="A birth date known only to the year or the month (YYYY or "
                                  "YYYY-MM), matched as partial evidence; give birth_date "
                                  "when the day is known", examples=["1980", "1980-05"])
    deceased: bool = False
    deceased_date: date | None = None
    identifiers: list[Identifier] = Field(default_factory=list, max_length=50)
    addresses: list[Address] = Field(default_factory=list, max_length=20)
    telecom: list[ContactPoint] = Field(default_factory=list, max_length=20)
    mothers_maiden_name: Text | None = Field(
        default=None, description="The mother's maiden (unmarried) name; also matched on")
    multiple_birth: bool | None = Field(
        default=None, description="Part of a multiple birth (twins, triplets, ...)")
    multiple_birth_order: Annotated[int, Field(ge=1, le=16)] | None = Field(
        default=None, description="Birth order within a multiple birth (1, 2, ...)")
    marital_status: MaritalStatus | None = Field(
        default=None, description="HL7 v3 MaritalStatus code (M married, S never married, ...)")
    communication: list[Communication] = Field(default_factory=list, max_length=10)
    contacts: list[Contact] = Field(default_factory=list, max_length=10)
    managing_organization: Text | None = Field(
        default=None, description="The organization that is the custodian of the record")

    # Read-only fields a client may echo back from a GET; ignored (``id`` must match on PUT).
    id: str | None = Field(default=None, description="read-only; ignored on input",
                           json_schema_extra={"readOnly": True})
    version: int | None = Field(default=None, description="read-only; use If-Match instead",
                                json_schema_extra={"readOnly": True})
    created_at: str | None = Field(default=None, json_schema_extra={"readOnly": True})
    updated_at: str | None = Field(default=None, json_schema_extra={"readOnly": True})
    person_id: str | None = Field(default=None, description="read-only; set by matching",
                                  json_schema_extra={"readOnly": True})
    replaced_by: str | None = Field(default=None, description="read-only",
                                    json_schema_extra={"readOnly": True})
    replaces: list[str] | None = Field(default=None, description="read-only",
                                       json_schema_extra={"readOnly": True})

    @field_validator("source")
    @classmethod
    def _source_code(cls, value: str) -> str:
        if not _SOURCE_RE.match(value):
            raise ValueError("must be letters, digits, '.', '_', ':' or '-', e.g. st-marys-ehr")
        return value

    @field_validator("birth_date", "deceased_date")
    @classmethod
    def _plausible_date(cls, value: date | None, info: ValidationInfo) -> date | None:
        if value is None:
            return value
        today = (info.context or {}).get("today") or date.today()
        if value > today:
            raise ValueError("must not be in the future")
        if value < EARLIEST_BIRTH_DATE:
            raise ValueError(f"must not be before {EARLIEST_BIRTH_DATE.isoformat()}")
        return value

    @field_validator("deceased_date")
    @classmethod
    def _after_birth(cls, value: date | None, info: ValidationInfo) -> date | None:
        if value is None:
            return value
        if info.data.get("deceased") is False:
            # A death date implies death; saying otherwise is a contradiction.
            raise ValueError("is set but deceased is false")
        born = info.data.get("birth_date")
        if born is not None and value < born:
            raise ValueError("is before birth_date")
        return value

    @field_validator("birth_date_partial")
    @classmethod
    def _plausible_partial(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if info.data.get("birth_date") is not None:
            raise ValueError("give birth_date or birth_date_partial, not both")
        today = (info.context or {}).get("today") or date.today()
        if value > today.isoformat()[:len(value)]:
            raise ValueError("must not be in the future")
        if int(value[:4]) < EARLIEST_BIRTH_DATE.year:
            raise ValueError(f"must not be before {EARLIEST_BIRTH_DATE.year}")
        return value

    @model_validator(mode="after")
    def _birth_order(self) -> PatientInput:
        if self.multiple_birth_order is not None and self.multiple_birth is False:
            raise ValueError("multiple_birth_order is given but multiple_birth is false")
        return self

    @model_validator(mode="after")
    def _identifiable(self) -> PatientInput:
        # FHIR allows a nameless Patient (an unidentified arrival, a lab sample); a record
        # with nothing to tell who it is could never be matched, so refuse that.
        if not (self.names or self.identifiers or self.birth_date or self.birth_date_partial):
            raise ValueError("a record needs at least one name, identifier or birth date")
        return self

    @field_validator("identifiers")
    @classmethod
    def _distinct_identifiers(cls, value: list[Identifier]) -> list[Identifier]:
        seen: set[tuple[str, str]] = set()
        for ident in value:
            key = (ident.system, ident.value)
            if key in seen:
                raise ValueError(f"identifier {ident.system} appears twice with the same value")
            seen.add(key)
        return value

    def content(self) -> dict[str, Any]:
        """The record's content without the read-only echo fields."""
        return self.model_dump(mode="json", exclude=set(READ_ONLY))


class Patient(BaseModel):
    """A stored patient record as the service returns it."""

    model_config = ConfigDict(frozen=True)

    id: str
    version: int
    source: str
    source_id: str
    active: bool
    names: list[HumanName]
    gender: Gender | None = None
    birth_date: date | None = None
    birth_date_partial: str | None = None
    deceased: bool = False
    deceased_date: date | None = None
    identifiers: list[Identifier] = Field(default_factory=list)
    addresses: list[Address] = Field(default_factory=list)
    telecom: list[ContactPoint] = Field(default_factory=list)
    mothers_maiden_name: str | None = None
    multiple_birth: bool | None = None
    multiple_birth_order: int | None = None
    marital_status: MaritalStatus | None = None
    communication: list[Communication] = Field(default_factory=list)
    contacts: list[Contact] = Field(default_factory=list)
    managing_organization: str | None = None
    created_at: datetime
    updated_at: datetime
    person_id: str | None = Field(
        default=None, description="The enterprise identity (person) this record belongs to")
    replaced_by: str | None = Field(
        default=None, description="The record its source merged this one into (it is then "
                                  "inactive)")
    replaces: list[str] | None = Field(
        default=None, description="The records its source merged into this one")

    @field_validator("created_at", "updated_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        """Timestamps are stored as naive UTC; say so on the way out."""
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def content(self) -> dict[str, Any]:
        """The record's content as a source sends it (JSON shape, no read-only fields): to
        send it back changed (a source's merge, an HL7 update)."""
        return {k: v for k, v in self.to_dict().items()
                if k in PatientInput.model_fields and k not in READ_ONLY}


def _field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "body"


def problems_from(exc: ValidationError) -> list[FieldProblem]:
    """Turn pydantic's errors into field problems with readable reasons."""
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        reason = err["msg"]
        if reason.startswith("Value error, "):
            reason = reason[len("Value error, "):]
        if err["type"] == "extra_forbidden":
            reason = "unknown field"
        problems.append(FieldProblem(_field_path(loc), reason))
    return problems


def parse_patient(body: bytes, *, today: date) -> PatientInput:
    """Validate a JSON body into a :class:`PatientInput`.

    Raises :class:`MalformedInput` when the body is not JSON at all or has a key twice
    in one object, and :class:`InvalidInput` naming every bad field otherwise.
    """
    reject_duplicate_keys(body)
    try:
        return PatientInput.model_validate_json(body, context={"today": today})
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if any(e["type"] == "json_invalid" for e in errors):
            detail = errors[0]["msg"].removeprefix("Invalid JSON: ")
            raise MalformedInput(f"the body is not valid JSON: {detail}") from None
        if len(errors) == 1 and errors[0]["type"] == "model_type":
            raise InvalidInput([FieldProblem("body", "must be a JSON object")]) from None
        raise InvalidInput(problems_from(exc)) from None


# A page of ``GET /api/v1/patients``.
class PatientPage(BaseModel):
    items: list[Patient]
    next_cursor: str | None = None
