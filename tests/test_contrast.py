"""Contrastive directions: residual capture exact on a tiny decoder; direction concepts in dictionaries and the
engine; on the demo VLA, the 'up' - 'down' direction raises dz on other instructions more than random directions
of the same norm do, and the CLI writes a concept the node's dictionary loader takes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ros_harness import SOURCE_PATH

from vla_steering.capture import ResidualCapture
from vla_steering.dictionaries import Concept, DictionaryError, InterventionDictionary, load_dictionary, save_dictionary
from vla_steering.steering import SteeringEngine

ROOT = Path(__file__).resolve().parents[1]
LAYER = 25  # of the demo VLA's 30: where the difference of means is large (|d| ~ 50 vs ~10 at layer 20)


def test_the_residual_is_the_layers_output_at_the_last_position(llama):
    prompt = torch.tensor([[5, 17, 3, 44]])
    with torch.no_grad():
        hidden = llama(prompt, output_hidden_states=True).hidden_states  # (embeddings, layer 0, 1, 2)
    with ResidualCapture(llama, [0, 2]) as last, ResidualCapture(llama, [1], position="mean") as mean:
        with last.observation(), mean.observation(), torch.no_grad():
            llama(prompt)
    np.testing.assert_allclose(last.vectors()[0, 0], hidden[1][0, -1].double().numpy(), atol=1e-6)
    np.testing.assert_allclose(mean.vectors()[0, 0], hidden[2][0].mean(0).double().numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="has layers 0..2"):
        ResidualCapture(llama, [5])


def test_a_direction_concept_adds_its_unit_vector_times_the_strength(llama, tmp_path):
    direction = torch.randn(32, generator=torch.Generator().manual_seed(1))
    concept = Concept("d", (), mode="add", strength=0.0, directions={1: tuple(direction.tolist())})
    path = save_dictionary(InterventionDictionary({"d": concept}), tmp_path / "d.yaml")
    loaded = load_dictionary(path)
    seen = []
    engine = SteeringEngine(llama, loaded)  # its output hook first: the next one sees the sum
    hook = llama.model.layers[1].mlp.down_proj.register_forward_hook(lambda m, a, out: seen.append(out.clone()))
    try:
        prompt = torch.tensor([[3, 9, 27]])
        with torch.no_grad():
            off = llama(prompt).logits
            engine.set_strength("d", 2.5)
            on = llama(prompt).logits
    finally:
        engine.remove()
        hook.remove()
    assert len(seen) == 2
    unit = direction / direction.norm()
    torch.testing.assert_close(seen[1] - seen[0], (2.5 * unit).expand_as(seen[0]), atol=1e-5, rtol=0)
    assert (on - off).abs().max() > 1e-3
    with pytest.raises(DictionaryError, match="a 31-wide direction at layer 1 does not fit"):
        SteeringEngine(llama, InterventionDictionary({"x": Concept("x", (), mode="add", directions={1: (1.0,) * 31})}))
    with pytest.raises(DictionaryError, match="a direction concept has mode 'add' and no neurons"):
        Concept("x", ((1, 2),), mode="add", directions={1: (1.0,) * 32})
    with pytest.raises(DictionaryError, match="zero or NaN"):
        Concept("x", (), mode="add", directions={1: (0.0,) * 32})


@pytest.fixture(scope="module")
def demo():
    from vla_steering.policies import make_policy

    return make_policy("demo")


def scenes(instructions, seed: int):
    from vla_steering.policies import Observation
    from vla_steering.policies.demo_vla import render_scene

    return [Observation({"agentview": render_scene(("left", "right")[i % 2], "red", np.random.default_rng(seed + i))},
                        np.zeros(8, np.float32), text) for i, text in enumerate(instructions)]


def test_the_up_minus_down_direction_raises_dz_more_than_random_directions(demo):
    from vla_steering.contrast import contrast
    from vla_steering.policies import SteeredPolicy, steer
    from vla_steering.policies.demo_vla import DIRECTIONS, REACH

    plain = SteeredPolicy(demo)
    result = contrast(plain, scenes(DIRECTIONS["up"][0], 0), scenes(DIRECTIONS["down"][0], 0), [LAYER])
    norm = float(result.norms[0])
    held_out = scenes([p.format(color="red") for p in REACH] + list(DIRECTIONS["left"][0][:2])
                      + list(DIRECTIONS["forward"][0][:2]) + ["slide right"], 100)
    base = np.array([plain.act(o).actions[0, 2] for o in held_out])

    def dz_change(concept: Concept) -> np.ndarray:
        steered = steer(demo, InterventionDictionary({"c": concept}))
        steered.engine.set_strength("c", norm)
        try:
            return np.array([steered.act(o).actions[0, 2] for o in held_out]) - base
        finally:
            steered.engine.remove()

    effect = dz_change(result.concept("c"))
    rng = np.random.default_rng(0)
    width = result.difference.shape[1]
    random_means = [dz_change(Concept("c", (), mode="add", directions={LAYER: tuple(rng.normal(size=width))})).mean()
                    for _ in range(6)]
    half_ci = 1.96 * effect.std(ddof=1) / np.sqrt(len(effect))
    print(f"contrast dz {effect.mean():+.3f} +- {half_ci:.3f} (95% CI, {len(effect)} observations); "
          f"random directions of the same norm: {np.round(random_means, 3)}")
    assert effect.mean() - half_ci > max(random_means)


def test_the_cli_writes_a_concept_the_dictionary_loader_and_engine_take(demo, tmp_path):
    from vla_steering.policies import steer

    code = [sys.executable, "-m", "vla_steering.cli", "contrast", "--a", "move up", "lift it", "--b", "move down",
            "lower it", "--layers", f"{LAYER - 1},{LAYER}", "--scenes", "2", "--name", "up_down",
            "--dictionary", str(ROOT / "config" / "demo_vla_dictionary.yaml"), "--out", str(tmp_path)]
    result = subprocess.run(code, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env=dict(os.environ, PYTHONPATH=SOURCE_PATH))
    assert result.returncode == 0, result.stderr[-2000:]
    concept = load_dictionary(tmp_path / "up_down.yaml", 1536)["up_down"]
    assert concept.mode == "add" and concept.strength == 0.0 and concept.layers == (LAYER - 1, LAYER)
    assert all(abs(np.linalg.norm(v) - 1.0) < 1e-9 for v in concept.directions.values())
    report = (tmp_path / "contrast.md").read_text()
    assert "cos with `up`" in report and f"| {LAYER} |" in report
    steer(demo, InterventionDictionary({"up_down": concept})).engine.remove()


def test_a_contrastive_concept_steers_the_node_live(demo, tmp_path):
    """The node loads the direction concept like any other; `ros2 param set` of its strength moves the next action."""
    from ros_harness import NodeProcess, unique_domain_id, wait_for

    from vla_steering.contrast import contrast
    from vla_steering.policies import SteeredPolicy
    from vla_steering.policies.demo_vla import DIRECTIONS

    rclpy = pytest.importorskip("rclpy")
    from std_msgs.msg import String
    from test_steering_node import Client, dz

    result = contrast(SteeredPolicy(demo), scenes(DIRECTIONS["up"][0], 0), scenes(DIRECTIONS["down"][0], 0), [LAYER])
    path = save_dictionary(result.dictionary("up_down"), tmp_path / "up_down.yaml")
    domain = unique_domain_id()
    os.environ.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    rclpy.init()
    process = NodeProcess("vla_steering_node.node", domain, {"steering.dictionary": str(path),
                                                              "max_abs_strength": 100.0}, log=tmp_path / "node.log")
    client = Client()
    client.instruction.publish(String(data="move left"))
    try:
        assert wait_for(lambda: client.set_client.service_is_ready() or not process.alive(), 120, client.spin)
        before = client.act(timeout=60)
        result_set = client.set("steering.up_down.strength", float(result.norms[0]))
        assert result_set.successful, result_set.reason
        after = client.act()
        assert dz(after) - dz(before) > 0.1, (dz(before), dz(after))
    finally:
        code = process.stop()
        client.node.destroy_node()
        rclpy.shutdown()
    assert code == 0, process.output()[-3000:]
