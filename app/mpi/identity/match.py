"""Scoring a record against the registry without storing it (``POST /patients/match``)."""

from __future__ import annotations

from mpi.domain.audit import Actor, AuditTag
from mpi.domain.identity import ComparisonOut, Explanation, MatchCandidate, MatchResult
from mpi.domain.patient import PatientInput, parse_patient
from mpi.identity.engine import PairScore, PersonDecision, grade
from mpi.identity.linking import Linking
from mpi.identity.records import match_data
from mpi.storage.work import Transaction, UnitOfWork


class MatchService:
    def __init__(self, work: UnitOfWork, linking: Linking):
        self._work = work
        self._linking = linking

    def parse(self, body: bytes) -> PatientInput:
        """The record to score, validated as a POST body (``PatientInput``)."""
        return parse_patient(body, today=self._work.clock().date())

    def match(self, data: PatientInput, actor: Actor, *, limit: int = 10) -> MatchResult:
        """Ranked candidate persons with probability, grade and explanation; audited."""
        engine = self._linking.engine
        record = match_data(data, record_id="candidate")
        keys = engine.keys(record)

        def score(tx: Transaction) -> PersonDecision:
            decision = self._linking.decide(record, keys, None)
            tx.audit(AuditTag.MATCH_QUERY, None,
                     new={"returned": [r.person_id for r in decision.ranked[:limit]]})
            return decision

        # A read, not a unit of work: no transaction around the look-ups (on PostgreSQL
        # each statement had its own snapshot inside one as well, at READ COMMITTED; on
        # SQLite the unit held the write lock while it scored) and the audit row in one
        # statement of its own, committed before the answer is returned.
        decision = self._work.read(actor, score)
        ranked = decision.ranked[:limit]
        version = engine.model_version
        return MatchResult(
            decision=decision.kind, person_id=decision.person_id, model_version=version,
            candidates=[MatchCandidate(
                person_id=r.person_id, probability=r.probability,
                grade=grade(r.probability, link_threshold=engine.link_threshold,
                            review_threshold=engine.review_threshold),  # type: ignore[arg-type]
                best_record_id=r.best_record_id, records_compared=r.records_compared,
                explanation=explanation(r.best, version)) for r in ranked])


def explanation(score: PairScore, version: str) -> Explanation:
    return Explanation(probability=score.probability, match_weight=score.match_weight,
                       reason=score.reason, model_version=version,
                       comparisons=[ComparisonOut(comparison=c, level=lvl, weight=w)
                                    for c, lvl, w in score.comparisons])
