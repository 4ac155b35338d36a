"""Activation capture: exact statistics on a tiny decoder, and that it sees what steering changed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_steering.capture import ActivationCapture, NeuronStats
from vla_steering.dictionaries import Concept, InterventionDictionary
from vla_steering.steering import SteeringEngine

PROMPTS = [torch.tensor([[5, 17, 3, 44]]), torch.tensor([[9, 2, 61]]), torch.tensor([[70, 70, 1, 8, 30]])]


def activations(model, prompt: torch.Tensor, layer: int) -> torch.Tensor:
    """The input of one layer's down_proj, read independently of the capture (a hook of its own)."""
    seen = []
    handle = model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    with torch.no_grad():
        model(prompt)
    handle.remove()
    return seen[0].reshape(-1, seen[0].shape[-1]).double()


def test_statistics_are_exact_over_every_position_and_observation(llama):
    expected = [activations(llama, p, 1) for p in PROMPTS]
    with ActivationCapture(llama, layers=[1, 2]) as capture:
        for i, prompt in enumerate(PROMPTS):
            with capture.observation(i), torch.no_grad():
                llama(prompt)
        with torch.no_grad():
            llama(PROMPTS[0])  # outside any observation: not recorded
        stats = capture.stats()
    everything = torch.cat(expected)
    row = stats.layers.index(1)
    np.testing.assert_allclose(stats.max_abs[row], everything.abs().amax(0).numpy(), rtol=0, atol=0)
    np.testing.assert_allclose(stats.mean[row], everything.mean(0).numpy(), rtol=1e-12, atol=1e-12)
    per_prompt = torch.stack([e.abs().amax(0) for e in expected])  # (3, I)
    np.testing.assert_array_equal(stats.argmax_observation[row], per_prompt.argmax(0).numpy())
    assert stats.observations == 3 and stats.max_abs.shape == (2, 48)


def test_capture_sees_the_activations_steering_set(llama):
    neurons = ((1, 4), (1, 30))
    engine = SteeringEngine(llama, InterventionDictionary({"c": Concept("c", neurons, strength=3.5)}))
    try:
        with ActivationCapture(llama, layers=[1]) as capture:  # registered after the steering hooks
            with capture.observation(0), engine.applied(), torch.no_grad():
                llama(PROMPTS[2])
            stats = capture.stats()
    finally:
        engine.remove()
    for _, neuron in neurons:
        assert stats.max_abs[0, neuron] == 3.5 and stats.mean[0, neuron] == 3.5  # every position clamped
    untouched = [n for n in range(48) if n not in (4, 30)]
    np.testing.assert_array_equal(stats.max_abs[0, untouched],
                                  activations(llama, PROMPTS[2], 1).abs().amax(0).numpy()[untouched])


def test_removed_hooks_record_nothing_and_bad_layers_are_refused(llama, tmp_path):
    capture = ActivationCapture(llama, layers=[0])
    capture.remove()
    with capture.observation(0), torch.no_grad():
        llama(PROMPTS[0])
    assert capture.stats().max_abs.max() == 0.0
    assert len(llama.model.layers[0].mlp.down_proj._forward_hooks) == 0
    with pytest.raises(ValueError, match=r"has layers 0\.\.2; not \[3\]"):
        ActivationCapture(llama, layers=[3])
    with ActivationCapture(llama) as capture:
        with capture.observation(0), torch.no_grad():
            llama(PROMPTS[1])
        stats = capture.stats()
    loaded = NeuronStats.load(stats.save(tmp_path / "stats.npz"))
    np.testing.assert_array_equal(loaded.max_abs, stats.max_abs)
    assert loaded.layers == (0, 1, 2) and loaded.stack == stats.stack
    (layer, neuron, peak), *_ = stats.strongest(3)
    assert peak == stats.max_abs.max() == stats.max_abs[layer, neuron]
