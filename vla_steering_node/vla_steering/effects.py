"""What steering does to a language model's next-token distribution."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vla_steering.steering import SteeringEngine


@dataclass(frozen=True)
class NextTokenEffect:
    baseline: list[tuple[str, float]]  # top tokens and probabilities, unsteered
    steered: list[tuple[str, float]]
    baseline_probs: torch.Tensor  # (V,)
    steered_probs: torch.Tensor  # (V,)

    def mass(self, token_ids: Sequence[int]) -> tuple[float, float]:
        """Probability of a token set before and after steering."""
        ids = torch.as_tensor(list(token_ids), dtype=torch.long)
        return float(self.baseline_probs[ids].sum()), float(self.steered_probs[ids].sum())


@torch.inference_mode()
def next_token_probs(model: nn.Module, tokenizer, prompt: str) -> torch.Tensor:
    ids = tokenizer(prompt, return_tensors="pt")
    return model(**ids).logits[0, -1].float().softmax(-1)


def next_token_effect(model: nn.Module, tokenizer, engine: SteeringEngine, prompt: str,
                      strengths: Mapping[str, float], top: int = 10) -> NextTokenEffect:
    """Next-token distribution with the engine's current state off and with ``strengths`` applied.

    The engine's strengths are restored afterwards.
    """
    before = dict(engine.state.strengths)
    engine.set_strengths({name: 0.0 for name in engine.concepts})
    try:
        baseline = next_token_probs(model, tokenizer, prompt)
        engine.set_strengths(strengths)
        steered = next_token_probs(model, tokenizer, prompt)
    finally:
        engine.set_strengths({name: before.get(name, 0.0) for name in engine.concepts})

    def top_tokens(probs: torch.Tensor) -> list[tuple[str, float]]:
        values, ids = probs.topk(top)
        return [(tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, ids)]

    return NextTokenEffect(top_tokens(baseline), top_tokens(steered), baseline, steered)


def token_family_ids(tokenizer, keyword: str) -> list[int]:
    """Ids of every vocabulary token that is ``keyword`` up to case and surrounding whitespace."""
    target = keyword.strip().lower()
    vocab = tokenizer.get_vocab()
    ids = sorted(vocab.values())
    names = tokenizer.batch_decode([[i] for i in ids])
    return [i for i, name in zip(ids, names) if name.strip().lower() == target]
