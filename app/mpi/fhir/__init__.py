"""FHIR R4 (4.0.1) over the same services as the REST API: Patient read/create/update/
delete, PDQm search (ITI-78) in the database, ``$match`` (ITI-119), PIXm ``$ihe-pix``
(ITI-83) and the CapabilityStatement. Its own serializers and OperationOutcome errors;
no business logic of its own.

The mapping (``mpi.fhir.patient``):

- each stored record is a ``Patient``; its id in its source is the identifier
  ``urn:mpi:source:<source>|<source_id>`` (``use=usual``), which a create must carry;
- the enterprise identity is a FHIR ``Person`` linking its records (with an assurance
  level), and the identifier ``urn:mpi:person|<person id>`` on each of its records
  (read-only: ignored on input); searching by it finds every record of a person (DEPLOY.md
  says why not a golden Patient).
"""

from mpi.domain.domains import PERSON_SYSTEM, SOURCE_SYSTEM

__all__ = ["FHIR_JSON", "FHIR_XML", "PERSON_SYSTEM", "SOURCE_SYSTEM", "V2_0203"]

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
FHIR_JSON = "application/fhir+json"
FHIR_XML = "application/fhir+xml"
