"""Intervention dictionaries: the paper's reference files, the native format, validation."""

from __future__ import annotations

import pytest
import yaml
from conftest import REFERENCE_DICTIONARIES

from vla_steering.dictionaries import (
    Concept,
    DictionaryError,
    InterventionDictionary,
    load_dictionary,
    parse_dictionary,
    save_dictionary,
)

OPENVLA = REFERENCE_DICTIONARIES / "openvla_7b_dictionaries.yaml"
PI0_FAST = REFERENCE_DICTIONARIES / "pi0_fast_dictionaries.yaml"


def test_reads_the_papers_openvla_dictionary():
    raw = yaml.safe_load(OPENVLA.read_text())
    dictionary = load_dictionary(OPENVLA, intermediate_size=11008)
    assert set(dictionary.concepts) == {"blank", "up_10", "up_20", "careful_10_full"}
    assert dictionary["blank"].neurons == ()
    for name in ("up_10", "up_20", "careful_10_full"):
        concept = dictionary[name]
        assert sorted(concept.flat_indices(11008)) == sorted(int(k) for k in raw[name])
        assert all(0 <= layer < 32 and 0 <= n < 11008 for layer, n in concept.neurons)
    assert len(dictionary["up_10"].neurons) == 10 and len(dictionary["up_20"].neurons) == 20
    assert dictionary["up_10"].tokens[237682][:2] == ["up", "Up"]
    dictionary.validate({None: (32, 11008)})


def test_reads_the_papers_pi0_fast_index_lists():
    dictionary = load_dictionary(PI0_FAST, intermediate_size=16384)
    assert dictionary["high_cluster"].flat_indices(16384) == sorted([256459, 260217, 40857])
    assert len(dictionary["low_cluster"].neurons) == 4
    dictionary.validate({None: (18, 16384)})


def test_reference_format_needs_the_intermediate_size():
    with pytest.raises(DictionaryError, match="intermediate_size"):
        load_dictionary(OPENVLA)


def test_validation_names_the_concept_and_neuron():
    dictionary = load_dictionary(OPENVLA, intermediate_size=11008)
    with pytest.raises(DictionaryError, match=r"up_10.*outside the model \(30 layers x 1536"):
        dictionary.validate({None: (30, 1536)})
    with pytest.raises(DictionaryError, match="decoder stack"):
        InterventionDictionary({"x": Concept("x", ((0, 1),), stack="nope")}).validate({None: (2, 4)})


def test_native_and_reference_round_trips(tmp_path):
    original = load_dictionary(OPENVLA, intermediate_size=11008)
    native = load_dictionary(save_dictionary(original, tmp_path / "n.yaml"), intermediate_size=11008)
    reference = load_dictionary(save_dictionary(native, tmp_path / "r.yaml", "reference"), intermediate_size=11008)
    for name, concept in original.concepts.items():
        assert native[name].neurons == concept.neurons == reference[name].neurons
        assert native[name].tokens == concept.tokens == reference[name].tokens


def test_native_fields(tmp_path):
    concept = Concept("lift", ((3, 7), (1, 2), (3, 7)), mode="add", strength=2.5, description="d", stack="vlm.layers")
    assert concept.neurons == ((1, 2), (3, 7))
    path = save_dictionary(InterventionDictionary({"lift": concept}, "m", 4, 8), tmp_path / "d.yaml")
    loaded = load_dictionary(path)
    assert loaded["lift"] == concept and loaded.intermediate_size == 8 and loaded.model_name == "m"
    with pytest.raises(DictionaryError, match="made for intermediate_size 8"):
        load_dictionary(path, intermediate_size=16)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- 1\n- 2\n", "must be a YAML mapping"),
        ("format: other/v9\n", "unknown dictionary format"),
        ("c: 12\n", "expected a mapping or a list"),
        ("c: [-5]\n", "negative neuron index"),
        ("format: vla-steer/v1\nconcepts:\n  c: {mode: twist, neurons: {0: [1]}}\n", "mode 'twist'"),
        ("format: vla-steer/v1\nconcepts:\n  'bad name': {neurons: {0: [1]}}\n", "concept name"),
        ("c: [1, 2\n", "not valid YAML"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(DictionaryError, match=message):
        load_dictionary(path, intermediate_size=10)


def test_missing_file():
    with pytest.raises(DictionaryError, match="does not exist"):
        load_dictionary("/nonexistent/dictionary.yaml", 10)


def test_unknown_concept_lists_known_ones():
    with pytest.raises(KeyError, match="unknown concept 'down'.*up"):
        parse_dictionary({"up": [1]}, 10)["down"]
