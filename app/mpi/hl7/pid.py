"""PID and the record model, both ways.

| PID | record |
|---|---|
| PID-3 (CX, repeating) | ``identifiers`` (system from the assigning authority CX-4, type  |
|                       | CX-5); the one in a domain the sender assigns is ``source_id``  |
| PID-5 (XPN, repeating) | ``names`` (family XPN-1, given XPN-2 and the words of XPN-3,   |
|                        | suffix XPN-4, prefix XPN-5, use from XPN-7)                    |
| PID-6 (XPN) | ``mothers_maiden_name`` (its family name) |
| PID-7 (TS) | ``birth_date``, or ``birth_date_partial`` for YYYY or YYYYMM |
| PID-8 (table 0001) | ``gender`` (M male, F female, O and A other, U and N unknown) |
| PID-11 (XAD, repeating) | ``addresses`` (lines XAD-1, XAD-2; city, state, postal code, |
|                         | country; use from XAD-7)                                     |
| PID-13 / PID-14 (XTN) | ``telecom`` (home / work; XTN-1 or XTN-5..7, e-mail XTN-4) |
| PID-16 (table 0002) | ``marital_status`` |
| PID-19 | an identifier in the US SSN system (``urn:oid:2.16.840.1.113883.4.1``, type SS) |
| PID-24 / PID-25 | ``multiple_birth`` (Y/N) / ``multiple_birth_order`` |
| PID-29 / PID-30 | ``deceased_date`` / ``deceased`` (Y/N) |
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from mpi.domain.patient import Patient
from mpi.hl7 import codec
from mpi.hl7.codec import Message, MessageError

SSN_SYSTEM = "urn:oid:2.16.840.1.113883.4.1"
_GENDER_IN = {"M": "male", "F": "female", "O": "other", "A": "other", "U": "unknown",
              "N": "unknown"}
_GENDER_OUT = {"male": "M", "female": "F", "other": "O", "unknown": "U"}
_NAME_USE_IN = {"L": "official", "D": "usual", "M": "maiden", "N": "nickname",
                "S": "anonymous", "T": "temp", "U": None, "A": "usual", "B": "old"}
_NAME_USE_OUT = {"official": "L", "usual": "D", "maiden": "M", "nickname": "N",
                 "anonymous": "S", "temp": "T", "old": "B"}
_ADDRESS_USE_IN = {"H": ("home", None), "B": ("work", None), "O": ("work", None),
                   "C": ("temp", None), "BA": ("old", None), "M": (None, "postal"),
                   "P": ("home", None), "L": ("home", None), "BI": ("billing", None)}
_ADDRESS_USE_OUT = {"home": "H", "work": "B", "temp": "C", "old": "BA", "billing": "BI"}
_MARITAL_IN = {"A": "L", "D": "D", "M": "M", "S": "S", "W": "W", "C": "C", "P": "T",
               "R": "T", "E": "L", "N": "A", "I": "I", "U": "UNK", "B": "U", "G": "T"}
_MARITAL_OUT = {"L": "E", "D": "D", "M": "M", "S": "S", "W": "W", "C": "C", "T": "P",
                "A": "N", "I": "I", "UNK": "U", "U": "B", "P": "P"}
_TYPE_RE = re.compile(r"^[A-Z][A-Z0-9]{0,9}$")
_TS_RE = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2,}.*)?$")

#: Where each record field comes from, for ERR-2 when the record refuses a value.
FIELD_LOCATIONS = {
    "source_id": 3, "identifiers": 3, "names": 5, "mothers_maiden_name": 6,
    "birth_date": 7, "birth_date_partial": 7, "gender": 8, "addresses": 11, "telecom": 13,
    "marital_status": 16, "multiple_birth": 24, "multiple_birth_order": 25,
    "deceased_date": 29, "deceased": 30, "body": 3,
}


@dataclass(frozen=True)
class Authority:
    """An assigning authority (CX-4, HD): namespace id, universal id and its type."""

    namespace: str
    universal: str
    kind: str

    def empty(self) -> bool:
        return not (self.namespace or self.universal)


#: Resolves an assigning authority to an identifier system, or None when unknown.
Resolve = Callable[[Authority], str | None]


@dataclass
class Demographics:
    """A PID read into the record model's JSON shape (without source and source_id)."""

    fields: dict[str, Any] = field(default_factory=dict)
    #: (repetition number, system, value) of every PID-3 identifier.
    keys: list[tuple[int, str, str]] = field(default_factory=list)
    #: PID field numbers with a value, and those sent as ``""`` (delete).
    sent: set[int] = field(default_factory=set)
    cleared: set[int] = field(default_factory=set)


