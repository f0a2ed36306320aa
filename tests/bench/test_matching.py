"""The matching benchmark's pure helpers (no pandas/Splink needed: the dev lock has neither)."""

from bench import matching as matchbench


def test_pairwise_metrics_of_clusters():
    truth = matchbench.cluster_pairs({"a": "1", "b": "1", "c": "1", "d": "2"})
    assert truth == {("a", "b"), ("a", "c"), ("b", "c")}
    predicted = matchbench.cluster_pairs({"a": "x", "b": "x", "c": "y", "d": "y"})
    m = matchbench.prf(predicted, truth)
    assert (m["true_positives"], m["false_positives"], m["false_negatives"]) == (1, 1, 2)
    assert m["precision"] == 0.5 and m["recall"] == round(1 / 3, 6)
    assert matchbench.prf(set(), truth)["f1"] == 0.0


def test_pairs_to_clusters_and_greedy_one_to_one():
    clusters = matchbench.pairs_to_clusters([("a", "b"), ("b", "c"), ("x", "y")])
    assert clusters["a"] == clusters["c"] != clusters["x"]
    kept = matchbench.greedy_one_to_one([(0.99, "a", "x"), (0.97, "a", "y"), (0.96, "b", "y"),
                                         (0.98, "b", "x")])
    assert kept == [("a", "x"), ("b", "y")]


def test_febrl_rows_map_to_the_standard_layout():
    row = {"given_name": "mitchell", "surname": float("nan"), "street_number": "7",
                     "address_1": "wallaby place", "address_2": "delmar", "suburb": "cleveland",
                     "postcode": "2119", "state": "sa", "date_of_birth": "19560431",
                     "soc_sec_id": "1804974"}  # a pandas row reads the same
    out = matchbench.febrl_row("rec-1-org", row)
    assert out["family_name"] == ""  # NaN
    assert out["birth_date"] == "1956-04-31"  # as the file has it: the tools drop it
    assert out["address_line"] == "7 wallaby place delmar" and out["ssn"] == "1804974"
    assert matchbench.entity("rec-1496-dup-3") == "1496"
