"""Blocking: short keys per record so candidates are a few index reads at any registry size.

Two records become candidates when they share at least one key. The keys are chosen so
that the usual errors still meet (each line names the error it survives):

- ``d:``  date of birth (day/month sorted, so swapped day and month meet) + NYSIIS of the
          family name, and the same with the given name (one key each, without saying
          which name: swapped given/family names meet): typos that keep the sound, a
          changed family name, swapped day/month, moved house;
- ``g:``  date of birth (sorted as above) + each canonical form of the given name
          (nicknames: Bill and William meet);
- ``n:``  NYSIIS of both names (sorted) + birth year: typos in day or month;
- ``p:``  postal code (digits sorted: transposed digits meet) + NYSIIS of either name:
          missing or corrupt date;
- ``a:``  date of birth + postal code: both names garbled;
- ``s01:``, ``s02:``, ``s12:``  the SSN cut into three parts, each key two of them:
          one mistyped digit, or two transposed inside a part, leaves one key whole (and
          the same SSN shares all three). Three keys, where one-digit-deleted keys need
          ten for a nine-digit SSN: blocking rows are the import's biggest database cost,
          and a six-digit key still meets few strangers. Two digits transposed across a
          cut change two parts; such a pair meets through its names, date or postcode;
- ``m:``  NYSIIS of both names (sorted), nothing else: a record with no birth date meets
          one with no address (a payroll feed against an insurance feed). Common names
          make big blocks; like every key, one shared by more than the cap (500 records
          or persons) is ignored, so this key finds the rarer names and costs nothing on
          the common ones;
- ``f:``  NYSIIS of the family name + the given name's first letter: the same, when the
          given name is mistyped (Cathernie / Catherine; clerks rarely miss the first
          letter), which changes its sound. Looked up only by records WITHOUT a birth
          date; a record with one looks up ``u:``, the same key that only records without
          a birth date hold (:func:`probe_keys`). Two records that both have a birth date
          meet through the keys that hold it (or an address, phone, SSN, ``m:``): this
          key is for the pairs where one has none. Looked up by every record, it was the
          key that grew with the registry: at 700,000 synthetic records three quarters of
          every record's candidates (22 of 29), each scored in vain;
- ``l:``  the address line + NYSIIS of the family name: household and payroll records
          with neither birth date nor postal code, and a mistyped postal code;
- ``t:``  phone (last 10 digits); ``i:`` every (system, value) identifier.

No key needs the address line, so a move never hides a person. Keys are at most 64
characters (long identifiers are hashed). Keys that would be unselective (a missing part)
are not emitted.

:data:`EM_RULES` are the blocking rules used to train m by EM: each says which
comparisons it holds fixed (those are switched off in that EM pass).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mpi.matching.record import MatchRecord, PreparedRecord, prepare

MAX_KEY = 64
MAX_NAME_FORMS = 6


def _dob_sorted(dob: str) -> str:
    if not dob:
        return ""
    month, day = dob[4:6], dob[6:8]
    return dob[:4] + min(month, day) + max(month, day)


def _fit(key: str) -> str:
    if len(key) <= MAX_KEY:
        return key
    prefix = key.split(":", 1)[0]
    return f"{prefix}#{hashlib.sha256(key.encode()).hexdigest()[:40]}"


def blocking_keys(record: MatchRecord | PreparedRecord) -> list[str]:
    """The record's blocking keys (sorted, unique, each at most 64 characters)."""
    r = prepare(record)
    keys: set[str] = set()
    dob = _dob_sorted(r.dob)
    fam, giv = r.family_nysiis, r.given_nysiis
    # Name keys do not say which name they came from, so swapped given/family names meet.
    names = {n for n in (fam, giv) if n}
    if dob:
        for n in names:
            keys.add(f"d:{dob}:{n}")
        for form in sorted(r.given_forms)[:MAX_NAME_FORMS]:
            keys.add(f"g:{dob}:{form}")
        if r.postcode:
            keys.add(f"a:{r.dob}:{r.postcode}")
    if fam and r.given:
        keys.add(f"f:{fam}:{r.given[0]}")
        if not dob:
            keys.add(f"u:{fam}:{r.given[0]}")
    if fam and giv:
        keys.add(f"m:{min(fam, giv)}:{max(fam, giv)}")
        if r.dob:
            keys.add(f"n:{min(fam, giv)}:{max(fam, giv)}:{r.dob[:4]}")
    if r.address and fam:
        keys.add(f"l:{r.address[:40]}:{fam}")
    if r.postcode:
        postcode = "".join(sorted(r.postcode))  # transposed digits meet
        for n in names:
            keys.add(f"p:{postcode}:{n}")
    ssn = r.ssn
    if len(ssn) >= 6 and len(set(ssn)) > 1:  # 000000000 and friends are placeholders
        cut1, cut2 = len(ssn) // 3, 2 * len(ssn) // 3
        parts = (ssn[:cut1], ssn[cut1:cut2], ssn[cut2:])
        for i, j in ((0, 1), (0, 2), (1, 2)):
            keys.add(f"s{i}{j}:{parts[i]}{parts[j]}")
    if r.phone:
        keys.add(f"t:{r.phone}")
    for system, values in r.identifiers.items():
        for value in values:
            keys.add(f"i:{system}:{value}")
    return sorted(_fit(k) for k in keys)


def probe_keys(keys: Sequence[str]) -> list[str]:
    """The keys a record with these :func:`blocking_keys` looks its candidates up by: its
    own, except that one with a birth date looks up ``u:`` (records without a birth date)
    where it holds ``f:``, and one without looks up ``f:`` alone (every record). Two
    records meet when either's probe keys hold a key of the other's: the same pairs
    either way round."""
    if any(k.startswith("u:") for k in keys):  # no birth date
        return [k for k in keys if not k.startswith("u:")]
    return sorted(f"u:{k[2:]}" if k.startswith("f:") else k for k in keys)


@dataclass(frozen=True)
class BlockingRule:
    """A blocking rule for EM: pairs sharing ``key`` are compared; ``fixes`` are switched off."""

    name: str
    fixes: tuple[str, ...]
    key: Callable[[PreparedRecord], str | None]


def _dob_key(r: PreparedRecord) -> str | None:
    return r.dob or None


def _names_key(r: PreparedRecord) -> str | None:
    return f"{r.given}|{r.family}" if r.given and r.family else None


EM_RULES: tuple[BlockingRule, ...] = (
    BlockingRule("same date of birth", ("birth_date",), _dob_key),
    BlockingRule("same given and family name", ("given_name", "family_name"), _names_key),
)
