"""Projection of an openpi (JAX, orbax) pi0 parameter tree, written here with openpi's layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_steering.openpi_params import load_param_tree, openpi_source
from vla_steering.projection import project_value_vectors


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import orbax.checkpoint as ocp

    rng = np.random.default_rng(0)
    depth, width, mlp, vocab, expert_width = 2, 16, 24, 50, 8
    llm = {
        "embedder": {"input_embedding": rng.normal(size=(vocab, width)).astype(np.float32)},
        "layers": {
            "mlp": {"gating_einsum": rng.normal(size=(depth, 2, width, mlp)).astype(np.float32),
                    "linear": rng.normal(size=(depth, mlp, width)).astype(np.float32)},
            "mlp_1": {"gating_einsum": rng.normal(size=(depth, 2, expert_width, 12)).astype(np.float32),
                      "linear": rng.normal(size=(depth, 12, expert_width)).astype(np.float32)},
        },
        "final_norm": {"scale": rng.normal(size=(width,)).astype(np.float32)},
        "final_norm_1": {"scale": rng.normal(size=(expert_width,)).astype(np.float32)},
    }
    path = tmp_path_factory.mktemp("pi0") / "params"
    ocp.PyTreeCheckpointer().save(path, {"params": {"PaliGemma": {"llm": llm}}})
    return path.parent, llm


def test_projection_of_an_openpi_tree(checkpoint):
    path, llm = checkpoint
    source = openpi_source(load_param_tree(path))
    assert (source.num_layers, source.intermediate_size) == (2, 24)
    projection = project_value_vectors(source, top_k=4, progress=False)
    logits = llm["layers"]["mlp"]["linear"] @ llm["embedder"]["input_embedding"].T  # (depth, I, V)
    expected = np.argsort(-logits, axis=-1)[..., :4].reshape(-1, 4)
    np.testing.assert_array_equal(projection.pos_ids, expected)
    np.testing.assert_array_equal(projection.flat_index, np.arange(48))


def test_final_norm_variant_uses_openpi_rms_norm(checkpoint):
    path, llm = checkpoint
    source = openpi_source(load_param_tree(path))
    projection = project_value_vectors(source, layers=[1], top_k=3, variant="final_norm", progress=False)
    v = llm["layers"]["mlp"]["linear"][1]
    normed = v / np.sqrt((v**2).mean(-1, keepdims=True) + 1e-6) * (1 + llm["final_norm"]["scale"])
    expected = torch.topk(torch.from_numpy(normed @ llm["embedder"]["input_embedding"].T), 3).indices.numpy()
    np.testing.assert_array_equal(projection.pos_ids, expected)


def test_action_expert_width_is_explained(checkpoint):
    path, _ = checkpoint
    with pytest.raises(ValueError, match="action expert's width"):
        openpi_source(load_param_tree(path), expert=1)


def test_missing_or_foreign_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_param_tree(tmp_path / "nope")
    with pytest.raises(KeyError, match="PaliGemma/llm"):
        openpi_source({"params": {}})
