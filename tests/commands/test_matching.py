"""End to end through ``mpi`` on small CSV files."""

import csv
import json

from mpi.cli import main
from mpi.matching.model import Model

ROWS = """record_id,given_name,family_name,birth_date,sex,address_line,postal_code,ssn,person
a1,William,Okonkwo,1980-05-17,M,12 Harbour Street,01109,123-45-6789,P1
a2,Bill,Okonkwo,1980-05-17,M,12 Harbour St,01109,,P1
a3,Wiliam,Okonkwo,1980-17-05,,,,123456789,P1
b1,Maria,Nguyen,1950-01-01,F,9 Elm Road,02118,987-65-4321,P2
b2,Mary,Nguyen,1950-01-01,F,9 Elm Rd,02118,987654321,P2
c1,Zoltan,Kovacs,1971-03-09,M,1 Main Street,90210,555-11-2222,P3
"""


def read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_dedupe(tmp_path, capsys):
    src = tmp_path / "in.csv"
    src.write_text(ROWS.replace("1980-17-05", "1980-05-17"))
    out = tmp_path / "clusters.csv"
    assert main(["dedupe", str(src), "--output", str(out), "--no-progress"]) == 0
    clusters = {r["record_id"]: r["cluster_id"] for r in read(out)}
    assert clusters == {"a1": "a1", "a2": "a1", "a3": "a1", "b1": "b1", "b2": "b1", "c1": "c1"}
    assert "6 records -> 3 clusters" in capsys.readouterr().err


