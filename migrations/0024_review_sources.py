"""The source of the record that raised each review, on the review:
``review_item.source``, and the index ``review_item (status, source, pk)``.

The steward's queue (``/ui/reviews``) lists the open reviews with their records' sources,
offers the sources as a filter and counts what the filter leaves. Each of those joined
every open review to its record: at 60,000 open reviews on a registry of 1,170,000
records the page took 174 ms (the list of sources 120-180 ms of it), and 304 ms filtered
by a source. With the source on the review, the sources come from the index (a probe
per source) and a source's reviews from an index range.

Existing reviews are given their record's source here (one UPDATE of every review). A
review an older release opens during the upgrade carries none; the queue asks its record
for it.
"""

from __future__ import annotations

import peewee


def upgrade(db: peewee.Database) -> None:
    db.execute_sql("ALTER TABLE review_item ADD COLUMN source VARCHAR(100)")
    db.execute_sql("UPDATE review_item SET source = (SELECT p.source FROM patient p "
                   "WHERE p.pk = review_item.patient_pk) WHERE patient_pk IS NOT NULL")
    db.execute_sql("CREATE INDEX review_item_status_source_pk "
                   "ON review_item (status, source, pk)")
