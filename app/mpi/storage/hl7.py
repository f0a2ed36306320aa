"""Rows of ``hl7_sender`` (who may send HL7 v2 messages) and ``hl7_receipt`` (what each
message that changed something was acknowledged with)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from mpi.storage.models import Hl7ReceiptRow, Hl7SenderRow


@dataclass(frozen=True)
class StoredSender:
    name: str
    application: str
    facility: str
    sources: tuple[str, ...]
    scopes: tuple[str, ...]
    certificate: str | None
    created_at: datetime


def _stored(row: Hl7SenderRow) -> StoredSender:
    return StoredSender(row.name, row.application, row.facility,
                        tuple(s for s in row.sources.split(",") if s), tuple(row.scopes.split()),
                        row.certificate, row.created_at)


class SenderRepository:
    def insert(self, *, name: str, application: str, facility: str, sources: tuple[str, ...],
               scopes: tuple[str, ...], certificate: str | None,
               now: datetime) -> StoredSender:
        row = Hl7SenderRow.create(name=name, application=application, facility=facility,
                                  sources=",".join(sources), scopes=" ".join(scopes),
                                  certificate=certificate, created_at=now)
        return _stored(row)

    def clash(self, name: str, application: str, facility: str) -> str | None:
        """What an insert of these would collide with: ``name``, ``application``, None."""
        if Hl7SenderRow.select().where(Hl7SenderRow.name == name).exists():
            return "name"
        if Hl7SenderRow.select().where(Hl7SenderRow.application == application,
                                       Hl7SenderRow.facility == facility).exists():
            return "application"
        return None

    def by_origin(self, application: str, facility: str) -> StoredSender | None:
        row = Hl7SenderRow.get_or_none(Hl7SenderRow.application == application,
                                       Hl7SenderRow.facility == facility)
        return _stored(row) if row is not None else None

    def all(self) -> list[StoredSender]:
        return [_stored(r) for r in Hl7SenderRow.select().order_by(Hl7SenderRow.name)]

    def delete(self, name: str) -> StoredSender | None:
        row = Hl7SenderRow.get_or_none(Hl7SenderRow.name == name)
        if row is None:
            return None
        row.delete_instance()
        return _stored(row)


class ReceiptRepository:
    def find(self, sender: str, control_id: str) -> str | None:
        row = (Hl7ReceiptRow.select(Hl7ReceiptRow.ack)
               .where(Hl7ReceiptRow.sender == sender, Hl7ReceiptRow.control_id == control_id)
               .first())
        return row.ack if row is not None else None

    def prune(self, *, before: datetime) -> int:
        """Forget the acknowledgements given before ``before``; how many."""
        return int(Hl7ReceiptRow.delete().where(Hl7ReceiptRow.created_at < before).execute())

    def insert(self, sender: str, control_id: str, ack: str, *, now: datetime) -> None:
        Hl7ReceiptRow.insert(sender=sender, control_id=control_id, ack=ack,
                             created_at=now).execute()