#: The record fields each PID field carries (for an update that sends only some); phones
#: come from PID-13 and PID-14 together.
PID_FIELDS: dict[int, tuple[str, ...]] = {
    5: ("names",), 6: ("mothers_maiden_name",), 7: ("birth_date", "birth_date_partial"),
    8: ("gender",), 11: ("addresses",), 16: ("marital_status",), 24: ("multiple_birth",),
    25: ("multiple_birth_order",), 29: ("deceased_date",), 30: ("deceased",),
}


def updated(old: dict[str, Any], new: dict[str, Any], pid: Demographics) -> dict[str, Any]:
    """The content an update gives a record, by HL7's rules: a field sent replaces what
    the record had, a field sent as ``""`` deletes it, a field left empty changes
    nothing. ``old`` and ``new`` are record contents (JSON shape). PID-3 is always sent
    and replaces the identifiers, but an SSN the record had stays unless PID-19 is sent or
    deleted; the phones are replaced when PID-13 or PID-14 is sent; what PID does not
    carry (languages, contacts, organization) stays."""
    out = {**old, "source": new["source"], "source_id": new["source_id"],
           "active": new.get("active", True)}
    changes = {**PID_FIELDS, 13: ("telecom",)}  # 13 stands for PID-13 and PID-14 here
    phones_sent = bool({13, 14} & pid.sent)
    phones_cleared = not phones_sent and bool({13, 14} & pid.cleared)
    sent = pid.sent - {14} | ({13} if phones_sent else set())
    cleared = pid.cleared - {13, 14} | ({13} if phones_cleared else set())
    for number, keys in changes.items():
        for key in keys:
            if number in sent:
                if key in new:
                    out[key] = new[key]
                else:
                    out.pop(key, None)
            elif number in cleared:
                out.pop(key, None)
    identifiers = list(new.get("identifiers", []))
    if 19 not in pid.sent and 19 not in pid.cleared:
        have = {(i["system"], i["value"]) for i in identifiers}
        identifiers += [i for i in old.get("identifiers", [])
                        if i["system"] == SSN_SYSTEM and (i["system"], i["value"]) not in have]
    out["identifiers"] = identifiers
    return out


def authority(message: Message, rep: str, component: int = 4) -> Authority:
    comps = rep.split(message.separators[1])
    hd = comps[component - 1] if len(comps) >= component else ""
    subs = [message.unescape(s) for s in hd.split(message.separators[4])] + ["", "", ""]
    return Authority(subs[0], subs[1], subs[2].upper())


def system_of(found: Authority) -> str | None:
    """The system an authority names by itself: an ISO OID or a URI; None when only a
    namespace id is given (the registry knows those)."""
    if found.universal and found.kind == "ISO":
        return f"urn:oid:{found.universal}"
    if found.universal and found.kind in ("URI", "URL") and ":" in found.universal:
        return found.universal
    return None


