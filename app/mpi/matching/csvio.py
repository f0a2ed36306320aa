"""CSV in and out for the batch tools.

Standard columns: ``record_id, source, given_name, middle_name, family_name, birth_date
(YYYY-MM-DD), sex, address_line, city, state, postal_code, phone, ssn``; all but
``record_id`` optional; other columns are ignored. ``mapping`` renames: ``{"given_name":
"first"}`` reads our ``given_name`` from the file's ``first`` column.

A bad *value* costs the record that value, not the record: an impossible or implausible
birth date (``1955-11-92``, year 8929, one in the future or before 1850) or a value
longer than MAX_FIELD is dropped from its record, which is still read, and counted in
:class:`BadValues` (per field, with the first line numbers) for the command's summary.
A bad *file* or *row* (a missing column, more values than columns, an empty or repeated
record_id) raises :class:`CsvError` naming the file, the line and the field.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from mpi.matching.record import MatchRecord

FIELDS = ("record_id", "source", "given_name", "middle_name", "family_name", "birth_date", "sex",
          "address_line", "city", "state", "postal_code", "phone", "ssn",
          "mothers_maiden_name")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_FIELD = 500


class CsvError(ValueError):
    """A CSV file or row that cannot be read; the message names file, line and field."""


@dataclass
class BadValues:
    """Values dropped from records that were kept: per field, how many, why, and the
    first :attr:`FIRST` line numbers. Never the values themselves (they are patient data)."""

    FIRST = 5
    counts: Counter[str] = field(default_factory=Counter)
    reasons: dict[str, Counter[str]] = field(default_factory=dict)
    lines: dict[str, list[int]] = field(default_factory=dict)

    def drop(self, name: str, line: int, reason: str) -> None:
        self.counts[name] += 1
        self.reasons.setdefault(name, Counter())[reason] += 1
        first = self.lines.setdefault(name, [])
        if len(first) < self.FIRST:
            first.append(line)

    def merge(self, other: BadValues) -> None:
        for name, n in other.counts.items():
            self.counts[name] += n
            self.reasons.setdefault(name, Counter()).update(other.reasons.get(name, {}))
            first = self.lines.setdefault(name, [])
            first.extend(other.lines.get(name, [])[:self.FIRST - len(first)])

    def __bool__(self) -> bool:
        return bool(self.counts)

    def summary(self, source: str) -> list[str]:
        """One line per field, for stderr."""
        out = []
        for name in sorted(self.counts):
            why = ", ".join(f"{reason} {n}" for reason, n in
                            self.reasons[name].most_common())
            out.append(f"{source}: field {name}: {self.counts[name]} value(s) dropped "
                       f"({why}); first at line(s) "
                       f"{', '.join(map(str, self.lines[name]))}")
        return out


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


def read_records(path: str | Path, mapping: Mapping[str, str] | None = None, *,
                 bad: BadValues | None = None, today: date | None = None
                 ) -> Iterator[MatchRecord]:
    """Yield one :class:`MatchRecord` per row, without its bad values (counted in ``bad``);
    raise :class:`CsvError` on the first bad row. Birth dates after ``today`` (default:
    the machine's date) are implausible."""
    mapping = dict(mapping or {})
    bad = BadValues() if bad is None else bad
    today = today or date.today()
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
                        if f == "record_id":
                            raise CsvError(f"{name}: line {line}: field {f}: longer than "
                                           f"{MAX_FIELD} characters")
                        bad.drop(f, line, f"longer than {MAX_FIELD} characters")
                        raw = ""
                    values[f] = raw or None
                rid = values.get("record_id")
                if not rid:
                    raise CsvError(f"{name}: line {line}: field record_id: empty")
                if rid in seen:
                    raise CsvError(f"{name}: line {line}: field record_id: duplicate {rid!r}")
                seen.add(str(rid))
                born, why = _date(values.get("birth_date"), today)
                if why:
                    bad.drop("birth_date", line, why)
                values["birth_date"] = born
                yield MatchRecord(**values)  # type: ignore[arg-type]
        except csv.Error as exc:
            raise CsvError(f"{name}: line {reader.line_num}: {exc}") from exc


def _date(raw: object, today: date) -> tuple[date | None, str | None]:
    """(the birth date, or None; why it was dropped, or None) -- the API's rules."""
    from mpi.domain.patient import EARLIEST_BIRTH_DATE

    if raw is None:
        return None, None
    text = str(raw)
    if not _DATE.match(text):
        return None, "not YYYY-MM-DD"
    try:
        born = date.fromisoformat(text)
    except ValueError:
        return None, "impossible date"
    if born > today:
        return None, "in the future"
    if born < EARLIEST_BIRTH_DATE:
        return None, f"before {EARLIEST_BIRTH_DATE.isoformat()}"
    return born, None


def write_rows(path: str | Path, header: Iterable[str], rows: Iterable[Iterable[object]]) -> None:
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(list(header))
        writer.writerows(rows)
    tmp.replace(target)
