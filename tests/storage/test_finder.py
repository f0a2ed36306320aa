"""The database search behind FHIR/PDQm: its prefix searches use the name index."""

from __future__ import annotations

import json
import random
import re
import string
import uuid
from datetime import date, datetime

import peewee
import pytest

from mpi.domain.criteria import Criteria, Term, Token
from mpi.domain.patient import PatientInput
from mpi.fhir.search import parse_date
from mpi.storage.db import execute_for_values
from mpi.storage.finder import PatientFinder
from mpi.storage.patients import PatientRepository
from tests.helpers import patient

NOW = datetime(2026, 1, 1, 12, 0)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_family_prefix_search_uses_the_family_name_index(db):
    """On PostgreSQL a b-tree serves LIKE 'prefix%' only under the "C" collation, which
    migration 0006 gives the folded name columns; the plan must use the index (with
    sequential scans discouraged, as on a large table) rather than read every name."""
    repo = PatientRepository()
    for i in range(50):
        data = PatientInput.model_validate_json(json.dumps(patient(
            source_id=f"F{i}", names=[{"family": f"Fam{i:03d}", "given": ["A"]}],
            identifiers=[])))
        repo.insert(data, patient_id=uuid.uuid4(), now=NOW)
    db.execute_sql("ANALYZE")
    finder = PatientFinder(repo)
    query = finder._query(Criteria((Term("family", ("fam01",)),)), date(2026, 1, 1))
    sql, params = query.sql()
    db.execute_sql("SET enable_seqscan = off")
    plan = "\n".join(r[0] for r in execute_for_values(db, f"EXPLAIN {sql}", params))
    assert "patient_name_family_norm_birth_date_patient_pk" in plan, plan
    found = finder.find(Criteria((Term("family", ("fam01",)),)), offset=0, count=50,
                        total=True, today=date(2026, 1, 1))
    assert found.total == 10 and len(found.items) == 10


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("token", [Token(None, "+1-217-555-0107", any_system=True),
                                   Token("phone", "+1-217-555-0107")])
def test_a_telecom_search_probes_the_telecom_index(db, token):
    """A search by phone number or e-mail (PDQm ``telecom``) finds the values in their
    index (migration 0023) instead of reading every record's (33 ms at 1,240,000 values).
    Run on a plan made for its value, as the finder runs it."""
    repo = PatientRepository()
    for i in range(40):
        data = PatientInput.model_validate_json(json.dumps(patient(
            source_id=f"T{i}", identifiers=[],
            telecom=[{"system": "phone", "value": f"+1-217-555-01{i:02d}"},
                     {"system": "email", "value": f"p{i}@example.org"}])))
        repo.insert(data, patient_id=uuid.uuid4(), now=NOW)
    db.execute_sql("ANALYZE")
    db.execute_sql("SET enable_seqscan = off")  # (40 records: as on a large table)
    finder = PatientFinder(repo)
    criteria = Criteria((Term("telecom", (token,)),))
    sql, params = finder._query(criteria, date(2026, 1, 1)).sql()
    plan = "\n".join(r[0] for r in execute_for_values(db, f"EXPLAIN {sql}", params))
    assert "patient_telecom_value" in plan, plan
    found = finder.find(criteria, offset=0, count=10, total=True, today=date(2026, 1, 1))
    assert found.total == 1 and found.items[0].source_id == "T7"


