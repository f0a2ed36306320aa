"""Enterprise identity: every record belongs to exactly one person.

``records`` turns a stored patient into the flat form the matcher compares;
``engine`` is the narrow seam to ``mpi.matching``; ``service`` links, queues
reviews, and carries out stewards' decisions, each in one transaction with
its audit rows and change-log events.
"""
