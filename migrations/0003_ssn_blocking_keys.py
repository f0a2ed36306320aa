"""Blocking keys recomputed: the SSN keys changed from ten one-digit-deleted keys to three
keys of two SSN parts each.

Blocking keys are derived data: every live record's keys are recomputed from its stored
matching form (``patient_link.match_data``), so records stored before still meet new ones
on their SSN. Records linked before enterprise identity existed (empty matching form)
hold no keys and are left so; they get keys on their next update. No link changes.

The key function is this release's ``mpi.matching.blocking.blocking_keys`` (with the parts
of ``mpi.matching.record`` it reads), copied here: later changes to the live key function
do not change what this migration stores. Its nickname list and phonetic code are those of
the ``nicknames`` and ``jellyfish`` packages.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping
from datetime import date
from functools import cache
from typing import Any

import jellyfish
import peewee

# The released text of this migration imported the live key function; this copy gives the
# same keys (tests/storage/test_migration_0003_keys.py), so databases that applied it are
# accepted (mpi.storage.migrate).
SUPERSEDES = ("fad35d6568ebc00133fcb11cf07a25ed03bcc3d781ae7f60964c9f7882c3ae41",)

PAGE = 5000
MAX_KEY = 64
MAX_NAME_FORMS = 6
_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_NON_DIGIT = re.compile(r"[^0-9]+")


def _text(value: str | None) -> str:
    """Case-folded ASCII letters and digits, words separated by one space."""
    if not value:
        return ""
    decomposed = unicodedata.normalize("NFKD", value.casefold())
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _NON_ALNUM.sub(" ", stripped.replace("'", "")).strip()


def _digits(value: str | None) -> str:
    return _NON_DIGIT.sub("", value) if value else ""


def _nysiis(name: str) -> str:
    joined = name.replace(" ", "")
    return jellyfish.nysiis(joined) if joined and joined.isalpha() else ""


@cache
def _nicknamer() -> Any:
    from nicknames import NickNamer

    return NickNamer()


def _name_forms(name: str) -> set[str]:
    """The first word of the name and its canonical forms ('bill' -> bill, william, ...)."""
    if not name:
        return set()
    first = name.split(" ", 1)[0]
    return {first, *_nicknamer().canonicals_of(first)}


def _fit(key: str) -> str:
    if len(key) <= MAX_KEY:
        return key
    prefix = key.split(":", 1)[0]
    return f"{prefix}#{hashlib.sha256(key.encode()).hexdigest()[:40]}"


def blocking_keys(data: Mapping[str, Any]) -> list[str]:
    """The blocking keys of a stored matching form (sorted, unique, at most 64 characters)."""
    given = _text(data.get("given_name"))
    giv, fam = _nysiis(given), _nysiis(_text(data.get("family_name")))
    born = data.get("birth_date")
    d = date.fromisoformat(born) if born else None
    dob = f"{d.year:04d}{d.month:02d}{d.day:02d}" if d else ""
    postcode = _text(data.get("postal_code")).replace(" ", "")
    phone, ssn = _digits(data.get("phone")), _digits(data.get("ssn"))
    keys: set[str] = set()
    names = {n for n in (fam, giv) if n}
    if dob:
        month, day = dob[4:6], dob[6:8]
        dob_sorted = dob[:4] + min(month, day) + max(month, day)
        for n in names:
            keys.add(f"d:{dob_sorted}:{n}")
        for form in sorted(_name_forms(given))[:MAX_NAME_FORMS]:
            keys.add(f"g:{dob_sorted}:{form}")
        if postcode:
            keys.add(f"a:{dob}:{postcode}")
        if fam and giv:
            keys.add(f"n:{min(fam, giv)}:{max(fam, giv)}:{dob[:4]}")
    if postcode:
        for n in names:
            keys.add(f"p:{''.join(sorted(postcode))}:{n}")
    if len(ssn) >= 6 and len(set(ssn)) > 1:
        cut1, cut2 = len(ssn) // 3, 2 * len(ssn) // 3
        parts = (ssn[:cut1], ssn[cut1:cut2], ssn[cut2:])
        for i, j in ((0, 1), (0, 2), (1, 2)):
            keys.add(f"s{i}{j}:{parts[i]}{parts[j]}")
    if len(phone) >= 7:
        keys.add(f"t:{phone[-10:]}")
    for system, value in data.get("identifiers") or ():
        keys.add(f"i:{system.strip().casefold()}:{value.strip().casefold()}")
    return sorted({_fit(k) for k in keys})


def upgrade(db: peewee.Database) -> None:
    target = db.obj if isinstance(db, peewee.DatabaseProxy) else db
    copy = isinstance(target, peewee.PostgresqlDatabase)
    # Fixed SQL text: db.param is the driver's placeholder and PAGE a constant.
    select = ("SELECT pl.patient_pk, pl.match_data FROM patient_link pl "  # noqa: S608
              "JOIN patient p ON p.pk = pl.patient_pk "
              f"WHERE p.deleted_at IS NULL AND pl.patient_pk > {db.param} "
              f"ORDER BY pl.patient_pk LIMIT {PAGE}")
    columns = 'blocking_key ("key", "patient_pk")'
    insert = f"INSERT INTO {columns} VALUES ({db.param}, {db.param})"  # noqa: S608
    db.execute_sql("DELETE FROM blocking_key")
    last = 0
    while rows := db.execute_sql(select, (last,)).fetchall():
        keys = [(key, patient_pk) for patient_pk, raw in rows
                if (data := json.loads(raw)) for key in blocking_keys(data)]
        cursor = target.cursor()
        try:
            if copy:  # PostgreSQL's COPY, as mpi import writes keys
                with cursor.copy(f"COPY {columns} FROM STDIN") as out:
                    for row in keys:
                        out.write_row(row)
            else:
                cursor.executemany(insert, keys)
        finally:
            cursor.close()
        last = rows[-1][0]
