"""A small, predictable matcher for the identity tests (the real one is tested in
tests/matching): records meet on family name; same given name, family name and birth date
score 0.99, same family name and birth date 0.7, anything else 0.05; two persons are one
when every pair of their records scores at the link threshold."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mpi.identity.engine import Candidate, PairScore, PersonDecision, RankedPerson


class FakeEngine:
    model_version = "fake-1"
    link_threshold = 0.95
    review_threshold = 0.5

    frequency_fields: tuple[str, ...] = ("family_name",)
    model_file = None

    def reload_model(self) -> str | None:
        return None
    frequencies: tuple[int, Mapping[str, Mapping[str, float]]] | None = None

    def use_frequencies(self, total: int, counts: Mapping[str, Mapping[str, float]]) -> None:
        self.frequencies = (total, counts)  # what the refresher passed: tests read it

    def keys(self, data: Mapping[str, Any]) -> list[str]:
        family = (data.get("family_name") or "").lower()
        return [f"fam:{family}"] if family else []

    @staticmethod
    def probes(keys: Sequence[str]) -> list[str]:
        return list(keys)

    @staticmethod
    def score(a: Mapping[str, Any], b: Mapping[str, Any]) -> PairScore:
        same = [k for k in ("given_name", "family_name", "birth_date") if a.get(k) == b.get(k)]
        p = 0.99 if len(same) == 3 else 0.7 if len(same) == 2 and "given_name" not in same \
            else 0.05
        return PairScore(p, 0.0, f"same {', '.join(same) or 'nothing'}",
                         tuple((k, "exact", 1.0) for k in same))

    def decide(self, data: Mapping[str, Any], candidates: Sequence[Candidate], *,
               excluded: frozenset[str] = frozenset()) -> PersonDecision:
        best: dict[str, RankedPerson] = {}
        for c in candidates:
            s = self.score(data, c.parsed())
            seen = best.get(c.person_id)
            n = (seen.records_compared if seen else 0) + 1
            if seen is None or s.probability > seen.probability:
                best[c.person_id] = RankedPerson(c.person_id, s.probability, c.record_id, s, n)
            else:
                best[c.person_id] = RankedPerson(seen.person_id, seen.probability,
                                                 seen.best_record_id, seen.best, n)
        ranked = sorted((r for p, r in best.items() if p not in excluded),
                        key=lambda r: -r.probability)
        if not ranked:
            return PersonDecision("new", None, 0.0, ())
        top = ranked[0]
        dups = tuple(r for r in ranked[1:] if r.probability >= self.link_threshold)
        if top.probability >= self.link_threshold:
            return PersonDecision("link", top.person_id, top.probability, tuple(ranked), dups)
        if top.probability >= self.review_threshold:
            return PersonDecision("review", top.person_id, top.probability, tuple(ranked))
        return PersonDecision("new", None, top.probability, tuple(ranked))

    def same_person(self, left: Sequence[Candidate], right: Sequence[Candidate]
                    ) -> float | None:
        scores = [self.score(a.parsed(), b.parsed()).probability
                  for a in left for b in right]
        return min(scores) if scores and min(scores) >= self.link_threshold else None
