"""Placeholder values are missing values, in every path that prepares a record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpi.matching import placeholders
from mpi.matching.blocking import blocking_keys
from mpi.matching.placeholders import Placeholders, impossible_ssn
from mpi.matching.scoring import score
from tests.matching.helpers import prep, rec


@pytest.fixture(autouse=True)
def _shipped():
    placeholders.use(None)
    yield
    placeholders.use(None)


@pytest.mark.parametrize(("changes", "blank"), [
    ({"given_name": "Baby", "family_name": "Boy"}, ("given", "family")),
    ({"given_name": "BABY GIRL"}, ("given",)),
    ({"family_name": "Resident"}, ("family",)),
    ({"given_name": "Lady of the House"}, ("given",)),
    ({"given_name": "John", "family_name": "Doe"}, ("given", "family")),
    ({"given_name": "Unknown", "middle_name": "unk"}, ("given", "middle")),
    ({"postal_code": "00000"}, ("postcode",)),
    ({"postal_code": "999 99"}, ("postcode",)),
    ({"address_line": "No fixed abode", "city": "Unknown"}, ("address", "city")),
    ({"phone": "(000) 000-0000"}, ("phone",)),
    ({"ssn": "000-00-0000"}, ("ssn",)),
    ({"ssn": "999-99-9999"}, ("ssn",)),
    ({"ssn": "666-12-3456"}, ("ssn",)),   # never issued: area 666
    ({"ssn": "123-00-4567"}, ("ssn",)),   # group 00
    ({"ssn": "123-45-0000"}, ("ssn",)),   # serial 0000
])
def test_placeholders_are_blank_after_preparing(changes, blank):
    prepared = prep(**changes)
    for attribute in blank:
        assert getattr(prepared, attribute) == "", attribute
    assert prepared.dob  # the rest stays


def test_real_values_stay():
    prepared = prep(given_name="Ann", family_name="Doe", postal_code="01109",
                    ssn="123-45-6789")
    assert (prepared.given, prepared.family, prepared.postcode, prepared.ssn) == (
        "ann", "doe", "01109", "123456789")
    assert not impossible_ssn("123456789") and impossible_ssn("900123456")


def test_strangers_sharing_placeholders_are_not_evidence_of_anything():
    """Two unknown newborns of one ward: before, "Baby Boy" + postal code 00000 agreed."""
    a = rec("a", given_name="Baby", family_name="Boy", postal_code="00000", ssn=None,
            phone=None, address_line="Unknown", birth_date=None)
    b = rec("b", given_name="Baby", family_name="Boy", postal_code="00000", ssn=None,
            phone=None, address_line="Unknown", birth_date=None)
    result = score(a, b)
    assert result.weight == pytest.approx(score(
        rec("a", given_name=None, family_name=None, postal_code=None, ssn=None, phone=None,
            address_line=None, birth_date=None),
        rec("b", given_name=None, family_name=None, postal_code=None, ssn=None, phone=None,
            address_line=None, birth_date=None)).weight)
    assert not [k for k in blocking_keys(prep(**{f: getattr(a, f) for f in (
        "given_name", "family_name", "postal_code", "address_line")}, ssn=None, phone=None,
        birth_date=None)) if "boy" in k or "00000" in k]


def test_a_file_replaces_the_list(tmp_path: Path):
    path = tmp_path / "ours.json"
    path.write_text(json.dumps({"_about": "site list", "name": ["Inpatient"],
                                "postal_code": ["01109"]}))
    placeholders.use(Placeholders.load(path))
    prepared = prep(given_name="Inpatient", family_name="Baby", postal_code="01109")
    assert (prepared.given, prepared.family, prepared.postcode) == ("", "baby", "")


def test_a_value_prepared_under_one_list_is_prepared_again_under_another(tmp_path: Path):
    """Names and places are normalised once per value and per list in force: a value
    met under the shipped list (a placeholder there) is real under a site's own list
    that leaves it out, and the other way round, in one process."""
    fields = dict(given_name="Baby", family_name="Boy", city="Unknown", postal_code="01109")
    shipped = prep(**fields)
    assert (shipped.given, shipped.family, shipped.city, shipped.postcode) == (
        "", "", "", "01109")
    path = tmp_path / "ours.json"
    path.write_text(json.dumps({"name": ["Inpatient"], "postal_code": ["01109"]}))
    placeholders.use(Placeholders.load(path))
    ours = prep(**fields)
    assert (ours.given, ours.family, ours.city, ours.postcode) == (
        "baby", "boy", "unknown", "")
    assert (ours.given_nysiis, ours.family_nysiis) == ("BABY", "BY")
    assert prep(given_name="Inpatient").given == ""
    placeholders.use(None)
    again = prep(**fields)
    assert (again.given, again.family, again.city, again.postcode, again.given_nysiis) == (
        "", "", "", "01109", "")
    assert prep(given_name="Inpatient").given == "inpatient"


@pytest.mark.parametrize(("content", "message"), [
    ("[1]", "JSON object"), ('{"names": []}', "unknown placeholder field"),
    ('{"name": "x"}', "list of strings"), ("{", "not JSON")])
def test_bad_files_are_refused_with_a_reason(tmp_path: Path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        Placeholders.load(path)


def test_the_service_setting_is_checked_at_start(tmp_path: Path):
    from mpi import config

    bad = tmp_path / "bad.json"
    bad.write_text('{"nmae": []}')
    with pytest.raises(config.ConfigError, match="MATCHING_PLACEHOLDERS_PATH"):
        config.load({"MATCHING_PLACEHOLDERS_PATH": str(bad)})
    good = tmp_path / "good.json"
    good.write_text('{"name": ["Inpatient"]}')
    assert config.load({"MATCHING_PLACEHOLDERS_PATH": str(good)}
                       ).matching_placeholders_path == good