def _born_registry(repo: PatientRepository) -> None:
    for i in range(60):
        data = PatientInput.model_validate_json(json.dumps(patient(
            source_id=f"B{i}", names=[{"family": f"Walsh{i % 3}", "given": ["A"]}],
            birth_date=f"{1960 + i % 20}-03-{1 + i % 28:02d}", identifiers=[])))
        repo.insert(data, patient_id=uuid.uuid4(), now=NOW)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_family_and_birth_year_search_reads_the_names_born_then_from_one_index(db):
    """PDQm's family-and-birthdate search: the names of that family born that year come
    from one scan of the name index, by family prefix and birth date (migration 0022
    copies the record's birth date beside its names), not from joining every name of the
    family with every record born that year (41-44 ms a search at 1,150,000 records, for
    a family of 11,000 records and a year of 13,000; 2.1 ms so). 30,000 records of 500
    family names born over 50 years, analyzed: the plan PostgreSQL picks."""
    db.execute_sql(
        "INSERT INTO patient (id, source, source_id, active, deceased, version, birth_date, "
        "created_at, updated_at) SELECT gen_random_uuid(), 'bulk', g::text, true, false, 1, "
        "date '1940-01-01' + (g * 7919 %% 18262), now(), now() FROM generate_series(1, 30000) g",
        ())
    db.execute_sql(
        "INSERT INTO patient_name (patient_pk, position, family, family_norm, given, prefix, "
        "suffix, birth_date) SELECT pk, 0, 'fam' || (pk %% 500), 'fam' || (pk %% 500), '[]', "
        "'[]', '[]', birth_date FROM patient", ())
    db.execute_sql("VACUUM ANALYZE patient")
    db.execute_sql("VACUUM ANALYZE patient_name")
    finder = PatientFinder(PatientRepository())
    criteria = Criteria((Term("family", ("fam12",)),
                         Term("birthdate", (parse_date("1969"),))))
    sql, params = finder._query(criteria, date(2026, 1, 1)).select(
        peewee.SQL('"t1"."id"')).sql()
    plan = "\n".join(r[0] for r in execute_for_values(db, f"EXPLAIN {sql}", params))
    names = plan.split("patient_name_family_norm_birth_date_patient_pk", 1)
    assert len(names) == 2, plan
    scan = names[1].split("->", 1)[0]  # the scan's own lines: its condition
    assert "birth_date >= '1969-01-01'::date" in scan, plan
    (expected,) = db.execute_sql(
        "SELECT count(*) FROM patient WHERE (pk %% 500)::text LIKE '12%%' "
        "AND birth_date >= '1969-01-01' AND birth_date < '1970-01-01'", ()).fetchone()
    found = finder.find(criteria, offset=0, count=100, total=True, today=date(2026, 1, 1))
    assert expected > 0 and found.total == expected
    assert {str(p.birth_date)[:4] for p in found.items} == {"1969"}


@pytest.mark.parametrize("criteria", [
    "family=wal&birthdate=1969", "name=walsh1&birthdate=1969-03", "given=a&birthdate=1969",
    "family=walsh0,walsh1,walsh2&birthdate=1969,1970", "family=wal&birthdate=ge1969",
    "family=wal&birthdate=1969-03-10&birthdate=ge1960"])
def test_names_without_their_records_birth_date_are_still_found(db, criteria):
    """Names an older release wrote (during a rolling upgrade) carry no birth date: a name
    without one may belong to a record born then, and the record's own date decides. Each
    search finds the same records whatever the names say, and a name whose copy is wrong
    could only hide a record, so the copies are dropped for a third of the records."""
    from mpi.fhir.search import parse, parse_pairs
    from mpi.storage.models import PatientNameRow, PatientRow

    repo = PatientRepository()
    _born_registry(repo)
    finder = PatientFinder(repo)
    search = parse(parse_pairs(criteria)).criteria
    before = {p.id for p in finder.find(search, offset=0, count=100, total=False,
                                        today=date(2026, 1, 1)).items}
    assert before
    some = PatientRow.select(PatientRow.pk).where(PatientRow.source_id.endswith("0"))
    assert PatientNameRow.update(birth_date=None).where(
        PatientNameRow.patient.in_(some)).execute() > 0
    after = {p.id for p in finder.find(search, offset=0, count=100, total=False,
                                       today=date(2026, 1, 1)).items}
    assert after == before


