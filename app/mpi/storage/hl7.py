"""Rows of ``hl7_sender`` (who may send HL7 v2 messages), ``hl7_receipt`` (what each
message that changed something was acknowledged with) and ``hl7_continuation`` (PDQ
continuation pointers)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from mpi.storage.db import PreparedSelect
from mpi.storage.models import Hl7ContinuationRow, Hl7ReceiptRow, Hl7SenderRow


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


# Every message looks up its sender and its earlier acknowledgement (both unique keys).
_BY_ORIGIN = PreparedSelect(Hl7SenderRow, lambda: Hl7SenderRow.select().where(
    Hl7SenderRow.application == "", Hl7SenderRow.facility == ""))
_RECEIPT = PreparedSelect(Hl7ReceiptRow, lambda: Hl7ReceiptRow.select(
    Hl7ReceiptRow.ack).where(Hl7ReceiptRow.sender == "", Hl7ReceiptRow.control_id == ""))


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
        rows = _BY_ORIGIN.rows(application, facility)
        return _stored(rows[0]) if rows else None

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
        rows = _RECEIPT.rows(sender, control_id)
        return str(rows[0].ack) if rows else None

    def prune(self, *, before: datetime) -> int:
        """Forget the acknowledgements given before ``before``; how many."""
        return int(Hl7ReceiptRow.delete().where(Hl7ReceiptRow.created_at < before).execute())

    def insert(self, sender: str, control_id: str, ack: str, *, now: datetime) -> None:
        Hl7ReceiptRow.insert(sender=sender, control_id=control_id, ack=ack,
                             created_at=now).execute()


@dataclass(frozen=True)
class StoredContinuation:
    sender: str
    tag: str
    query: str  # digest of the query's parameters
    position: int  # records answered so far
    quantity: int
    ranked: str | None  # JSON [[record id, probability], ...] of a fuzzy query
    expires_at: datetime


class ContinuationRepository:
    def insert(self, pointer: str, state: StoredContinuation) -> None:
        Hl7ContinuationRow.insert(pointer=pointer, sender=state.sender, tag=state.tag,
                                  query=state.query, position=state.position,
                                  quantity=state.quantity, ranked=state.ranked,
                                  expires_at=state.expires_at).execute()

    def take(self, pointer: str) -> StoredContinuation | None:
        """The pointer's state, deleted (a pointer is used once); None if there is none."""
        row = Hl7ContinuationRow.get_or_none(Hl7ContinuationRow.pointer == pointer)
        if row is None:
            return None
        if Hl7ContinuationRow.delete().where(Hl7ContinuationRow.pk == row.pk).execute() != 1:
            return None  # another listener took it a moment ago
        return StoredContinuation(row.sender, row.tag, row.query, row.position, row.quantity,
                                  row.ranked, row.expires_at)

    def cancel(self, sender: str, tag: str) -> int:
        return int(Hl7ContinuationRow.delete().where(Hl7ContinuationRow.sender == sender,
                                                     Hl7ContinuationRow.tag == tag).execute())

    def prune(self, *, before: datetime) -> int:
        return int(Hl7ContinuationRow.delete()
                   .where(Hl7ContinuationRow.expires_at < before).execute())
