"""ITI-8 Patient Identity Feed over a real MLLP socket: create, update, merge and undo,
resend, and every kind of refusal, each acknowledged with an ACK that passes hl7apy's
strict v2.5 validation."""

from __future__ import annotations

import socket

import pytest

from mpi.domain.audit import Actor
from mpi.domain.errors import InvalidInput
from mpi.storage.models import PersonMergeRow
from mpi.wiring import Services

from .conftest import LAB, ST_MARYS, adt, pid, read_frame, register, segments, strictly_valid

ADMIN = Actor(user_id="test-admin")


def _record(services: Services, source: str, source_id: str):  # type: ignore[no-untyped-def]
    patient_id = services.patients.id_of(source, source_id)
    assert patient_id is not None, (source, source_id)
    return services.patients.get(patient_id, ADMIN)


def _ack(answer: str) -> tuple[str, str, list[list[str]]]:
    seg = segments(answer)
    strictly_valid(answer)
    return seg["MSA"][0][1], seg["MSA"][0][2], seg.get("ERR", [])


def test_a01_creates_the_record_with_every_pid_field_mapped(services: Services, listener):
    register(services)
    mllp = listener()
    message = adt("A01", pid("MRN1001", ssn="123-45-6789", more=f"X9^^^LAB&{LAB}&ISO^PI")
                  .replace("|M|||123-45-6789", "|M|||123-45-6789|||||Y|2||||20250101|Y")
                  .replace("||19610615|", "|SMITH^^^^^^M|19610615|"),
                  control_id="MSG-1")
    status, control, errors = _ack(mllp.exchange(message))
    assert (status, control, errors) == ("AA", "MSG-1", [])
    record = _record(services, "st-marys", "MRN1001")
    assert record.names[0].family == "EVERYMAN" and record.names[0].given == ["ADAM", "A"]
    assert record.names[0].use == "official"
    assert record.mothers_maiden_name == "SMITH"
    assert str(record.birth_date) == "1961-06-15" and record.gender == "male"
    address = record.addresses[0]
    assert (address.line, address.city, address.state, address.postal_code, address.country,
            address.use) == (["2222 HOME STREET"], "GREENSBORO", "NC", "27401-1020", "USA",
                             "home")
    assert [(t.value, t.use) for t in record.telecom] == [("+1 555 5552004", "home"),
                                                         ("+1 555 5553000", "work")]
    systems = {(i.system, i.value, i.type) for i in record.identifiers}
    assert (f"urn:oid:{ST_MARYS}", "MRN1001", "MR") in systems
    assert ("urn:oid:2.16.840.1.113883.4.1", "123-45-6789", "SS") in systems
    assert (f"urn:oid:{LAB}", "X9", "PI") in systems
    assert record.marital_status == "M"
    assert (record.multiple_birth, record.multiple_birth_order) == (True, 2)
    assert record.deceased is True and str(record.deceased_date) == "2025-01-01"
    assert record.person_id is not None
    # Audited with the sender as the actor, and in the change feed.
    trail = services.audit_trail.for_patient(record.id, ADMIN, before=None, limit=50)
    assert {e.actor for e in trail.items if e.action == "patient:record:create"} == \
        {"st-marys-adt"}
    feed = services.change_feed.read(ADMIN, after=0, limit=50)
    assert any(e.entity_id == record.id and e.type == "PatientCreated"
               for e in feed.events)


def test_a08_updates_and_a_resend_changes_nothing(services: Services, listener):
    register(services)
    mllp = listener()
    conn = mllp.connect()
    first = mllp.exchange(adt("A04", pid("MRN2"), control_id="C-1"), conn)
    assert _ack(first)[0] == "AA"
    update = adt("A08", pid("MRN2", family="EVERYWOMAN", sex="F", birth="1961"),
                 control_id="C-2")
    acked = mllp.exchange(update, conn)
    assert _ack(acked)[:2] == ("AA", "C-2")
    record = _record(services, "st-marys", "MRN2")
    assert (record.version, record.names[0].family, record.gender) == (2, "EVERYWOMAN", "female")
    assert (record.birth_date, record.birth_date_partial) == (None, "1961")
    # The same MSH-10 again: the very same acknowledgement, and no new version.
    again = mllp.exchange(update, conn)
    assert again == acked
    assert _record(services, "st-marys", "MRN2").version == 2
    # A new control id with the same content is a new message.
    assert _ack(mllp.exchange(update.replace("C-2", "C-3"), conn))[0] == "AA"
    assert _record(services, "st-marys", "MRN2").version == 3


