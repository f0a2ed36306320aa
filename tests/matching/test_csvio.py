from datetime import date

import pytest

from mpi.matching.csvio import CsvError, parse_mapping, read_records

HEADER = "record_id,given_name,family_name,birth_date,ssn,extra\n"


def write(tmp_path, text, name="in.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_standard_columns_and_ignores_others(tmp_path):
    path = write(tmp_path, HEADER + "1,Ann,Lee,1990-02-03,123-45-6789,x\n2,,,,,\n")
    first, second = list(read_records(path))
    assert first.record_id == "1" and first.given_name == "Ann"
    assert first.birth_date == date(1990, 2, 3) and first.ssn == "123-45-6789"
    assert second.given_name is None and second.birth_date is None


def test_column_mapping(tmp_path):
    path = write(tmp_path, "id,first,surname\nA,Ann,Lee\n")
    (r,) = read_records(path, parse_mapping("record_id=id, given_name=first,family_name=surname"))
    assert (r.record_id, r.given_name, r.family_name) == ("A", "Ann", "Lee")


@pytest.mark.parametrize("spec, message", [
    ("given_name", "FIELD=COLUMN"), ("nickname=first", "not one of"), ("=x", "FIELD=COLUMN")])
def test_bad_mapping(spec, message):
    with pytest.raises(CsvError, match=message):
        parse_mapping(spec)


@pytest.mark.parametrize("rows, message", [
    ("1,Ann,Lee,03/02/1990,,\n", r"line 2: field birth_date: '03/02/1990' is not YYYY-MM-DD"),
    ("1,Ann,Lee,1990-02-30,,\n", r"line 2: field birth_date: '1990-02-30'"),
    ("1,Ann,Lee,,,\n1,Bob,Lee,,,\n", r"line 3: field record_id: duplicate '1'"),
    ("1,Ann,Lee,,,\n,Bob,Lee,,,\n", r"line 3: field record_id: empty"),
    ("1,Ann,Lee,,,,,\n", r"line 2: more values than header columns"),
])
def test_bad_rows_name_the_line_and_the_field(tmp_path, rows, message):
    path = write(tmp_path, HEADER + rows)
    with pytest.raises(CsvError, match=message) as info:
        list(read_records(path))
    assert str(path) in str(info.value)


def test_missing_columns_are_reported(tmp_path):
    with pytest.raises(CsvError, match="missing column"):
        list(read_records(write(tmp_path, "id,given_name\n1,Ann\n")))
    with pytest.raises(CsvError, match=r"missing column.*first"):
        list(read_records(write(tmp_path, HEADER), {"given_name": "first"}))