def read_pid(message: Message, resolve: Resolve, segment: str = "PID") -> Demographics:
    """The PID's demographics; MessageError naming the field when one cannot be read."""
    out = Demographics()
    out.sent = {n for n in range(4, 31) if message.sent(segment, n)}
    out.cleared = {n for n in range(4, 31) if message.null(segment, n)}
    f = out.fields
    identifiers: list[dict[str, Any]] = []
    for n, rep in enumerate(message.repetitions(segment, 3), start=1):
        value = message.part(rep, 1)
        if not value:
            continue
        found = authority(message, rep)
        if found.empty():
            raise MessageError("an identifier without its assigning authority (CX-4)",
                               code="101", location=(segment, 1, 3, n, 4))
        system = resolve(found)
        if system is None:
            raise MessageError(f"unknown assigning authority "
                               f"{found.namespace or found.universal!r}", code="204",
                               location=(segment, 1, 3, n, 4))
        ident: dict[str, Any] = {"system": system, "value": value}
        kind = message.part(rep, 5)
        if _TYPE_RE.match(kind):
            ident["type"] = kind
        identifiers.append(ident)
        out.keys.append((n, system, value))
    if not out.keys:
        raise MessageError("PID-3 needs the patient's identifier", code="101",
                           location=(segment, 1, 3))
    ssn = message.get(segment, 19)
    if ssn and not any(i["system"] == SSN_SYSTEM for i in identifiers):
        identifiers.append({"system": SSN_SYSTEM, "value": ssn, "type": "SS"})
    f["identifiers"] = _distinct(identifiers)
    names = [_name(message, rep) for rep in message.repetitions(segment, 5)]
    f["names"] = [n for n in names if n]
    mother = message.get(segment, 6)
    if mother:
        f["mothers_maiden_name"] = mother
    _birth(message, segment, f)
    sex = message.get(segment, 8).upper()
    if sex:
        if sex not in _GENDER_IN:
            raise MessageError(f"sex {sex!r} is not in HL7 table 0001 (M, F, O, U, A, N)",
                               code="103", location=(segment, 1, 8))
        f["gender"] = _GENDER_IN[sex]
    addresses = [_address(message, rep) for rep in message.repetitions(segment, 11)]
    f["addresses"] = [a for a in addresses if a]
    telecom = [_telecom(message, rep, "home") for rep in message.repetitions(segment, 13)]
    telecom += [_telecom(message, rep, "work") for rep in message.repetitions(segment, 14)]
    f["telecom"] = [t for t in telecom if t]
    marital = message.get(segment, 16).upper()
    if marital in _MARITAL_IN:
        f["marital_status"] = _MARITAL_IN[marital]
    multiple = _yes_no(message, segment, 24)
    if multiple is not None:
        f["multiple_birth"] = multiple
    order = message.get(segment, 25)
    if order:
        if not order.isdigit():
            raise MessageError("PID-25 birth order must be a number", code="102",
                               location=(segment, 1, 25))
        f["multiple_birth_order"] = int(order)
        f.setdefault("multiple_birth", True)
    died = message.get(segment, 29)
    if died:
        f["deceased_date"] = _date(died, (segment, 1, 29)).isoformat()
        f["deceased"] = True
    dead = _yes_no(message, segment, 30)
    if dead is not None:
        f["deceased"] = dead or "deceased_date" in f
    return out


