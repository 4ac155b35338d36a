"""Find concept neurons in a projection: keyword ranking and k-means clustering.

Keyword ranking scores each neuron by how much of its top-k token list (for +v,
or -v) matches the keywords, weighting rank r by 1/(r+1) so that a neuron whose
first tokens are ' up', 'Up', 'UP' scores near 1. Matching is either

* ``exact``: the decoded token equals a keyword string exactly (' up' != 'up'), or
* ``family``: the token, stripped of surrounding whitespace and lower-cased,
  equals a lower-cased keyword (' up', 'Up', 'UP' and 'up' are one family).

Clustering runs scikit-learn's k-means with a fixed seed, either in weight space
(unit value vectors) or in a semantic space (each neuron as the mean of the
unit unembedding rows of its top tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vla_steering.dictionaries import Concept
from vla_steering.projection import Projection, ProjectionSource

MATCH_MODES = ("family", "exact")


@dataclass(frozen=True)
class NeuronMatch:
    layer: int
    neuron: int
    flat_index: int
    score: float
    tokens: tuple[str, ...]


def _token_matches(tokens: np.ndarray, keywords: Sequence[str], match: str) -> np.ndarray:
    if match not in MATCH_MODES:
        raise ValueError(f"match must be one of {', '.join(MATCH_MODES)}, got {match!r}")
    if not keywords:
        raise ValueError("give at least one keyword")
    if match == "exact":
        return np.isin(tokens, list(keywords))
    family = [k.strip().lower() for k in keywords]
    return np.isin(np.char.lower(np.char.strip(tokens)), family)


def keyword_scores(projection: Projection, keywords: Sequence[str], match: str = "family",
                   sign: str = "pos") -> np.ndarray:
    """(N,) rank-weighted fraction of each neuron's top tokens that match the keywords."""
    tokens = projection.pos_tokens if sign == "pos" else projection.neg_tokens
    if sign not in ("pos", "neg"):
        raise ValueError(f"sign must be 'pos' or 'neg', got {sign!r}")
    if tokens is None:
        raise ValueError("this projection has no decoded tokens; attach_tokens() first")
    hits = _token_matches(tokens, keywords, match)
    weights = 1.0 / (1.0 + np.arange(tokens.shape[1]))
    return hits.astype(np.float64) @ weights / weights.sum()


def rank_neurons(projection: Projection, keywords: Sequence[str], *, match: str = "family", sign: str = "pos",
                 top_n: int = 20, min_score: float = 0.0) -> list[NeuronMatch]:
    """The ``top_n`` best-scoring neurons for the keywords (score > ``min_score``), best first."""
    scores = keyword_scores(projection, keywords, match, sign)
    tokens = projection.pos_tokens if sign == "pos" else projection.neg_tokens
    order = np.argsort(-scores, kind="stable")[:top_n]
    return [
        NeuronMatch(int(projection.layer[r]), int(projection.neuron[r]), int(projection.flat_index[r]),
                    float(scores[r]), tuple(str(t) for t in tokens[r]))
        for r in order
        if scores[r] > min_score
    ]


def concept_from_matches(name: str, matches: Sequence[NeuronMatch], *, mode: str = "clamp",
                         strength: float = 0.0, description: str = "") -> Concept:
    return Concept(
        name=name,
        neurons=tuple((m.layer, m.neuron) for m in matches),
        mode=mode,
        strength=strength,
        description=description,
        tokens={m.flat_index: list(m.tokens) for m in matches},
    )


def neuron_features(source: ProjectionSource, projection: Projection, rows: np.ndarray, space: str) -> np.ndarray:
    """(len(rows), D) features for clustering: unit value vectors or semantic centroids."""
    if space == "weight":
        feats = []
        for layer in np.unique(projection.layer[rows]):
            sel = rows[projection.layer[rows] == layer]
            vectors = source.value_vectors(int(layer))[torch.as_tensor(projection.neuron[sel], dtype=torch.long)]
            feats.append((sel, vectors.float().numpy()))
        out = np.empty((len(rows), source.unembedding.shape[1]), np.float32)
        position = {r: i for i, r in enumerate(rows)}
        for sel, vectors in feats:
            out[[position[r] for r in sel]] = vectors
    elif space == "semantic":
        unembed = torch.nn.functional.normalize(source.unembedding.float(), dim=1)
        out = unembed[torch.as_tensor(projection.pos_ids[rows])].mean(dim=1).numpy()
    else:
        raise ValueError(f"space must be 'weight' or 'semantic', got {space!r}")
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def cluster_neurons(source: ProjectionSource, projection: Projection, n_clusters: int, *,
                    rows: Sequence[int] | None = None, space: str = "semantic", seed: int = 0) -> np.ndarray:
    """K-means labels (one per row in ``rows``, default all rows); deterministic for a seed."""
    from sklearn.cluster import KMeans

    rows = np.arange(len(projection)) if rows is None else np.asarray(rows)
    if not 1 <= n_clusters <= len(rows):
        raise ValueError(f"n_clusters must be in 1..{len(rows)}, got {n_clusters}")
    features = neuron_features(source, projection, rows, space)
    return KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(features)


def family_direction(unembedding: torch.Tensor, decode, keyword: str) -> np.ndarray:
    """(D,) the mean unit unembedding row of the vocabulary's tokens in ``keyword``'s family (see module doc).

    ``decode`` turns token ids into strings (:func:`vla_steering.projection.tokenizer_decoder`).
    """
    names = np.asarray(decode(list(range(unembedding.shape[0]))), dtype=str)
    ids = np.flatnonzero(_token_matches(names, [keyword], "family"))
    if not len(ids):
        raise ValueError(f"no token of the vocabulary is in the family of {keyword!r}")
    rows = unembedding[torch.as_tensor(ids)].double()
    return (rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)).mean(dim=0).numpy()

