"""ITI-9 PIX Query and ITI-21 PDQ over a real MLLP socket; every RSP strictly validated."""

from __future__ import annotations

from mpi.wiring import Services

from .conftest import (
    LAB,
    ST_MARYS,
    adt,
    pdq_query,
    pid,
    pix_query,
    register,
    segments,
    strictly_valid,
)

MRN = f"^^^STMARYS&{ST_MARYS}&ISO"


def _load(services: Services, listener):  # type: ignore[no-untyped-def]
    register(services)
    mllp = listener()
    mllp.exchange(adt("A01", pid("MRN1", ssn="123-45-6789"), control_id="F1"))
    mllp.exchange(adt("A01", pid("LAB1", ssn="123-45-6789", authority=f"LAB&{LAB}&ISO"),
                      control_id="F2", application="LABSYS", facility="LAB"))
    mllp.exchange(adt("A01", pid("MRN2", family="NOBODY", given="NORA", birth="1990",
                                 sex="F"), control_id="F3"))
    return mllp


def _answer(mllp, message: str) -> dict[str, list[list[str]]]:  # type: ignore[no-untyped-def]
    text = mllp.exchange(message)
    strictly_valid(text)
    return segments(text)


def test_pix_query_returns_the_persons_other_identifiers(services: Services, listener):
    mllp = _load(services, listener)
    answer = _answer(mllp, pix_query(f"MRN1{MRN}", tag="Q-1"))
    assert answer["MSA"][0][1:3] == ["AA", "Q1"]
    assert answer["QAK"][0][1:3] == ["Q-1", "OK"]
    assert answer["QPD"][0][3] == f"MRN1{MRN}"  # echoed
    ids = answer["PID"][0][3].split("~")
    values = {i.split("^")[0] for i in ids}
    assert "MRN1" not in values  # never the one asked about
    assert {"LAB1", "123-45-6789"} <= values
    assert any(i.endswith("^PI") and "urn:mpi:person" in i for i in ids)  # the enterprise id
    # Only the domains asked for (QPD-4).
    only_lab = _answer(mllp, pix_query(f"MRN1{MRN}", domains=f"^^^LAB&{LAB}&ISO"))
    assert only_lab["PID"][0][3] == f"LAB1^^^LAB&{LAB}&ISO^MR"
    # Audited as a search by the sender, through HL7.
    from mpi.domain.audit import Actor
    rows = services.audit_trail.by_user("st-marys-adt", Actor(user_id="t"), before=None,
                                        limit=50).items
    assert any(r.action == "patient:record:search" and r.new_value["via"] == "hl7"
               for r in rows)
    # By namespace alone, as many senders write it.
    assert _answer(mllp, pix_query("MRN1^^^STMARYS", domains="^^^LAB"))["PID"][0][3] == \
        f"LAB1^^^LAB&{LAB}&ISO^MR"


def test_pix_query_not_found_and_unknown_domains(services: Services, listener):
    mllp = _load(services, listener)
    # Known identifier, nothing in the domain asked for: AA, NF, no PID.
    answer = _answer(mllp, pix_query(f"MRN2{MRN}", domains=f"^^^LAB&{LAB}&ISO"))
    assert (answer["MSA"][0][1], answer["QAK"][0][2]) == ("AA", "NF") and "PID" not in answer
    # An identifier nobody holds (ITI-9 case 3): AE, ERR 204 on QPD-3.1.
    answer = _answer(mllp, pix_query(f"NOPE{MRN}"))
    assert (answer["MSA"][0][1], answer["QAK"][0][2]) == ("AE", "AE")
    assert answer["ERR"][0][2:4] == ["QPD^1^3^1^1", "204^Unknown key identifier^HL70357"]
    # An assigning authority nobody registered, in QPD-3 and in QPD-4.
    answer = _answer(mllp, pix_query("MRN1^^^NOWHERE"))
    assert answer["ERR"][0][2] == "QPD^1^3^1^4" and answer["MSA"][0][1] == "AE"
    answer = _answer(mllp, pix_query(f"MRN1{MRN}", domains=f"^^^LAB&{LAB}&ISO~^^^&9.9.9&ISO"))
    assert answer["ERR"][0][2] == "QPD^1^4^2" and answer["ERR"][0][3].startswith("204^")
    # A sender that is not registered gets no answer but a refusal.
    answer = _answer(mllp, pix_query(f"MRN1{MRN}", application="SPY"))
    assert answer["MSA"][0][1] == "AR" and "PID" not in answer


