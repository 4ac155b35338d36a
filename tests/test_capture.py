"""Activation capture: exact statistics on a tiny decoder, and that it sees what steering changed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_steering.capture import ActivationCapture, NeuronStats
from vla_steering.dictionaries import Concept, InterventionDictionary
from vla_steering.policies import Observation
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


def test_statistics_at_the_last_position_are_over_each_calls_last_token(llama):
    last = torch.stack([activations(llama, p, 2)[-1] for p in PROMPTS])  # (3, I)
    with ActivationCapture(llama, layers=[2], position="last") as capture:
        for i, prompt in enumerate(PROMPTS):
            with capture.observation(i), torch.no_grad():
                llama(prompt)
        stats = capture.stats()
    np.testing.assert_allclose(stats.max_abs[0], last.abs().amax(0).numpy(), rtol=0, atol=0)
    np.testing.assert_allclose(stats.mean[0], last.mean(0).numpy(), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="'all' or 'last'"):
        ActivationCapture(llama, position="first")


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


def test_instruction_span_is_where_the_prompt_differs_from_the_placeholders():
    from vla_steering.policies.base import instruction_span

    assert instruction_span([1, 2, 3, 9, 8, 4, 5], [1, 2, 3, 7, 4, 5], tail=0) == slice(-4, -2)
    assert instruction_span([1, 2, 3, 9, 8, 4, 5], [1, 2, 3, 7, 4, 5], tail=3) == slice(-7, -5)
    assert instruction_span([1, 2, 9], [1, 2, 7], tail=0) == slice(-1, None)
    assert instruction_span([1, 7, 5], [1, 6, 5], tail=0) == slice(-2, -1)
    with pytest.raises(ValueError, match="adds no token"):
        instruction_span([1, 2, 3], [1, 2, 3], tail=0)


class _Prefilled(Exception):
    """Raised by a hook once the primary stack's first layer has seen the prefill: the rest need not run."""


def _prefill_token_ids(policy, observation) -> list[int]:
    """The vocabulary rows nearest (cosine) to the first layer's input at the instruction's positions."""
    from torch import nn

    from vla_steering.anatomy import primary_stack

    stack = primary_stack(policy.model)
    table = max((m.weight for m in policy.model.modules()
                 if isinstance(m, nn.Embedding) and m.embedding_dim == stack.hidden_size), key=len).float()
    seen = []

    def stop(module, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).detach().float())
        raise _Prefilled

    handle = stack.layers[0].register_forward_pre_hook(stop, with_kwargs=True)
    try:
        with pytest.raises(_Prefilled):
            policy.predict(observation)
    finally:
        handle.remove()
    tokens = seen[0][0, policy.instruction_positions(observation)]
    unit = table / table.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (tokens / tokens.norm(dim=1, keepdim=True) @ unit.T).argmax(dim=1).tolist()


def _instruction_policy(family: str):
    from golden import checkpoint, golden_dir, lerobot_observation
    from test_openvla import golden_observation

    from vla_steering.policies import make_policy
    from vla_steering.policies.demo_vla import render_scene
    from vla_steering.policies.lerobot_processing import load_tokenizer

    if family == "demo":
        policy = make_policy("demo")
        scene = render_scene("left", "red", np.random.default_rng(0))
        return policy, policy.model.tokenizer, Observation({"camera": scene}, np.zeros(8, np.float32), "lift the bowl")
    if family == "openvla":
        policy = make_policy("openvla", str(checkpoint("openvla")), dtype="float32")
        return policy, policy.tokenizer, golden_observation()
    standin = golden_dir(family) / "paligemma_tokenizer_standin"
    policy = make_policy(family, str(checkpoint(family)), tokenizer=str(standin))
    return policy, load_tokenizer("", standin), lerobot_observation(family)


@pytest.mark.parametrize("family", ["demo", "openvla", "pi0", "pi05"])
def test_instruction_positions_hold_the_instruction_tokens_in_the_prefill(family):
    policy, tokenizer, observation = _instruction_policy(family)
    text = tokenizer.decode(_prefill_token_ids(policy, observation)).strip().lower()
    assert text == observation.instruction.strip().rstrip(".").lower()


def test_residuals_at_the_instruction_are_the_mean_over_its_tokens_in_the_prefill():
    from vla_steering.anatomy import primary_stack
    from vla_steering.capture import ResidualCapture, record_residuals
    from vla_steering.policies import SteeredPolicy

    policy, _, observation = _instruction_policy("demo")
    stack, layer = primary_stack(policy.model), 10
    seen = []
    handle = stack.layers[layer].register_forward_hook(
        lambda module, args, output: seen.append((output[0] if isinstance(output, tuple) else output).detach()))
    try:
        at_instruction, _ = record_residuals(SteeredPolicy(policy), [observation], [layer], position="instruction")
    finally:
        handle.remove()
    expected = seen[0][0, policy.instruction_positions(observation)].double().mean(dim=0).numpy()
    np.testing.assert_allclose(at_instruction[0, 0], expected, rtol=1e-6, atol=1e-6)
    at_decision, _ = record_residuals(SteeredPolicy(policy), [observation], [layer], position="last")
    np.testing.assert_allclose(at_decision[0, 0], seen[0][0, -1].double().numpy(), rtol=1e-6, atol=1e-6)
    assert not np.allclose(at_instruction, at_decision, atol=1e-2)
    with ResidualCapture(policy.model, [layer], position="instruction") as capture:
        with pytest.raises(ValueError, match="exactly when"), capture.observation():
            pass
        with pytest.raises(ValueError, match="do not fit"), capture.observation(slice(-500, -1)):
            policy.predict(observation)


def test_a_backend_running_its_layers_piecewise_is_refused_with_the_reason():
    from golden import checkpoint, golden_dir, lerobot_observation

    from vla_steering.capture import record_residuals
    from vla_steering.policies import SteeredPolicy, make_policy

    smolvla = make_policy("smolvla", str(checkpoint("smolvla")), vlm=str(golden_dir("smolvla") / "smolvlm2_standin"))
    with pytest.raises(ValueError, match="piecewise"):
        record_residuals(SteeredPolicy(smolvla), [lerobot_observation("smolvla")], [0])
