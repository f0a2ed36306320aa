"""The audit trail is read in the order things happened (``occurred_at``, then ``pk``),
no longer in the order its rows were written (``pk``): a read's audit row may now be
written up to ``AUDIT_READ_WINDOW`` after the read (with other reads' rows, in one
transaction), after rows of writes that came later.

The three indexes the trail pages through (by record, by acting client, by the user a
client acted for) and the one on ``occurred_at`` get ``occurred_at, pk`` as their last
columns, so a record's page and the most recent page are still read in order from an
index (a user's page combines two of them, as before); the old ones go.

Building them reads the audit table once per index and blocks writes to it meanwhile
(and so every audited request): about 2 s per million rows on these machines. An older
release still works on them (its pages in ``pk`` order sort a record's or a user's rows).
"""

from __future__ import annotations

import peewee

NEW = {
    "audit_event_entity_type_entity_id_occurred_at_pk": "entity_type, entity_id, occurred_at, pk",
    "audit_event_actor_occurred_at_pk": "actor, occurred_at, pk",
    "audit_event_on_behalf_of_occurred_at_pk": "on_behalf_of, occurred_at, pk",
    "audit_event_occurred_at_pk": "occurred_at, pk",
}
OLD = ("audit_event_entity_type_entity_id_pk", "audit_event_actor_pk",
       "audit_event_on_behalf_of_pk", "audit_event_occurred_at")


def upgrade(db: peewee.Database) -> None:
    for name, columns in NEW.items():
        db.execute_sql(f"CREATE INDEX {name} ON audit_event ({columns})")
    for name in OLD:
        db.execute_sql(f"DROP INDEX {name}")
