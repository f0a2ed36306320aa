import json
import math
from pathlib import Path

import pytest

from mpi.matching.comparisons import COMPARISONS, NAMES_INDEX
from mpi.matching.model import Model, ModelError


def test_default_model_fits_the_comparisons():
    model = Model.default()
    for c in COMPARISONS:
        weights = model.weights(c.name)
        assert len(weights) == len(c.labels) and weights[0] == 0.0  # null level: no evidence
        assert weights[1] > 0 > weights[-1]  # exact agreement for, "else" against
    assert model.version.startswith("default-")


def test_json_round_trip_keeps_parameters_and_version(tmp_path):
    model = Model.default().evolve(name="mine", term_frequencies={"family_name": {"smith": 0.01}})
    path = tmp_path / "model.json"
    model.save(path)
    again = Model.load(path)
    assert again == model and again.version == model.version
    assert json.loads(path.read_text())["version"] == model.version
    assert Model.from_json(model.to_json()).to_json() == model.to_json()  # canonical


def test_version_follows_content():
    model = Model.default()
    assert model.evolve(prior=0.001).version != model.version
    assert model.evolve(name="x").version.startswith("x-")
    assert Model.from_json(model.to_json()).version == model.version


def test_edited_file_with_stale_version_is_refused():
    data = json.loads(Model.default().to_json())
    data["prior"] = 0.5 / 2
    with pytest.raises(ModelError, match="does not match the content"):
        Model.from_json(json.dumps(data))
    del data["version"]
    assert Model.from_json(json.dumps(data)).prior == 0.25


def test_model_that_does_not_fit_the_code_is_refused():
    data = json.loads(Model.default().to_json())
    del data["version"]
    data["comparisons"][0]["levels"][0]["label"] = "renamed"
    with pytest.raises(ModelError, match="level labels"):
        Model.from_json(json.dumps(data))
    with pytest.raises(ModelError):
        Model.from_json("{not json")


def test_a_model_written_before_the_middle_name_was_compared_still_loads():
    """Trained model files predate the middle-name comparison: they load with the shipped
    model's m and u for it (``mpi train`` learns the registry's own), their stated
    version still checked against what they hold. The file is the shipped model as it
    was (version default-33ab469a105f)."""
    old = (Path(__file__).parent / "model_before_middle_name.json").read_text()
    assert "middle_name" not in old
    loaded = Model.from_json(old)
    shipped = Model.default()
    assert loaded.weights("middle_name") == shipped.weights("middle_name")
    assert loaded.weights("family_name") == shipped.weights("family_name")
    edited = json.loads(old)
    edited["prior"] = 0.5
    with pytest.raises(ModelError, match="stated version default-33ab469a105f"):
        Model.from_json(json.dumps(edited))


def test_probability_and_weight_are_inverse():
    model = Model.default()
    for p in (0.01, 0.5, 0.95, 0.999):
        assert math.isclose(model.probability(model.weight_for(p)), p, rel_tol=1e-9)
    assert model.probability(-model.prior_weight) == pytest.approx(0.5)


def test_a_model_written_before_a_level_was_added_scores_as_it_did():
    """Files written before given names in another language's form had a level of their
    own scored such pairs as nicknames: they load with their nickname level's m and u
    on the new level (and a given name found as the other's family name, which they
    scored as different, with their different level's), their stated version checked
    against what they hold; a file whose levels fit neither the code nor an older code
    is refused."""
    old = json.loads((Path(__file__).parent / "model_before_middle_name.json").read_text())
    (given,) = (c for c in old["comparisons"] if c["name"] == "given_name")
    assert "another language's form" not in [level["label"] for level in given["levels"]]
    loaded = Model.from_json(json.dumps(old))
    labels = COMPARISONS[NAMES_INDEX["given_name"]].labels
    weights = dict(zip(labels, loaded.weights("given_name"), strict=True))
    assert weights["another language's form"] == weights["nickname"] > 0
    cross = "matches the other's family name (Jaro-Winkler >= 0.92)"
    assert weights[cross] == weights["different"] < 0
    shipped = dict(zip(labels, Model.default().weights("given_name"), strict=True))
    assert 0 < shipped["another language's form"] < shipped["nickname"] < shipped["exact"]
    assert 0 < shipped[cross] < shipped["similar (Jaro-Winkler >= 0.92)"]
    given["levels"] = [level for level in given["levels"] if level["label"] != "initial only"]
    del old["version"]
    with pytest.raises(ModelError, match="level labels"):
        Model.from_json(json.dumps(old))
