"""Name search in the database (FHIR/PDQm search): given names folded for search, and a
family-name index that serves prefix searches on PostgreSQL.

``patient_name.given_norm`` holds a name's given names case- and accent-folded, each
preceded and the last followed by the unit separator (U+001F, which no stored name may
contain), so that ``given=jo`` finds "Jo" and "José" at a name's start only. Existing rows
are filled here, in batches, with this file's own copy of the folding.

On PostgreSQL ``family_norm`` (and ``given_norm``) take the "C" collation: a b-tree index
serves ``LIKE 'prefix%'`` only under it (or ``text_pattern_ops``), and these columns are
search keys, compared byte by byte, never shown.

Expand only: a new nullable column and a column collation; an older release ignores both.
"""

from __future__ import annotations

import json
import unicodedata

import peewee

_SEPARATOR = "\x1f"
_BATCH = 5000


def _fold(value: str) -> str:
    decomposed = unicodedata.normalize("NFKD", value.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c)).strip()[:200]


def _given_norm(given: list[str]) -> str | None:
    if not given:
        return None
    return "".join(_SEPARATOR + _fold(g) for g in given) + _SEPARATOR


def upgrade(db: peewee.Database) -> None:
    db.execute_sql("ALTER TABLE patient_name ADD COLUMN given_norm TEXT")
    postgres = isinstance(db, peewee.PostgresqlDatabase)
    if postgres:
        db.execute_sql('ALTER TABLE patient_name ALTER COLUMN family_norm '
                       'TYPE VARCHAR(200) COLLATE "C"')
        db.execute_sql('ALTER TABLE patient_name ALTER COLUMN given_norm TYPE TEXT COLLATE "C"')
    param = db.param
    last = 0
    while True:
        rows = db.execute_sql(
            f"SELECT pk, given FROM patient_name WHERE pk > {param} "  # noqa: S608
            f"ORDER BY pk LIMIT {_BATCH}", (last,)).fetchall()
        if not rows:
            break
        updates = [(_given_norm(json.loads(given) if given else []), pk) for pk, given in rows]
        filled = [u for u in updates if u[0] is not None]
        if filled:
            cursor = db.cursor()
            cursor.executemany(
                f"UPDATE patient_name SET given_norm = {param} WHERE pk = {param}", filled)
        last = rows[-1][0]
