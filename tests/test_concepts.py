"""Keyword ranking and clustering of neurons."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_steering.concepts import cluster_neurons, concept_from_matches, keyword_scores, rank_neurons
from vla_steering.projection import Projection, ProjectionSource


def synthetic(tokens: list[list[str]]) -> Projection:
    n, k = len(tokens), len(tokens[0])
    ids = np.arange(n * k).reshape(n, k)
    p = Projection(layer=np.zeros(n, np.int32), neuron=np.arange(n, dtype=np.int32),
                   flat_index=np.arange(n, dtype=np.int64), pos_ids=ids, pos_logits=np.zeros((n, k), np.float32),
                   neg_ids=ids, neg_logits=np.zeros((n, k), np.float32), meta={"intermediate_size": n})
    p.pos_tokens = np.asarray(tokens)
    p.neg_tokens = np.asarray(tokens[::-1])
    return p


def test_family_and_exact_matching():
    p = synthetic([[" up", "Up", "UP", "cat"], ["cat", "dog", " up", "x"], ["upward", "pup", "x", "y"]])
    family = keyword_scores(p, ["up"])
    exact = keyword_scores(p, [" up"], match="exact")
    w = 1 / np.arange(1, 5)
    assert family[0] == pytest.approx(w[:3].sum() / w.sum())
    assert family[1] == pytest.approx(w[2] / w.sum())
    assert family[2] == 0.0  # 'upward' and 'pup' are other words
    assert exact[0] == pytest.approx(w[0] / w.sum())
    assert keyword_scores(p, ["up"], sign="neg")[2] == family[0]


def test_rank_and_concept():
    p = synthetic([["cat", "x"], [" up", "Up"], ["x", "up"]])
    matches = rank_neurons(p, ["UP"], top_n=5)
    assert [m.neuron for m in matches] == [1, 2]  # neuron 0 scores 0 and is dropped
    concept = concept_from_matches("up", matches, strength=3.0)
    assert concept.neurons == ((0, 1), (0, 2)) and concept.tokens[1] == [" up", "Up"]
    with pytest.raises(ValueError, match="match must be"):
        keyword_scores(p, ["up"], match="fuzzy")


def test_clustering_separates_two_directions_and_is_deterministic():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=16), rng.normal(size=16)
    vectors = np.stack([a + 0.05 * rng.normal(size=16) for _ in range(10)]
                       + [b + 0.05 * rng.normal(size=16) for _ in range(10)]).astype(np.float32)
    source = ProjectionSource("s", 1, 20, lambda layer: torch.from_numpy(vectors), torch.randn(30, 16))
    p = synthetic([[str(i)] * 2 for i in range(20)])
    p.pos_ids = rng.integers(0, 30, (20, 3))
    labels = cluster_neurons(source, p, 2, space="weight", seed=3)
    assert len(set(labels[:10])) == 1 and len(set(labels[10:])) == 1 and labels[0] != labels[10]
    again = cluster_neurons(source, p, 2, space="weight", seed=3)
    np.testing.assert_array_equal(labels, again)
    semantic = cluster_neurons(source, p, 3, space="semantic", seed=1)
    np.testing.assert_array_equal(semantic, cluster_neurons(source, p, 3, space="semantic", seed=1))
    with pytest.raises(ValueError, match="n_clusters"):
        cluster_neurons(source, p, 0)


def test_real_smollm2_up_and_left_neurons_cluster_apart(smollm2, smollm2_projection):
    """Semantic k-means over real 'up' and 'left' neurons recovers the two concepts."""
    from vla_steering.projection import source_from_model

    p = smollm2_projection
    up = [p.row(m.layer, m.neuron) for m in rank_neurons(p, ["up"], top_n=4)]
    left = [p.row(m.layer, m.neuron) for m in rank_neurons(p, ["left"], top_n=4)]
    assert not set(up) & set(left)
    labels = cluster_neurons(source_from_model(smollm2[0]), p, 2, rows=up + left, space="semantic")
    assert len(set(labels[:4])) == 1 and len(set(labels[4:])) == 1 and labels[0] != labels[4], labels
