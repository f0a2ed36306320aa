"""CSV in and out for the batch tools.

Standard columns: ``record_id, source, given_name, middle_name, family_name, birth_date
(YYYY-MM-DD), sex, address_line, city, state, postal_code, phone, ssn``; all but
``record_id`` optional; other columns are ignored. ``mapping`` renames: ``{"given_name":
"first"}`` reads our ``given_name`` from the file's ``first`` column. A bad row raises
:class:`CsvError` naming the file, the line and the field.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import date
from pathlib import Path

from mpi.matching.record import MatchRecord

FIELDS = ("record_id", "source", "given_name", "middle_name", "family_name", "birth_date", "sex",
          "address_line", "city", "state", "postal_code", "phone", "ssn")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_FIELD = 500


class CsvError(ValueError):
    """A CSV file or row that cannot be read; the message names file, line and field."""


def parse_mapping(spec: str | None) -> dict[str, str]:
    """``"given_name=first,family_name=surname"`` -> ``{"given_name": "first", ...}``."""
    out: dict[str, str] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        ours, sep, theirs = part.partition("=")
        ours, theirs = ours.strip(), theirs.strip()
        if not sep or not ours or not theirs:
            raise CsvError(f"bad column mapping {part!r}: write FIELD=COLUMN")
        if ours not in FIELDS:
            raise CsvError(f"bad column mapping {part!r}: {ours!r} is not one of "
                           f"{', '.join(FIELDS)}")
        out[ours] = theirs
    return out


def read_records(path: str | Path, mapping: Mapping[str, str] | None = None
                 ) -> Iterator[MatchRecord]:
    """Yield one :class:`MatchRecord` per row; raise :class:`CsvError` on the first bad row."""
    mapping = dict(mapping or {})
    name = str(path)
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        columns = {f: mapping.get(f, f) for f in FIELDS}
        missing = [c for f, c in columns.items() if f in mapping and c not in header]
        if columns["record_id"] not in header:
            missing.insert(0, columns["record_id"])
        if missing:
            raise CsvError(f"{name}: line 1: missing column(s) {', '.join(sorted(set(missing)))}"
                           f" (header: {', '.join(header) or 'empty'})")
        present = {f: c for f, c in columns.items() if c in header}
        seen: set[str] = set()
        try:
            for row in reader:
                line = reader.line_num
                if None in row:
                    raise CsvError(f"{name}: line {line}: more values than header columns")
                values: dict[str, object] = {}
                for f, c in present.items():
                    raw = (row.get(c) or "").strip()
                    if len(raw) > MAX_FIELD:
                        raise CsvError(f"{name}: line {line}: field {f}: longer than "
                                       f"{MAX_FIELD} characters")
                    values[f] = raw or None
                rid = values.get("record_id")
                if not rid:
                    raise CsvError(f"{name}: line {line}: field record_id: empty")
                if rid in seen:
                    raise CsvError(f"{name}: line {line}: field record_id: duplicate {rid!r}")
                seen.add(str(rid))
                values["birth_date"] = _date(values.get("birth_date"), name, line)
                yield MatchRecord(**values)  # type: ignore[arg-type]
        except csv.Error as exc:
            raise CsvError(f"{name}: line {reader.line_num}: {exc}") from exc


def _date(raw: object, name: str, line: int) -> date | None:
    if raw is None:
        return None
    text = str(raw)
    if not _DATE.match(text):
        raise CsvError(f"{name}: line {line}: field birth_date: {text!r} is not YYYY-MM-DD")
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise CsvError(f"{name}: line {line}: field birth_date: {text!r}: {exc}") from exc


def write_rows(path: str | Path, header: Iterable[str], rows: Iterable[Iterable[object]]) -> None:
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(list(header))
        writer.writerows(rows)
    tmp.replace(target)
