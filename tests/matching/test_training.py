import random
from collections import Counter

import pytest

from mpi.matching.comparisons import COMPARISONS
from mpi.matching.model import Model
from mpi.matching.training import (
    estimate_u,
    expectation_maximisation,
    level_distribution,
    train,
)
from tests.matching.helpers import prep, rec

NAMES = [c.name for c in COMPARISONS]


def _distribution(rng: random.Random, size: int, peak: int) -> tuple[float, ...]:
    weights = [rng.uniform(0.2, 1.0) for _ in range(size)]
    weights[peak] += size * 2.0
    total = sum(weights)
    return tuple(w / total for w in weights)


def _synthetic(seed: int, pairs: int, prior: float):
    """Level patterns drawn from known m, u and prior (conditional independence holds)."""
    rng = random.Random(seed)
    m = {c.name: _distribution(rng, len(c.labels) - 1, 0) for c in COMPARISONS}
    u = {c.name: _distribution(rng, len(c.labels) - 1, len(c.labels) - 2) for c in COMPARISONS}
    patterns: Counter[tuple[int, ...]] = Counter()
    for _ in range(pairs):
        table = m if rng.random() < prior else u
        pattern = []
        for c in COMPARISONS:
            if rng.random() < 0.1:
                pattern.append(0)  # missing values: ignored by EM
            else:
                probs = table[c.name]
                pattern.append(1 + rng.choices(range(len(probs)), probs)[0])
        patterns[tuple(pattern)] += 1
    return m, u, patterns


def test_em_recovers_known_m_u_and_prior():
    true_m, true_u, patterns = _synthetic(seed=7, pairs=40_000, prior=0.3)
    flat = {k: tuple(1 / len(v) for _ in v) for k, v in true_m.items()}
    start_m = {k: tuple(0.5 * a + 0.5 * b for a, b in zip(v, flat[k], strict=True))
               for k, v in true_m.items()}
    start_u = {k: tuple(0.5 * a + 0.5 * b for a, b in zip(v, flat[k], strict=True))
               for k, v in true_u.items()}
    result = expectation_maximisation(patterns, start_m, start_u, 0.5, NAMES, fix_u=False,
                                      max_iterations=200)
    assert result.prior == pytest.approx(0.3, abs=0.01)
    for name in NAMES:
        assert result.m[name] == pytest.approx(true_m[name], abs=0.02), name
        assert result.u[name] == pytest.approx(true_u[name], abs=0.02), name


def test_em_with_fixed_u_and_switched_off_comparisons():
    true_m, true_u, patterns = _synthetic(seed=3, pairs=30_000, prior=0.6)
    start_m = {k: tuple(1 / len(v) for _ in v) for k, v in true_m.items()}
    active = [n for n in NAMES if n != "birth_date"]
    result = expectation_maximisation(patterns, start_m, true_u, 0.5, active)
    assert result.u == true_u
    assert result.m["birth_date"] == start_m["birth_date"]  # switched off: untouched
    assert result.m["family_name"] == pytest.approx(true_m["family_name"], abs=0.02)
    assert result.prior == pytest.approx(0.6, abs=0.01)


def test_u_by_random_sampling_reflects_value_frequencies():
    people = [prep(str(i), sex="male" if i % 2 else "female", given_name=f"N{i}") for i in
              range(200)]
    u, sample = estimate_u(people, pairs=20_000, seed=1)
    assert sum(sample.values()) == 20_000
    assert u["sex"][0] == pytest.approx(0.5, abs=0.03)  # same sex: half of random pairs
    assert u["birth_date"][0] > 0.9  # everyone shares the same date here
    assert level_distribution(sample)["sex"] == u["sex"]


def test_train_gives_a_new_versioned_model_from_unlabelled_records():
    rng = random.Random(5)
    records = []
    for i in range(300):
        base = {"given_name": f"G{rng.randrange(10**6)}", "family_name": f"F{i}",
                "ssn": f"{rng.randrange(10**9):09d}", "postal_code": f"{rng.randrange(10**5):05d}"}
        records.append(rec(f"{i}a", **base))
        if i % 2:
            records.append(rec(f"{i}b", **base, sex=rng.choice(["male", "female"])))
    messages: list[str] = []
    model = train(records, name="t", u_pairs=5_000, progress=messages.append)
    assert model.version.startswith("t-") and model.version != Model.default().version
    assert 1e-4 < model.prior < 1e-2
    assert any("EM pass" in m for m in messages)
    assert Model.from_json(model.to_json()) == model
