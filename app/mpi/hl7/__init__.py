"""HL7 v2 over MLLP: the PIX feed (ITI-8), PIX query (ITI-9) and PDQ (ITI-21).

Hospital registration and ADT systems feed an MPI with HL7 v2 messages over MLLP. This
package reads them (python-hl7 parses; :mod:`mpi.hl7.codec` adds the character sets and
the strict framing rules), maps PID to the record model (:mod:`mpi.hl7.pid`), runs each
message through the same services as the REST and FHIR APIs (:mod:`mpi.hl7.handler`),
and serves them on an MLLP socket (:mod:`mpi.hl7.listener`).
"""
