"""Enterprise identity: every record belongs to exactly one person.

- ``records``      a stored patient in the flat form the matcher compares
- ``engine``       the matching engine and the seam identity sees it through
- ``linking``      record-level linking, inside the patient service's unit of work
- ``match``        scoring a record without storing it (``POST /patients/match``)
- ``persons``      reading persons: the PIX view, a record's person, history
- ``stewardship``  the review queue and stewards' link, unlink, merge and undo
- ``views``        persons and reviews as the API shows them
"""