def test_two_senders_records_of_one_person_are_linked(services: Services, listener):
    register(services)
    mllp = listener()
    assert _ack(mllp.exchange(adt("A01", pid("MRN3", ssn="111-22-3333"), control_id="S1")))[0] \
        == "AA"
    lab = adt("A04", pid("L-3", ssn="111-22-3333", authority=f"LAB&{LAB}&ISO"),
              control_id="S1", application="LABSYS", facility="LAB")  # same MSH-10: other sender
    assert _ack(mllp.exchange(lab))[0] == "AA"
    assert _record(services, "st-marys", "MRN3").person_id == \
        _record(services, "lab", "L-3").person_id


def test_a40_merges_the_persons_undoably(services: Services, listener):
    register(services)
    mllp = listener()
    mllp.exchange(adt("A01", pid("MRN-A", family="ALPHA", given="ANN", birth="19700101",
                                 sex="F"), control_id="M1"))
    mllp.exchange(adt("A01", pid("MRN-B", family="BETA", given="BOB", birth="19800202"),
                      control_id="M2"))
    lab = adt("A01", pid("LAB-B", family="BETA", given="BOB", birth="19800202",
                         authority=f"LAB&{LAB}&ISO"), control_id="M3", application="LABSYS",
              facility="LAB")
    mllp.exchange(lab)
    a, b = _record(services, "st-marys", "MRN-A"), _record(services, "st-marys", "MRN-B")
    lab_record = _record(services, "lab", "LAB-B")
    assert a.person_id != b.person_id == lab_record.person_id
    merge = adt("A40", pid("MRN-A", family="ALPHA", given="ANN", birth="19700101", sex="F"),
                control_id="M4", extra=f"MRG|MRN-B^^^STMARYS&{ST_MARYS}&ISO")
    assert _ack(mllp.exchange(merge)) == ("AA", "M4", [])
    merged = services.patients.get(b.id, ADMIN)
    assert merged.active is False and merged.replaced_by == a.id
    # The whole person came along (the lab's record too), as a steward's merge would.
    assert merged.person_id == a.person_id == _record(services, "lab", "LAB-B").person_id
    # The retired identifier is not fed again by mistake.
    stale = adt("A08", pid("MRN-B", family="BETA", given="BOB", birth="19800202"),
                control_id="M9")
    status, _, errors = _ack(mllp.exchange(stale))
    assert (status, errors[0][2], errors[0][3][:3]) == ("AE", "PID^1^3", "204")
    assert services.patients.get(b.id, ADMIN).active is False
    # ... and is undone as one.
    merge_row = PersonMergeRow.get()
    services.stewards.undo_merge(str(merge_row.id), ADMIN)
    assert services.patients.get(lab_record.id, ADMIN).person_id == b.person_id
    assert services.patients.get(a.id, ADMIN).person_id == a.person_id
    # Merging an unknown record is refused, naming MRG-1.
    unknown = merge.replace("MRN-B^^^", "NOPE^^^").replace("M4", "M5")
    status, _, errors = _ack(mllp.exchange(unknown))
    assert status == "AE" and errors[0][2] == "MRG^1^1" and errors[0][3].startswith("204^")


