"""Tests for bench.identity's synthetic registry: how its family names are drawn."""

from __future__ import annotations

import random
from collections import Counter

from bench.identity import RARE_FAMILY_SHARE, family_drawer

NAMES = [f"name{i:04d}" for i in range(3233)]  # as many as the FEBRL list has


def test_the_identity_bench_draws_uniformly_from_the_list_as_it_always_did() -> None:
    draw = family_drawer(random.Random(1), NAMES, realistic=False)
    drawn = Counter(draw() for _ in range(50_000))
    assert set(drawn) <= set(NAMES)
    assert max(drawn.values()) < 50  # about 15 each


def test_a_registry_drawn_as_a_real_one_has_a_few_common_names_and_a_long_tail() -> None:
    draw = family_drawer(random.Random(1), NAMES, realistic=True)
    drawn = Counter(draw() for _ in range(200_000))
    rare = sum(n for name, n in drawn.items() if name not in NAMES)
    assert abs(rare / 200_000 - RARE_FAMILY_SHARE) < 0.01
    # Many more distinct names than the list: what a fuzzy search walks.
    assert len(drawn) > 10 * len(NAMES)
    common = drawn.most_common(100)
    assert 0.005 < common[0][1] / 200_000 < 0.02  # the commonest about 1 % of records
    assert 0.10 < sum(n for _, n in common) / 200_000 < 0.20  # the hundred, about 15 %
    # The Zipf head: commonness does not follow the alphabet.
    head = [name for name, _ in common[:20] if name in NAMES]
    assert head != sorted(head)


def test_the_same_seed_draws_the_same_registry() -> None:
    one = family_drawer(random.Random(3), NAMES, realistic=True)
    two = family_drawer(random.Random(3), NAMES, realistic=True)
    assert [one() for _ in range(1000)] == [two() for _ in range(1000)]
