"""A steward's comment on the decision that resolved a review.

``review_item.comment``: what the steward wrote with the decision (at most 1000
characters), shown with the resolved review; also in its audit row and change event.

Expand only: a nullable column; an older release ignores it.
"""

from __future__ import annotations

import peewee


def upgrade(db: peewee.Database) -> None:
    db.execute_sql("ALTER TABLE review_item ADD COLUMN comment VARCHAR(1000)")