def test_refusals_name_the_field_and_the_table_0357_code(services: Services, listener):
    register(services)
    mllp = listener()
    conn = mllp.connect()

    def refused(message: str) -> tuple[str, str, str]:
        status, _, errors = _ack(mllp.exchange(message, conn))
        return status, errors[0][2], errors[0][3].split("^")[0]

    # An assigning authority nobody registered.
    assert refused(adt("A01", pid("M1", authority="ELSEWHERE&9.9.9&ISO"), control_id="E1")) \
        == ("AE", "PID^1^3", "204")
    # A namespace id the registry does not know.
    assert refused(adt("A01", pid("M1", authority="NOWHERE"), control_id="E2")) == \
        ("AE", "PID^1^3^1^4", "204")
    # The lab's domain, sent by St Mary's: not a domain this sender assigns.
    assert refused(adt("A01", pid("M1", authority=f"LAB&{LAB}&ISO"), control_id="E3")) == \
        ("AE", "PID^1^3", "204")
    # A birth date that is no date, a sex not in table 0001, no identifier at all.
    assert refused(adt("A01", pid("M1", birth="19611345"), control_id="E4")) == \
        ("AE", "PID^1^7", "102")
    assert refused(adt("A01", pid("M1", sex="Q"), control_id="E5")) == ("AE", "PID^1^8", "103")
    assert refused(adt("A01", pid("M1").replace("PID|1||M1^^^STMARYS", "PID|1||^^^STMARYS"),
                       control_id="E6")) == ("AE", "PID^1^3", "101")
    # A birth date in the future: the record model refuses it, named by field.
    assert refused(adt("A01", pid("M1", birth="20991231"), control_id="E7")) == \
        ("AE", "PID^1^7", "102")
    # Message types and events this service does not take.
    ack = mllp.exchange(adt("A01", pid("M1"), control_id="E8").replace("ADT^A01^ADT_A01",
                                                                       "ORU^R01^ORU_R01"), conn)
    assert _ack(ack)[0] == "AR" and segments(ack)["ERR"][0][3].startswith("200^")
    ack = mllp.exchange(adt("A01", pid("M1"), control_id="E9").replace("ADT^A01^ADT_A01",
                                                                       "ADT^A17^ADT_A17"), conn)
    assert _ack(ack)[0] == "AR" and segments(ack)["ERR"][0][3].startswith("201^")
    # Nothing was written by any of them, and each refusal is in the audit trail.
    assert services.patients.id_of("st-marys", "M1") is None
    refusals = services.audit_trail.by_user("st-marys-adt", ADMIN, before=None, limit=50)
    rejected = [e.new_value for e in refusals.items if e.action == "hl7:message:rejected"]
    assert len(rejected) == 9
    assert any(e["errors"][0]["location"] == "PID^1^7" and e["errors"][0]["code"] == "102"
               and e["status"] == "AE" for e in rejected)


def test_an_unknown_sender_is_refused_and_audited(services: Services, listener):
    register(services)
    mllp = listener()
    status, _, errors = _ack(mllp.exchange(adt("A01", pid("MRN9"), control_id="X1",
                                               application="ROGUE", facility="NOWHERE")))
    assert status == "AR" and errors[0][2] == "MSH^1^3" and errors[0][3].startswith("103^")
    assert services.patients.id_of("st-marys", "MRN9") is None
    rows = services.audit_trail.by_user("hl7:ROGUE^NOWHERE", ADMIN, before=None, limit=10)
    assert [e.action for e in rows.items] == ["hl7:message:rejected"]
    # A sender that may only query cannot feed.
    services.senders.add("reader", application="PORTAL", facility="STMARYS",
                         sources="st-marys", scopes=("system/Patient.rs",), actor=ADMIN)
    status, _, errors = _ack(mllp.exchange(adt("A01", pid("MRN9"), control_id="X2",
                                               application="PORTAL")))
    assert status == "AR" and "system/Patient.c" in errors[0][7]
    # The IHE IUA scopes name FHIR transactions; a v2 sender is not given one.
    with pytest.raises(InvalidInput, match="the sender cannot be registered") as refused:
        services.senders.add("iua", application="IUA", facility="STMARYS",
                             sources="st-marys", scopes=("ITI-78",), actor=ADMIN)
    assert [p.field for p in refused.value.problems] == ["scopes"]


