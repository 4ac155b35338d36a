"""The steering engine: exact hook semantics on a tiny decoder, meaning on real SmolLM2."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vla_steering.dictionaries import Concept, DictionaryError, InterventionDictionary
from vla_steering.steering import SteeringEngine

IDS = torch.tensor([[1, 5, 9, 13, 2]])


def dictionary(**concepts: Concept) -> InterventionDictionary:
    return InterventionDictionary(concepts, intermediate_size=48)


def logits(model, ids=IDS):
    with torch.inference_mode():
        return model(ids).logits


class CaptureInputs:
    """Records the down_proj input of chosen layers on every forward call."""

    def __init__(self, model, layers):
        self.seen = {layer: [] for layer in layers}
        self.handles = [
            model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(
                lambda m, args, layer=layer: self.seen[layer].append(args[0].clone()))
            for layer in layers
        ]

    def close(self):
        for h in self.handles:
            h.remove()


def test_zero_strength_is_bit_identical(llama):
    baseline = logits(llama)
    engine = SteeringEngine(llama, dictionary(up=Concept("up", ((0, 3), (2, 7)), strength=0.0)))
    assert torch.equal(logits(llama), baseline)
    engine.set_strength("up", 5.0)
    assert not torch.equal(logits(llama), baseline)
    engine.set_strength("up", 0.0)
    assert torch.equal(logits(llama), baseline)
    engine.set_strength("up", 5.0)
    engine.set_enabled(False)
    assert torch.equal(logits(llama), baseline)
    engine.remove()
    engine.set_enabled(True)
    assert torch.equal(logits(llama), baseline)


def test_one_engine_per_model_and_removing_it_detaches_every_hook(llama):
    baseline = logits(llama)
    hooks = lambda: sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in llama.modules())  # noqa: E731
    with SteeringEngine(llama, dictionary(up=Concept("up", ((0, 3),), strength=5.0))) as engine:
        assert hooks() > 0 and not torch.equal(logits(llama), baseline)
        with pytest.raises(ValueError, match="already has a steering engine"):
            SteeringEngine(llama, dictionary(down=Concept("down", ((1, 2),), strength=5.0)))
        assert engine.state.strengths == {"up": 5.0}
    assert hooks() == 0 and torch.equal(logits(llama), baseline)
    second = SteeringEngine(llama, dictionary(down=Concept("down", ((1, 2),), strength=5.0)))  # free again
    second.remove()


def test_clamp_scale_and_add_semantics(llama):
    concepts = dictionary(
        c=Concept("c", ((1, 4), (1, 9)), mode="clamp"),
        s=Concept("s", ((1, 20),), mode="scale"),
        a=Concept("a", ((2, 1), (2, 2)), mode="add"),
    )
    engine = SteeringEngine(llama, concepts)
    capture = CaptureInputs(llama, [1])  # registered after the engine: sees the edited input
    logits(llama)
    engine.set_strengths({"c": 3.5, "s": -2.0, "a": 1.5})
    logits(llama)
    capture.close()
    unsteered = capture.seen[1][0]
    steered = capture.seen[1][-1]
    assert torch.all(steered[..., [4, 9]] == 3.5)
    torch.testing.assert_close(steered[..., 20], unsteered[..., 20] * -2.0)
    untouched = [i for i in range(48) if i not in (4, 9, 20)]
    assert torch.equal(steered[..., untouched], unsteered[..., untouched])
    # add: with only "a" on, layer 2's output moves by 1.5 x the unit sum of its value vectors 1 and 2
    weight = llama.model.layers[2].mlp.down_proj.weight
    direction = weight[:, [1, 2]].sum(1)
    engine.set_strengths({"c": 0.0, "s": 0.0})
    out_add = []
    hook = llama.model.layers[2].mlp.down_proj.register_forward_hook(lambda m, a, o: out_add.append(o.clone()))
    logits(llama)
    engine.set_strength("a", 0.0)
    logits(llama)
    hook.remove()
    torch.testing.assert_close(out_add[0] - out_add[1], (1.5 * direction / direction.norm()).expand_as(out_add[0]))


def test_steers_prefill_and_every_decode_step(llama):
    engine = SteeringEngine(llama, dictionary(up=Concept("up", ((1, 6),), strength=7.0)))
    capture = CaptureInputs(llama, [1])
    with torch.inference_mode():
        llama.generate(IDS, max_new_tokens=4, do_sample=False, pad_token_id=0)
    capture.close()
    assert len(capture.seen[1]) == 4  # prefill (1st token) + 3 decode steps
    assert capture.seen[1][0].shape[1] == IDS.shape[1] and capture.seen[1][1].shape[1] == 1
    assert all(torch.all(x[..., 6] == 7.0) for x in capture.seen[1])
    engine.remove()


def test_a_change_mid_call_never_tears_it(llama):
    """Strength set while a forward is between layers: that call stays on the old plan."""
    engine = SteeringEngine(llama, dictionary(up=Concept("up", ((0, 1), (2, 1)), strength=2.0)))
    capture = CaptureInputs(llama, [0, 2])
    reached_layer1, changed = threading.Event(), threading.Event()

    def pause(module, args):
        reached_layer1.set()
        assert changed.wait(5)

    pause_handle = llama.model.layers[1].register_forward_pre_hook(pause)
    worker = threading.Thread(target=logits, args=(llama,))
    worker.start()
    assert reached_layer1.wait(5)
    engine.set_strength("up", 9.0)
    changed.set()
    worker.join()
    pause_handle.remove()
    logits(llama)
    capture.close()
    assert capture.seen[0][0][..., 1].unique().item() == 2.0
    assert capture.seen[2][0][..., 1].unique().item() == 2.0  # same call, after the change: still 2.0
    assert capture.seen[2][1][..., 1].unique().item() == 9.0  # next call: the new strength


def test_applied_pins_one_plan_across_calls(llama):
    engine = SteeringEngine(llama, dictionary(up=Concept("up", ((0, 1),), strength=2.0)))
    capture = CaptureInputs(llama, [0])
    with engine.applied() as state:
        logits(llama)
        engine.set_strength("up", 4.0)
        logits(llama)
    logits(llama)
    capture.close()
    assert state.strengths == {"up": 2.0}
    assert [x[..., 1].unique().item() for x in capture.seen[0]] == [2.0, 2.0, 4.0]


def test_invalid_changes_leave_the_state_unchanged(llama):
    engine = SteeringEngine(llama, dictionary(up=Concept("up", ((0, 1),), strength=2.0)), max_abs_strength=10)
    before = engine.state
    for bad, error in [({"down": 1.0}, KeyError), ({"up": math.nan}, ValueError), ({"up": 11.0}, ValueError),
                       ({"up": True}, TypeError), ({"up": "3"}, TypeError)]:
        with pytest.raises(error):
            engine.set_strengths(bad)
        assert engine.state == before
    with pytest.raises(ValueError, match="steering mode"):
        engine.set_mode("twist")
    assert engine.state == before


def test_mode_override_and_state_report(llama):
    engine = SteeringEngine(llama, dictionary(up=Concept("up", ((0, 1),), mode="clamp")))
    engine.set_strength("up", 3.0)
    state = engine.set_mode("scale")
    assert (state.mode, dict(state.strengths), state.active) == ("scale", {"up": 3.0}, True)
    capture = CaptureInputs(llama, [0])
    logits(llama)
    engine.set_strength("up", 0.0)
    logits(llama)
    capture.close()
    torch.testing.assert_close(capture.seen[0][0][..., 1], capture.seen[0][1][..., 1] * 3.0)


def test_refuses_a_dictionary_that_does_not_fit(llama):
    with pytest.raises(DictionaryError, match="outside the model"):
        SteeringEngine(llama, dictionary(up=Concept("up", ((3, 1),))))
    with pytest.raises(DictionaryError, match="outside the model"):
        SteeringEngine(llama, dictionary(up=Concept("up", ((0, 48),))))


class CountMatmuls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in ("mm", "addmm", "bmm", "matmul", "linear"):
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_hooks_add_no_matmul(llama):
    engine = SteeringEngine(llama, dictionary(
        c=Concept("c", ((0, 1), (1, 2)), strength=3.0), a=Concept("a", ((2, 3),), mode="add", strength=1.0)))
    with CountMatmuls() as steered:
        logits(llama)
    engine.remove()
    with CountMatmuls() as plain:
        logits(llama)
    assert steered.count == plain.count > 0


def test_real_smollm2_up_concept_shifts_next_token_toward_up(smollm2, smollm2_projection):
    """Clamping real 'up' neurons raises P(up-family) by a wide margin; random neurons do not."""
    from vla_steering.concepts import concept_from_matches, rank_neurons
    from vla_steering.effects import next_token_effect, token_family_ids

    model, tokenizer = smollm2
    up = concept_from_matches("up", rank_neurons(smollm2_projection, ["up"], top_n=20))
    rng = np.random.default_rng(7)
    layers = [layer for layer, _ in up.neurons]  # same layers, random neurons
    random = Concept("random", tuple((layer, int(rng.integers(0, 1536))) for layer in layers))
    engine = SteeringEngine(model, InterventionDictionary({"up": up, "random": random}, intermediate_size=1536))
    family = token_family_ids(tokenizer, "up")
    assert len(family) >= 4
    try:
        for prompt in ["The robot arm moves the block", "The weather today is", "My favourite colour"]:
            base, steered_up = next_token_effect(model, tokenizer, engine, prompt, {"up": 5.0}).mass(family)
            _, steered_random = next_token_effect(model, tokenizer, engine, prompt, {"random": 5.0}).mass(family)
            assert steered_up > 0.5 and steered_up - base > 0.4, (prompt, base, steered_up)
            assert steered_random < base + 0.05, (prompt, base, steered_random)
    finally:
        engine.remove()


def test_rows_pinned_each_to_its_own_state_equal_each_row_alone(llama):
    """A policy server batching clients steered differently: row i of a call gets state i (clamp, scale and
    add), exactly what that state gives the row alone; a call of another batch size is refused."""
    concepts = dictionary(c=Concept("c", ((1, 4),), mode="clamp"), a=Concept("a", ((2, 1), (2, 2)), mode="add"),
                          s=Concept("s", ((0, 7),), mode="scale"))
    engine = SteeringEngine(llama, concepts)
    states = [engine.set_strengths({"c": 3.0, "a": 0.0, "s": 0.0}), engine.set_strengths({"c": 0.0, "s": 0.0}),
              engine.set_strengths({"a": -2.0, "s": 4.0})]
    engine.set_strengths({"a": 0.0, "s": 0.0})  # the engine's own state is none of them
    alone = []
    for state in states:
        with engine.applied_rows([state]):
            alone.append(logits(llama))
    assert not torch.allclose(alone[0], alone[1]) and not torch.allclose(alone[1], alone[2])
    with engine.applied_rows(states):
        rows = logits(llama, IDS.repeat(3, 1))
    for i in range(3):
        torch.testing.assert_close(rows[i:i + 1], alone[i], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alone[1], logits(llama))  # unsteered, as the engine's own state
    with engine.applied_rows(states[:2]), pytest.raises(RuntimeError, match="pinned for 2 batch rows"):
        logits(llama, IDS.repeat(3, 1))
    with pytest.raises(ValueError, match="outside"):
        engine.plan_for(type(states[0])(True, "dictionary", {"c": 1e6}, 0))
    engine.remove()