def _distinct(identifiers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for ident in identifiers:
        key = (ident["system"], ident["value"])
        if key not in seen:
            seen.add(key)
            out.append(ident)
    return out


def _name(message: Message, rep: str) -> dict[str, Any] | None:
    family = message.part(rep, 1, 1)
    given = [g for g in [message.part(rep, 2), *message.part(rep, 3).split()] if g]
    if not family and not given:
        return None
    name: dict[str, Any] = {"given": given}
    if family:
        name["family"] = family
    if message.part(rep, 4):
        name["suffix"] = [message.part(rep, 4)]
    if message.part(rep, 5):
        name["prefix"] = [message.part(rep, 5)]
    use = _NAME_USE_IN.get(message.part(rep, 7).upper())
    if use:
        name["use"] = use
    return name


def _birth(message: Message, segment: str, f: dict[str, Any]) -> None:
    raw = message.get(segment, 7)
    if not raw:
        return
    match = _TS_RE.match(raw)
    if match is None:
        raise MessageError("PID-7 must be a date YYYY[MM[DD]]", code="102",
                           location=(segment, 1, 7))
    year, month, day = match.group(1), match.group(2), match.group(3)
    if day:
        f["birth_date"] = _date(raw, (segment, 1, 7)).isoformat()
    elif month:
        f["birth_date_partial"] = f"{year}-{month}"
    else:
        f["birth_date_partial"] = year


def _date(raw: str, location: tuple[object, ...]) -> date:
    match = _TS_RE.match(raw)
    try:
        if match is None or not match.group(3):
            raise ValueError
        return date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        raise MessageError(f"{location[0]}-{location[2]} is not a date (YYYYMMDD)",
                           code="102", location=location) from None


def _yes_no(message: Message, segment: str, number: int) -> bool | None:
    raw = message.get(segment, number).upper()
    if not raw:
        return None
    if raw not in ("Y", "N"):
        raise MessageError(f"{segment}-{number} must be Y or N", code="103",
                           location=(segment, 1, number))
    return raw == "Y"


def _address(message: Message, rep: str) -> dict[str, Any] | None:
    lines = [x for x in (message.part(rep, 1, 1), message.part(rep, 2)) if x]
    address: dict[str, Any] = {"line": lines}
    for key, number in (("city", 3), ("state", 4), ("postal_code", 5), ("country", 6)):
        if message.part(rep, number):
            address[key] = message.part(rep, number)
    if len(address) == 1 and not lines:
        return None
    use, kind = _ADDRESS_USE_IN.get(message.part(rep, 7).upper(), (None, None))
    if use:
        address["use"] = use
    if kind:
        address["type"] = kind
    return address


def _telecom(message: Message, rep: str, use: str) -> dict[str, Any] | None:
    equipment = message.part(rep, 3).upper()
    email = message.part(rep, 4)
    if email or equipment == "INTERNET" or message.part(rep, 2).upper() == "NET":
        return {"system": "email", "value": email or message.part(rep, 1)} \
            if (email or message.part(rep, 1)) else None
    number = message.part(rep, 1)
    if not number:
        parts = [message.part(rep, 5), message.part(rep, 6), message.part(rep, 7)]
        number = " ".join(p for p in parts if p)
        if message.part(rep, 5):
            number = "+" + number
        if message.part(rep, 8):
            number += f" x{message.part(rep, 8)}"
    if not number:
        return None
    system = {"FX": "fax", "BP": "pager"}.get(equipment, "phone")
    return {"system": system, "value": number,
            "use": "mobile" if equipment == "CP" else use}


# --- the record as a PID -------------------------------------------------------------------


def cx(value: str, system: str, namespaces: dict[str, str], kind: str | None = None) -> str:
    """One PID-3 repetition: the value and the assigning authority of ``system``."""
    if system.startswith("urn:oid:"):
        hd = codec.component(namespaces.get(system, ""), system[len("urn:oid:"):], "ISO")
    else:
        hd = codec.component(namespaces.get(system, ""), system, "URI")
    return codec.repetition(codec.escape(value), "", "", hd, codec.escape(kind or ""))


def write_pid(patient: Patient, identifiers: Iterable[tuple[str, str, str | None]],
              namespaces: dict[str, str], set_id: int = 1) -> str:
    """A PID for ``patient``, with ``identifiers`` ((system, value, type)) in PID-3."""
    pid3 = [cx(v, s, namespaces, t) for s, v, t in identifiers]
    names = [codec.value(n.family, n.given[0] if n.given else None,
                         " ".join(n.given[1:]) or None,
                         n.suffix[0] if n.suffix else None,
                         n.prefix[0] if n.prefix else None, None,
                         _NAME_USE_OUT.get(n.use or "", "L"))
             for n in patient.names] or ["^^^^^^S"]
    birth = (patient.birth_date.strftime("%Y%m%d") if patient.birth_date
             else (patient.birth_date_partial or "").replace("-", ""))
    addresses = [codec.value(" ".join(a.line[:1]) or None, " ".join(a.line[1:]) or None,
                             a.city, a.state, a.postal_code, a.country,
                             _ADDRESS_USE_OUT.get(a.use or "")
                             or ("M" if a.type == "postal" else None))
                 for a in patient.addresses]
    home: list[str] = []
    work: list[str] = []
    for t in patient.telecom:
        if t.system == "email":
            rep = codec.value(None, "NET", "Internet", t.value)
        else:
            equipment = {"fax": "FX", "pager": "BP"}.get(
                t.system, "CP" if t.use == "mobile" else "PH")
            rep = codec.value(t.value, "WPN" if t.use == "work" else "PRN", equipment)
        (work if t.use == "work" else home).append(rep)
    fields: list[str | list[str] | None] = [None] * 30
    fields[0] = str(set_id)
    fields[2] = pid3
    fields[4] = names
    fields[5] = codec.value(patient.mothers_maiden_name) if patient.mothers_maiden_name \
        else None
    fields[6] = birth or None
    fields[7] = _GENDER_OUT.get(patient.gender or "")
    fields[10] = addresses
    fields[12] = home
    fields[13] = work
    fields[15] = _MARITAL_OUT.get(patient.marital_status or "")
    if patient.multiple_birth is not None:
        fields[23] = "Y" if patient.multiple_birth else "N"
    if patient.multiple_birth_order is not None:
        fields[24] = str(patient.multiple_birth_order)
    if patient.deceased_date:
        fields[28] = patient.deceased_date.strftime("%Y%m%d")
    fields[29] = "Y" if patient.deceased else None
    return codec.segment("PID", *fields)