def test_pdq_finds_by_demographics_with_confidence(services: Services, listener):
    mllp = _load(services, listener)
    answer = _answer(mllp, pdq_query("@PID.5.1.1^EVERYMAN~@PID.5.2^ADAM~@PID.7^19610615"
                                     "~@PID.8^M"))
    assert answer["MSA"][0][1] == "AA" and answer["QAK"][0][2] == "OK"
    assert answer["QAK"][0][4:7] == ["2", "2", "0"]  # hits, in this payload, remaining
    assert [p[5].split("^")[0] for p in answer["PID"]] == ["EVERYMAN", "EVERYMAN"]
    assert [p[1] for p in answer["PID"]] == ["1", "2"]
    confidence = [float(q[1]) for q in answer["QRI"]]
    assert len(confidence) == 2 and all(0.9 < c <= 1.0 for c in confidence)
    # Partial birth dates, a prefix of the name, mother's maiden name absent: exact rules.
    assert len(_answer(mllp, pdq_query("@PID.7^1990~@PID.5.1^NOB"))["PID"]) == 1
    assert "PID" not in _answer(mllp, pdq_query("@PID.5.1^EVERYMAN~@PID.7^1990"))
    # By identifier and its domain; with only the domains asked for in PID-3.
    answer = _answer(mllp, pdq_query(f"@PID.3.1^LAB1~@PID.3.4.2^{LAB}~@PID.3.4.3^ISO",
                                     domains=f"^^^STMARYS&{ST_MARYS}&ISO"))
    assert answer["QAK"][0][2] == "NF"  # the lab's record carries no St Mary's number
    answer = _answer(mllp, pdq_query(f"@PID.3.1^LAB1~@PID.3.4.2^{LAB}~@PID.3.4.3^ISO",
                                     domains=f"^^^LAB&{LAB}&ISO"))
    assert answer["PID"][0][3] == f"LAB1^^^LAB&{LAB}&ISO^MR"
    # What cannot be searched is named.
    answer = _answer(mllp, pdq_query("@PID.18^ACCT1"))
    assert answer["MSA"][0][1] == "AE" and answer["ERR"][0][2] == "QPD^1^3^1^1"
    answer = _answer(mllp, pdq_query("@PID.7^19611399"))
    assert answer["ERR"][0][3].startswith("102^")


def test_pdq_continues_and_cancels(services: Services, listener):
    mllp = _load(services, listener)
    conn = mllp.connect()
    first = segments(mllp.exchange(pdq_query("@PID.5.1^EVERYMAN", quantity="1^RD",
                                             tag="PAGE"), conn))
    assert len(first["PID"]) == 1 and first["QAK"][0][4:7] == ["2", "1", "1"]
    pointer = first["DSC"][0][1]
    second = mllp.exchange(pdq_query("@PID.5.1^EVERYMAN", quantity="1^RD", tag="PAGE",
                                     pointer=pointer, control_id="P2"), conn)
    strictly_valid(second)
    second_seg = segments(second)
    assert len(second_seg["PID"]) == 1 and "DSC" not in second_seg
    assert second_seg["PID"][0][3] != first["PID"][0][3]
    # A pointer is used once; QCN^J01 cancels an open one.
    third = segments(mllp.exchange(pdq_query("@PID.5.1^EVERYMAN", quantity="1^RD",
                                             tag="PAGE2", control_id="P3"), conn))
    cancel = mllp.exchange("\r".join([
        "MSH|^~\\&|ADT1|STMARYS|MPI|HOSP|20261204101500||QCN^J01^QCN_J01|C1|P|2.5",
        "QID|PAGE2|IHE PDQ Query"]), conn)
    strictly_valid(cancel)
    assert segments(cancel)["MSA"][0][1:3] == ["AA", "C1"]
    gone = segments(mllp.exchange(pdq_query("@PID.5.1^EVERYMAN", quantity="1^RD",
                                            tag="PAGE2", pointer=third["DSC"][0][1],
                                            control_id="P4"), conn))
    assert gone["MSA"][0][1] == "AE" and gone["ERR"][0][2] == "DSC^1^1"


