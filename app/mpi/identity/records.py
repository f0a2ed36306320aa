"""A stored patient in the matcher's flat form (the standard CSV columns plus identifiers)."""

from __future__ import annotations

from typing import Any

from mpi.domain.patient import HumanName, Patient, PatientInput

# Identifier systems and type codes that mean a US Social Security number.
SSN_SYSTEMS = frozenset({"urn:oid:2.16.840.1.113883.4.1", "http://hl7.org/fhir/sid/us-ssn"})
SSN_TYPES = frozenset({"SS", "SB"})
NAME_USE_ORDER = ("official", "usual", None, "maiden", "nickname", "temp", "old", "anonymous")
ADDRESS_USE_ORDER = ("home", None, "temp", "work", "billing", "old")
PHONE_USE_ORDER = ("mobile", "home", None, "work", "temp", "old")


def _first(items: list[Any], order: tuple[str | None, ...], use: Any) -> Any:
    ranked = sorted(items, key=lambda x: order.index(use(x)) if use(x) in order else len(order))
    return ranked[0] if ranked else None


def _primary_name(names: list[HumanName]) -> HumanName | None:
    return _first(list(names), NAME_USE_ORDER, lambda n: n.use)


def match_data(record: Patient | PatientInput, *, record_id: str | None = None) -> dict[str, Any]:
    """The JSON-safe matching form of a record: what ``patient_link.match_data`` holds."""
    name = _primary_name(record.names)
    given = list(name.given) if name else []
    address = _first(list(record.addresses), ADDRESS_USE_ORDER, lambda a: a.use)
    phones = [t for t in record.telecom if t.system in ("phone", "sms")]
    phone = _first(phones, PHONE_USE_ORDER, lambda t: t.use)
    ssn = next((i.value for i in record.identifiers
                if i.system in SSN_SYSTEMS or (i.type or "") in SSN_TYPES), None)
    sex = {"male": "m", "female": "f"}.get(record.gender or "")
    rid = record_id if record_id is not None else getattr(record, "id", None) or ""
    return {
        "record_id": rid,
        "source": record.source,
        "given_name": given[0] if given else None,
        "middle_name": " ".join(given[1:]) or None,
        "family_name": name.family if name else None,
        "birth_date": record.birth_date.isoformat() if record.birth_date else None,
        "birth_partial": record.birth_date_partial,
        "sex": sex,
        "address_line": " ".join(address.line) if address and address.line else None,
        "city": address.city if address else None,
        "state": address.state if address else None,
        "postal_code": address.postal_code if address else None,
        "phone": phone.value if phone else None,
        "ssn": ssn,
        "identifiers": [[i.system, i.value] for i in record.identifiers
                        if not (i.system in SSN_SYSTEMS or (i.type or "") in SSN_TYPES)],
        "mothers_maiden_name": record.mothers_maiden_name,
        "birth_order": record.multiple_birth_order,
    }