def test_character_sets_escapes_and_newline_terminators(services: Services, listener):
    register(services)
    mllp = listener()
    latin = adt("A01", pid("MRN-L", family="MÜLLER", given="JOSÉ"), control_id="CS1",
                charset="8859/1")
    answer = mllp.exchange(latin, encoding="latin-1")
    assert _ack(answer)[0] == "AA" and answer.split("\r")[0].endswith("8859/1")
    assert _record(services, "st-marys", "MRN-L").names[0].family == "MÜLLER"
    # Escape sequences (\S\ ^, \T\ &, \F\ |, \E\ \) and \n between segments.
    escaped = adt("A01", pid("MRN-E", family="O\\T\\BRIEN\\F\\SMITH"), control_id="CS2")
    assert _ack(mllp.exchange(escaped.replace("\r", "\n")))[0] == "AA"
    assert _record(services, "st-marys", "MRN-E").names[0].family == "O&BRIEN|SMITH"
    # Bytes that are not the character set MSH-18 declares.
    bad = adt("A01", pid("MRN-U", family="MÜLLER"), control_id="CS3").encode("latin-1")
    status, _control, errors = _ack(mllp.exchange(bad, encoding="latin-1"))
    assert (status, errors[0][2], errors[0][3].split("^")[0]) == ("AR", "MSH^1^18", "102")
    assert services.patients.id_of("st-marys", "MRN-U") is None


def test_malformed_input_never_crashes_the_listener(services: Services, listener):
    register(services)
    mllp = listener()
    # No MSH: an AR acknowledgement (there is no MSH-10 to name).
    answer = mllp.exchange("PID|1||X^^^STMARYS")
    seg = segments(answer)
    assert seg["MSA"][0][1] == "AR" and seg["ERR"][0][3].startswith("100^")
    # Encoding characters that are not four distinct delimiters.
    answer = mllp.exchange("MSH|^^|ADT1|STMARYS|MPI|HOSP|2026||ADT^A01|Z1|P|2.5")
    assert segments(answer)["ERR"][0][2] == "MSH^1^2"
    # A truncated frame (the sender hangs up mid-message) and bytes without a start block:
    # the connection is closed, nothing is answered, and the listener carries on.
    conn = socket.create_connection(("127.0.0.1", mllp.port), timeout=10)
    conn.sendall(b"\x0bMSH|^~\\&|ADT1|STMARYS|MPI")
    conn.shutdown(socket.SHUT_WR)
    assert conn.recv(100) == b""
    conn.close()
    conn = socket.create_connection(("127.0.0.1", mllp.port), timeout=10)
    conn.sendall(b"GET / HTTP/1.1\r\n\r\n\x1c\r")
    assert conn.recv(100) == b""
    conn.close()
    assert _ack(mllp.exchange(adt("A01", pid("MRN-OK"), control_id="OK1")))[0] == "AA"
    # Two messages in one write are answered in order.
    conn = mllp.connect()
    conn.sendall(b"".join(b"\x0b" + adt("A01", pid(f"MRN-P{n}"), control_id=f"P{n}").encode()
                          + b"\x1c\r" for n in (1, 2)))
    assert segments(read_frame(conn).decode())["MSA"][0][2] == "P1"
    assert segments(read_frame(conn).decode())["MSA"][0][2] == "P2"


def test_a47_changes_the_records_identifier(services: Services, listener):
    register(services)
    mllp = listener()
    assert _ack(mllp.exchange(adt("A01", pid("OLD-1", family="KEYES"), control_id="K1")))[0] \
        == "AA"
    before = _record(services, "st-marys", "OLD-1")
    change = adt("A47", pid("NEW-1", family="IGNORED"), control_id="K2",
                 extra=f"MRG|OLD-1^^^STMARYS&{ST_MARYS}&ISO", structure="ADT_A30")
    assert _ack(mllp.exchange(change)) == ("AA", "K2", [])
    after = _record(services, "st-marys", "NEW-1")
    assert after.id == before.id and after.person_id == before.person_id
    assert after.names[0].family == "KEYES"  # only the identifier changed
    assert (f"urn:oid:{ST_MARYS}", "NEW-1") in {(i.system, i.value) for i in after.identifiers}
    assert (f"urn:oid:{ST_MARYS}", "OLD-1") not in {(i.system, i.value)
                                                   for i in after.identifiers}
    assert services.patients.id_of("st-marys", "OLD-1") is None