def test_a_continuation_pointer_is_answered_by_any_listener_once(services: Services,
                                                                 listener):
    """Pointers live in the database: a second listener on it (another instance, or the
    first one restarted) answers the next page. The continuation must repeat its query,
    and expired pointers are refused and pruned."""
    first_listener = _load(services, listener)
    mllp = first_listener
    mllp.exchange(adt("A01", pid("MRN3", family="EVERYMAN", given="ADAM"), control_id="F4"))
    page = segments(mllp.exchange(pdq_query("@PID.5.1^EVERYMAN", quantity="1^RD",
                                            tag="ANY")))
    pointer = page["DSC"][0][1]
    other = listener()
    changed = segments(other.exchange(pdq_query("@PID.5.1^NOBODY", quantity="1^RD",
                                                tag="ANY", pointer=pointer,
                                                control_id="X1")))
    assert changed["MSA"][0][1] == "AE" and changed["ERR"][0][2] == "DSC^1^1"  # used up
    page = segments(mllp.exchange(pdq_query("@PID.5.1^EVERYMAN", quantity="1^RD",
                                            tag="ANY", control_id="X2")))
    second = other.exchange(pdq_query("@PID.5.1^EVERYMAN", quantity="1^RD", tag="ANY",
                                      pointer=page["DSC"][0][1], control_id="X3"))
    strictly_valid(second)
    assert segments(second)["MSA"][0][1] == "AA"
    assert segments(second)["PID"][0][3] != page["PID"][0][3]
    # Expired pointers are refused, and pruned with the acknowledgements.
    from datetime import timedelta

    from mpi.storage.models import Hl7ContinuationRow

    page = segments(mllp.exchange(pdq_query("@PID.5.1^EVERYMAN", quantity="1^RD",
                                            tag="OLD", control_id="X4")))
    Hl7ContinuationRow.update(expires_at=services.work.clock() - timedelta(seconds=1)
                              ).execute()
    late = segments(other.exchange(pdq_query("@PID.5.1^EVERYMAN", quantity="1^RD",
                                             tag="OLD", pointer=page["DSC"][0][1],
                                             control_id="X5")))
    assert late["MSA"][0][1] == "AE"
    segments(mllp.exchange(pdq_query("@PID.5.1^EVERYMAN", quantity="1^RD", tag="NEW",
                                     control_id="X6")))
    Hl7ContinuationRow.update(expires_at=services.work.clock() - timedelta(seconds=1)
                              ).execute()
    services.senders.prune_receipts(30)
    assert Hl7ContinuationRow.select().count() == 0
    # A query tag too long to keep with a pointer is refused, naming QPD-2.
    long_tag = segments(mllp.exchange(pdq_query("@PID.5.1^EVERYMAN", quantity="1^RD",
                                                tag="T" * 200, control_id="X7")))
    assert long_tag["MSA"][0][1] == "AE" and long_tag["ERR"][0][2] == "QPD^1^2"
    assert long_tag["ERR"][0][3].startswith("102")


def test_pdq_is_fuzzy_only_when_asked_by_a_confidence_threshold(services: Services, listener):
    mllp = _load(services, listener)
    mllp.exchange(adt("A01", pid("MRN7", family="JOHNSTON", given="KATHERINE",
                                 birth="19750304", sex="F"), control_id="F7"))
    # A nickname finds nothing exactly (KATE is no prefix of KATHERINE) ...
    typo = "@PID.5.1.1^JOHNSTON~@PID.5.2^KATE~@PID.7^19750304"
    assert "PID" not in _answer(mllp, pdq_query(typo))
    # ... and the record when QPD-4 asks for candidates of at least that probability.
    fuzzy = pdq_query(typo).replace("QPD|IHE PDQ Query|T2|" + typo + "|",
                                    "QPD|IHE PDQ Query|T2|" + typo + "|0.5|")
    answer = _answer(mllp, fuzzy)
    assert [p[5].split("^")[0] for p in answer["PID"]] == ["JOHNSTON"]
    assert float(answer["QRI"][0][1]) >= 0.5
    # A threshold no candidate reaches finds nothing; a bad one is named.
    assert "PID" not in _answer(mllp, fuzzy.replace("|0.5|", "|1|"))
    bad = _answer(mllp, fuzzy.replace("|0.5|", "|high|"))
    assert bad["MSA"][0][1] == "AE" and bad["ERR"][0][2] == "QPD^1^4"
    # Too little to match on (a city alone) is refused in fuzzy mode, fine in exact mode.
    city = "@PID.11.3^GREENSBORO"
    assert _answer(mllp, pdq_query(city))["QAK"][0][2] == "OK"
    refused = _answer(mllp, pdq_query(city).replace(city + "|", city + "|0.5|"))
    assert refused["ERR"][0][2] == "QPD^1^3" and refused["ERR"][0][3].startswith("101^")
