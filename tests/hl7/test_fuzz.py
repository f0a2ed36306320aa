"""The HL7 handler fuzzed: whatever bytes arrive in a frame, the answer is one well-formed
acknowledgement (MSH then MSA), never an exception, and a refused message writes nothing.
Mutations start from the real messages the other tests send (hypothesis, derandomized)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpi.hl7.handler import Hl7Handler
from mpi.storage.db import connection
from mpi.storage.models import PatientRow
from mpi.wiring import Services

from .conftest import LAB, ST_MARYS, adt, pdq_query, pid, pix_query, register

SEEDS = [
    adt("A01", pid("F1", ssn="123-45-6789"), control_id="Z1"),
    adt("A40", pid("F1"), control_id="Z2", extra=f"MRG|F2^^^STMARYS&{ST_MARYS}&ISO"),
    pix_query(f"F1^^^STMARYS&{ST_MARYS}&ISO", domains=f"^^^LAB&{LAB}&ISO"),
    pdq_query("@PID.5.1.1^EVERYMAN~@PID.7^19610615", quantity="2^RD"),
]
DELIMITERS = "|^~\\&\r\n"


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 6))):
        where = draw(st.integers(0, len(text)))
        what = draw(st.one_of(st.sampled_from(list(DELIMITERS)), st.text(max_size=12),
                              st.sampled_from(["\\F\\", "\\X0D\\", "\\", "MSH|", "A40",
                                               "99999999", "@PID.3.4.2", "8859/1", "\x00"])))
        cut = draw(st.integers(0, 8))
        text = text[:where] + what + text[where + cut:]
    encoding = draw(st.sampled_from(["utf-8", "latin-1"]))
    return text.encode(encoding, errors="replace")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_any_frame_gets_a_well_formed_answer(services: Services):
    register(services)
    handler = Hl7Handler(services, application="MPI", facility="MPI",
                         certificates_required=False)

    @settings(max_examples=300, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(mutated() | st.binary(max_size=300))
    def check(frame: bytes) -> None:
        with connection(services.db):
            before = PatientRow.select().count()
            answer = handler.handle(frame).decode("utf-8", errors="replace")
            lines = answer.rstrip("\r").split("\r")
            assert lines[0].startswith("MSH|^~\\&|MPI|MPI|"), answer
            assert lines[1].startswith("MSA|A"), answer
            status = lines[1].split("|")[1]
            assert status in ("AA", "AE", "AR"), answer
            if status != "AA":
                assert PatientRow.select().count() == before

    check()