def test_a_records_names_carry_its_birth_date_as_it_changes(db):
    """Written with the names: the day, or the first day of a month or year known alone;
    none without a birth date; an update writes the new one."""
    from mpi.storage.models import PatientNameRow, PatientRow

    repo = PatientRepository()
    for source_id, fields in (("D", {"birth_date": "1971-03-09"}),
                              ("M", {"birth_date_partial": "1971-03"}),
                              ("Y", {"birth_date_partial": "1971"}), ("N", {})):
        data = PatientInput.model_validate_json(json.dumps({**patient(
            source_id=source_id, birth_date=None,
            names=[{"family": "Macan", "given": ["T"]},
                   {"family": "Macan-Ross", "given": ["T"]}]), **fields}))
        repo.insert(data, patient_id=uuid.uuid4(), now=NOW)

    def dates(source_id: str) -> list[date | None]:
        return [n.birth_date for n in PatientNameRow.select().join(PatientRow).where(
            PatientRow.source_id == source_id).order_by(PatientNameRow.position)]

    assert dates("D") == [date(1971, 3, 9)] * 2
    assert dates("M") == [date(1971, 3, 1)] * 2
    assert dates("Y") == [date(1971, 1, 1)] * 2
    assert dates("N") == [None, None]
    row = PatientRow.get(PatientRow.source_id == "N")
    changed = PatientInput.model_validate_json(json.dumps(patient(
        source_id="N", names=[{"family": "Macan", "given": ["T"]}], birth_date="1980-02-29")))
    repo.update(row, changed, expected_version=1, now=NOW)
    assert dates("N") == [date(1980, 2, 29)]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_planner_knows_how_many_names_a_family_prefix_holds(db):
    """Which join a family-and-birth-year search gets depends on how many names PostgreSQL
    expects the prefix to hold. A registry has thousands of family names whose frequencies
    fall off slowly; with the default statistics (100 common values, 100 histogram buckets)
    such a prefix was estimated at 127 names for 10,173 (1,300,000 records) and the search
    took the slow plan. Migration 0018 keeps 1,000 of each: every estimate here is within
    a factor of two (with 100: as far off as 2 for 46)."""
    rng = random.Random(3)
    prefixes = ["mor", "wal", "fer", "han", "kow", "lar", "nov", "san"] + [
        "".join(rng.choice(string.ascii_lowercase) for _ in range(3)) for _ in range(300)]
    names = [rng.choice(prefixes) + "".join(rng.choice("aeiourstln")
                                            for _ in range(rng.randint(2, 6)))
             for _ in range(3000)]
    drawn = rng.choices(names, [1 / (i + 1) ** 0.8 for i in range(len(names))], k=30_000)
    db.execute_sql(
        "INSERT INTO patient (id, source, source_id, active, deceased, version, created_at, "
        "updated_at) SELECT gen_random_uuid(), 'stats', g::text, true, false, 1, now(), now() "
        "FROM generate_series(1, %s) AS g", (len(drawn),))
    db.execute_sql(
        "INSERT INTO patient_name (patient_pk, position, family, family_norm, given, prefix, "
        "suffix) SELECT p.pk, 0, t.n, t.n, '[]', '[]', '[]' FROM unnest(%s::text[]) "
        "WITH ORDINALITY AS t(n, i) JOIN patient p ON p.source = 'stats' "
        "AND p.source_id = t.i::text", (drawn,))
    db.execute_sql("ANALYZE patient_name")
    for prefix in [*prefixes[:8], prefixes[20], prefixes[100]]:
        like = f"{prefix}%"
        (plan,) = db.execute_sql("EXPLAIN SELECT 1 FROM patient_name WHERE family_norm LIKE %s",
                                 (like,)).fetchone()
        estimated = int(re.search(r"rows=(\d+)", plan)[1])  # type: ignore[index]
        (actual,) = db.execute_sql("SELECT count(*) FROM patient_name WHERE family_norm LIKE %s",
                                   (like,)).fetchone()
        assert actual / 2 <= estimated <= actual * 2, (prefix, estimated, actual)


def _registry_of(repo: PatientRepository, n: int) -> None:
    for i in range(n):
        data = PatientInput.model_validate_json(json.dumps(patient(
            source_id=f"T{i}", names=[{"family": "Totalson", "given": ["A"]}],
            birth_date=f"1980-01-{1 + i:02d}", identifiers=[])))
        repo.insert(data, patient_id=uuid.uuid4(), now=NOW)


@pytest.mark.parametrize(("offset", "count", "counted"), [
    (0, 10, False),  # one page: its rows carry the total
    (5, 10, False),  # the last page
    (0, 3, False),  # more pages: the rows carry it all the same (a window count)
    (4, 3, False),
    (20, 3, True),  # past the end: an empty page says nothing, counted
    (0, 0, True),  # _summary=count
])
def test_the_total_is_counted_only_when_the_page_cannot_say_it(db, monkeypatch, offset, count,
                                                                 counted):
    repo = PatientRepository()
    _registry_of(repo, 7)
    from mpi.storage import finder

    counts: list[int] = []
    real_count = finder._count

    def count_spy(query):
        counts.append(1)
        return real_count(query)

    monkeypatch.setattr(finder, "_count", count_spy)
    criteria = Criteria((Term("family", ("totals",)), Term("birthdate", (parse_date("1980"),))))
    found = PatientFinder(repo).find(criteria, offset=offset, count=count, total=True,
                                     today=date(2026, 1, 1))
    assert found.total == 7
    assert len(found.items) == max(0, min(count, 7 - offset))
    assert bool(counts) is counted
