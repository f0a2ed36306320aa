from datetime import date

import pytest

from mpi.matching.record import MatchRecord, normalise_text, prepare
from tests.matching.helpers import prep


def test_match_record_is_immutable_and_flat():
    r = MatchRecord("x")
    assert r.given_name is None and r.identifiers == ()
    with pytest.raises(AttributeError):
        r.given_name = "Ann"  # type: ignore[misc]


def test_normalisation_strips_case_accents_and_punctuation():
    assert normalise_text("  José-María O'Neil ") == "jose maria oneil"
    assert normalise_text(None) == ""


@pytest.mark.parametrize("value", [
    "Smith", "  O'Brien-Smith  ", "MÜLLER", "José", "Ångström", "ﬁeld", "Straße", "İstanbul",
    "Ωmega", "ß", "Dž", "\uff11\uff12\uff13 Main St", "ÆRØ", "e\u0301", "\u00a0Ann\u2019s", "",
])
def test_normalisation_is_the_decompose_and_strip_it_always_was(value):
    """The ASCII fast path and the cache change nothing: the same text as NFKD of the
    case-folded value with its combining marks dropped, for any input."""
    import re
    import unicodedata

    decomposed = unicodedata.normalize("NFKD", value.casefold())
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    expected = re.sub(r"[^0-9a-z]+", " ", stripped.replace("'", "")).strip()
    assert normalise_text(value) == expected
    assert normalise_text(value) == expected  # (cached)


def test_prepare_normalises_once():
    p = prep(given_name="Bill", family_name="Smith-Jones", phone="+1 (413) 555-0101",
             ssn="123-45-6789", sex="F", birth_date=date(1980, 1, 2),
             identifiers=(("urn:mrn:A", " MRN-1 "),))
    assert p.given == "bill" and "william" in p.given_forms
    assert p.family == "smith jones" and p.family_parts == {"smith", "jones"}
    assert p.family_nysiis and p.family_meta
    assert p.phone == "4135550101" and p.ssn == "123456789" and p.sex == "f"
    assert p.dob == "19800102"
    assert p.identifiers == {"urn:mrn:a": frozenset({"mrn-1"})}
    assert prepare(p) is p


def test_missing_values_prepare_to_empty():
    p = prepare(MatchRecord("x"))
    assert (p.given, p.family, p.dob, p.ssn, p.phone, p.given_forms) == ("", "", "", "", "",
                                                                         frozenset())
