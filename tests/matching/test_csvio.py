from datetime import date

import pytest

from mpi.matching.csvio import BadValues, CsvError, parse_mapping, read_records

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


def test_a_bad_value_costs_the_record_that_value_not_the_record(tmp_path):
    """FEBRL3 has 35 dates like 1955-11-92; each used to stop the whole command."""
    path = write(tmp_path, HEADER + "1,Ann,Lee,03/02/1990,,\n2,Bob,Lee,1955-11-92,,\n"
                 "3,Cy,Lee,8929-01-01,,\n4,Di,Lee,1849-12-31,,\n5,Ed,Lee,1990-02-03,,\n"
                 f"6,{'F' * 501},Lee,1990-02-30,,\n")
    bad = BadValues()
    records = list(read_records(path, bad=bad, today=date(2026, 1, 1)))
    assert [r.record_id for r in records] == ["1", "2", "3", "4", "5", "6"]
    assert [r.birth_date for r in records] == [None] * 4 + [date(1990, 2, 3), None]
    assert records[5].given_name is None
    assert bad.counts == {"birth_date": 5, "given_name": 1}
    assert bad.lines["birth_date"] == [2, 3, 4, 5, 7]
    assert dict(bad.reasons["birth_date"]) == {"not YYYY-MM-DD": 1, "impossible date": 2,
                                               "in the future": 1, "before 1850-01-01": 1}
    summary = "\n".join(bad.summary(str(path)))
    assert "field birth_date: 5 value(s) dropped" in summary
    assert "first at line(s) 2, 3, 4, 5, 7" in summary
    assert "1955-11-92" not in summary and "FFF" not in summary  # never the values


def test_bad_values_add_up_across_batches():
    first, second = BadValues(), BadValues()
    for line in range(2, 6):
        first.drop("birth_date", line, "impossible date")
    for line in range(10, 14):
        second.drop("birth_date", line, "in the future")
    first.merge(second)
    assert first.counts["birth_date"] == 8
    assert first.lines["birth_date"] == [2, 3, 4, 5, 10]


@pytest.mark.parametrize("rows, message", [
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