def test_an_update_changes_what_it_sends_deletes_what_it_nulls_keeps_the_rest(
        services: Services, listener):
    """HL7's rule for updates: an empty field means "no change", ``""`` means "delete";
    what PID does not carry at all (contacts, languages) stays."""
    register(services)
    mllp = listener()
    first = adt("A01", pid("UPD-1", ssn="123-45-6789").replace("||SMITH^^^^^^M|", "|")
                .replace("||19610615|", "|SMITH^^^^^^M|19610615|"), control_id="U1")
    assert _ack(mllp.exchange(first))[0] == "AA"
    before = _record(services, "st-marys", "UPD-1")
    assert before.mothers_maiden_name == "SMITH" and before.addresses and before.telecom
    # PID-5 and PID-8 sent, PID-6 deleted, everything else empty (no change).
    partial = adt("A08", f'PID|1||UPD-1^^^STMARYS&{ST_MARYS}&ISO^MR||NEWNAME^ADAM|""||F',
                  control_id="U2")
    assert _ack(mllp.exchange(partial))[0] == "AA"
    after = _record(services, "st-marys", "UPD-1")
    assert (after.names[0].family, after.gender) == ("NEWNAME", "female")
    assert after.mothers_maiden_name is None
    assert after.birth_date == before.birth_date
    assert after.addresses == before.addresses and after.telecom == before.telecom
    assert ("urn:oid:2.16.840.1.113883.4.1", "123-45-6789") in {
        (i.system, i.value) for i in after.identifiers}  # PID-19 empty: the SSN stays
    # Deleting the address and the phones.
    cleared = adt("A08", f'PID|1||UPD-1^^^STMARYS&{ST_MARYS}&ISO^MR||||||||""||""|""',
                  control_id="U3")
    assert _ack(mllp.exchange(cleared))[0] == "AA"
    gone = _record(services, "st-marys", "UPD-1")
    assert gone.addresses == [] and gone.telecom == [] and gone.names[0].family == "NEWNAME"


def test_acknowledgements_are_kept_for_the_retention_days_only(services: Services,
                                                                 listener, clock):
    register(services)
    mllp = listener()
    message = adt("A01", pid("KEEP-1"), control_id="R1")
    first = mllp.exchange(message)
    assert mllp.exchange(message) == first  # within the retention: the same ACK
    clock.advance(days=29)
    assert services.senders.prune_receipts(30) == 0
    clock.advance(days=2)
    assert services.senders.prune_receipts(30) == 1
    again = mllp.exchange(message)  # forgotten: processed again, as an update
    assert _ack(again)[0] == "AA" and again != first
    assert _record(services, "st-marys", "KEEP-1").version == 2


def test_each_message_is_counted_by_type_and_acknowledgement(services: Services, listener):
    from prometheus_client import REGISTRY  # the listener runs in this process here

    def count(kind: str, ack: str) -> float:
        return REGISTRY.get_sample_value("mpi_hl7_messages_total",
                                         {"message_type": kind, "ack": ack}) or 0.0

    def timed(kind: str) -> float:
        return REGISTRY.get_sample_value("mpi_hl7_message_duration_seconds_count",
                                         {"message_type": kind}) or 0.0

    register(services)
    mllp = listener()
    before = (count("ADT^A01", "AA"), count("ADT^A01", "AE"), count("other", "AR"),
              timed("ADT^A01"))
    assert _ack(mllp.exchange(adt("A01", pid("MRN7001"), control_id="MET-1")))[0] == "AA"
    bad = adt("A01", pid("MRN7002", birth="19611345"), control_id="MET-2")
    assert _ack(mllp.exchange(bad))[0] == "AE"
    assert segments(mllp.exchange("NOT A MESSAGE"))["MSA"][0][1] == "AR"
    after = (count("ADT^A01", "AA"), count("ADT^A01", "AE"), count("other", "AR"),
             timed("ADT^A01"))
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1, 2]


def test_message_type_labels_stay_few_and_free_of_data():
    from mpi.metrics import hl7_type

    assert hl7_type("ADT^A01^ADT_A01") == "ADT^A01"
    assert hl7_type("qbp^q22") == "QBP^Q22"
    assert hl7_type("SMITH^JOHN") == "other"
    assert hl7_type(None) == "other" and hl7_type("") == "other"


def test_the_test_client_reads_two_answers_that_arrive_in_one_read():
    """Pipelined answers can reach the client in one ``recv``: each is its own frame
    (the pipelining test above waited for a second answer it had already read)."""
    import socket

    from .conftest import END, START

    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(START + b"MSA|AA|P1" + END + START + b"MSA|AA|P2" + END)
        assert read_frame(ours) == b"MSA|AA|P1"
        assert read_frame(ours) == b"MSA|AA|P2"