def test_a_bad_value_is_dropped_and_reported_and_its_record_matched(tmp_path, capsys):
    src = tmp_path / "in.csv"
    src.write_text(ROWS)  # line 4 has the impossible birth date 1980-17-05
    assert main(["dedupe", str(src), "--output", str(tmp_path / "o.csv"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "field birth_date: 1 value(s) dropped (impossible date 1); first at line(s) 4" in err
    assert "1980-17-05" not in err
    assert len(read(tmp_path / "o.csv")) == 6  # every record was matched


def test_a_bad_row_still_exits_2_with_line_and_field(tmp_path, capsys):
    src = tmp_path / "in.csv"
    src.write_text(ROWS + ROWS.splitlines()[1] + "\n")  # the first record's id again
    assert main(["dedupe", str(src), "--output", str(tmp_path / "o.csv"), "--no-progress"]) == 2
    assert "field record_id: duplicate" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_link_with_column_mapping(tmp_path):
    left = tmp_path / "a.csv"
    left.write_text(ROWS.replace("1980-17-05", "1980-05-17"))
    right = tmp_path / "b.csv"
    right.write_text("id,first,surname,birth_date,ssn\nx,Bill,Okonkwo,1980-05-17,123456789\n"
                     "y,Mary,Nguyen,1950-01-01,512654321\nz,Ann,Lee,1999-09-09,\n")
    out = tmp_path / "pairs.csv"
    assert main(["link", str(left), str(right), "--output", str(out), "--no-progress",
                 "--map", "record_id=id,given_name=first,family_name=surname"]) == 2  # a.csv
    # Mapping applies to both files: give the left file the same layout.
    left.write_text("id,first,surname,birth_date,ssn\na1,William,Okonkwo,1980-05-17,123-45-6789\n"
                    "b1,Maria,Nguyen,1950-01-01,512-65-4321\n")
    assert main(["link", str(left), str(right), "--output", str(out), "--no-progress",
                 "--map", "record_id=id,given_name=first,family_name=surname"]) == 0
    pairs = read(out)
    assert {(p["left_id"], p["right_id"]) for p in pairs} == {("a1", "x"), ("b1", "y")}
    assert all(float(p["probability"]) >= 0.95 and p["reason"] for p in pairs)


def test_link_holds_twins_for_review_unless_told_not_to(tmp_path, capsys):
    header = "record_id,given_name,family_name,birth_date,address_line,postal_code,phone,ssn\n"
    left = tmp_path / "a.csv"
    left.write_text(header + "a1,Chidi,Okonkwo,1980-05-17,12 Harbour Street,01109,4135550101,"
                             "111-22-3333\n")
    right = tmp_path / "b.csv"
    right.write_text(header + "b1,Amara,Okonkwo,1980-05-17,12 Harbour Street,01109,4135550101,"
                              "444-55-6666\n")
    out, reviews = tmp_path / "pairs.csv", tmp_path / "reviews.csv"
    assert main(["link", str(left), str(right), "--output", str(out), "--reviews",
                 str(reviews), "--no-progress"]) == 0
    assert read(out) == []
    (held,) = read(reviews)
    assert (held["left_id"], held["right_id"]) == ("a1", "b1")
    assert float(held["probability"]) >= 0.95 and held["reason"]
    err = capsys.readouterr().err
    assert "0 pairs at probability >= 0.95" in err and "1 held for review" in err
    assert main(["link", str(left), str(right), "--output", str(out), "--no-progress",
                 "--no-twin-guard"]) == 0
    assert [(p["left_id"], p["right_id"]) for p in read(out)] == [("a1", "b1")]
    assert "1 pairs at probability >= 0.95" in capsys.readouterr().err


def test_train_and_use_the_trained_model(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text(ROWS.replace("1980-17-05", "1980-05-17"))
    model_path = tmp_path / "model.json"
    assert main(["train", "--from-csv", str(src), "--output", str(model_path), "--name", "t",
                 "--u-pairs", "500", "--no-progress"]) == 0
    model = Model.load(model_path)
    assert model.version.startswith("t-")
    out = tmp_path / "clusters.csv"
    assert main(["dedupe", str(src), "--output", str(out), "--model", str(model_path),
                 "--no-progress"]) == 0
    assert len(read(out)) == 6


def test_blocking_report_with_labels(tmp_path, capsys):
    src = tmp_path / "in.csv"
    src.write_text(ROWS.replace("1980-17-05", "1980-05-17"))
    assert main(["blocking", "report", str(src), "--labels", "person", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["records"] == 6 and report["true_pairs"] == 4
    assert report["pair_completeness"] == 1.0
    assert report["candidates_max"] >= report["candidates_p50"] >= 1
    assert main(["blocking", "report", str(src), "--labels", "nope"]) == 2


def test_blocking_report_shows_what_the_keys_miss(tmp_path, capsys):
    """Two records of P1 that share nothing a key uses: the report says what they lack."""
    src = tmp_path / "in.csv"
    src.write_text("record_id,given_name,family_name,birth_date,address_line,ssn,person\n"
                   "a1,William,Okonkwo,1980-05-17,,,P1\n"
                   "a2,Wiliam,Okonkow,,12 Harbour Street,,P1\n"
                   "b1,Maria,Nguyen,1950-01-01,,,P2\n")
    assert main(["blocking", "report", str(src), "--labels", "person", "--json",
                 "--show-missed", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pair_completeness"] == 0.0 and report["missed_pairs"] == 1
    assert report["missed_without"] == {"address_line": 1, "birth_date": 1, "middle_name": 1,
                                        "phone": 1, "postal_code": 1, "ssn": 1}
    assert report["missed_examples"] == [{
        "left": "a1", "right": "a2",
        "left_has": ["birth_date", "family_name", "given_name"],
        "right_has": ["address_line", "family_name", "given_name"]}]
    assert main(["blocking", "report", str(src), "--labels", "person",
                 "--show-missed", "5"]) == 0
    assert "missed: a1 (birth_date, family_name, given_name) ~ a2" in capsys.readouterr().out


def test_missing_file_exits_2(tmp_path, capsys):
    assert main(["dedupe", str(tmp_path / "nope.csv"), "--output", "x.csv"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_placeholders_option_and_its_errors(tmp_path, capsys):
    src = tmp_path / "in.csv"
    src.write_text(ROWS)
    bad = tmp_path / "bad.json"
    bad.write_text('{"nmae": []}')
    out = tmp_path / "o.csv"
    assert main(["dedupe", str(src), "--output", str(out), "--no-progress",
                 "--placeholders", str(bad)]) == 2
    assert "unknown placeholder field" in capsys.readouterr().err
    ours = tmp_path / "ours.json"
    ours.write_text('{"name": ["Okonkwo"]}')  # as if the site's clerks typed it for "unknown"
    try:
        assert main(["dedupe", str(src), "--output", str(out), "--no-progress",
                     "--placeholders", str(ours)]) == 0
    finally:
        from mpi.matching import placeholders

        placeholders.use(None)
    assert len(read(out)) == 6
