"""The CI preset of the headless evaluation: bags, table and report, checked against the raw bags.

It runs as users run it: the ``evaluation`` executable of a fresh pip install of the project,
outside the source tree with PYTHONPATH unset, the preset found by name, both cores kept
busy by other processes meanwhile. The same preset under a namespace gives the same metrics.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from ros_harness import unique_domain_id

from vla_steer_bringup.evaluation import evaluate
from vla_steer_bringup.study import Condition, EvalConfig
from vla_steering.bags import bag_counts, read_bag
from vla_steering.metrics import episode_from_bag, episode_metrics

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = unique_domain_id()


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory, fresh_install):
    os.environ.update(ROS_DOMAIN_ID=str(DOMAIN), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    out = tmp_path_factory.mktemp("evaluation")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH")}
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        run = subprocess.run([str(fresh_install / "bin" / "evaluation"), "eval_ci", "--out", str(out)],
                             cwd=out, env=env, capture_output=True, text=True, timeout=1800)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return EvalConfig.load("eval_ci"), out, out / "report" / "report.md"


@pytest.fixture(scope="module")
def namespaced(tmp_path_factory, evaluation):
    config = EvalConfig.load(ROOT / "config" / "eval_ci.yaml")
    config = EvalConfig(**{**config.__dict__, "namespace": "robot1"})
    out = tmp_path_factory.mktemp("namespaced")
    return config, out, evaluate(config, out, progress=False)


def test_the_installed_preset_is_the_source_trees():
    assert EvalConfig.load("eval_ci") == EvalConfig.load(ROOT / "config" / "eval_ci.yaml")


def test_ci_preset_produces_bags_table_and_report(evaluation):
    config, out, report = evaluation
    rows = list(csv.DictReader((report.parent / "results.csv").open()))
    assert [r["condition"] for r in rows] == ["baseline", "up_2.0"]
    for row in rows:
        counts = bag_counts(row["bag"])
        assert counts["/episode_events"] == 2  # start, timeout
        assert counts["/action_chunk"] == config.max_steps // 4  # one 4-step chunk per replanning point
        assert counts["/steering_state"] == counts["/action_chunk"]
        assert counts["/camera/agentview/image_raw"] >= counts["/action_chunk"]
        assert row["steps"] == str(config.max_steps) and row["outcome"] == "timeout"
    rates = list(csv.DictReader((report.parent / "success_rate.csv").open()))
    assert {r["condition"] for r in rates} == {"baseline", "up_2.0"}
    text = report.read_text()
    assert "up_2.0" in text
    for image in ("success_rate.png", "strength_sweep.png", "trajectory_libero_spatial_t0_i0.png"):
        assert (report.parent / image).stat().st_size > 1000


def ee_height(bag: str) -> np.ndarray:
    """Recomputed here from the raw bag, independently of vla_steering.metrics."""
    seen = {}
    for m in read_bag(bag, ["/ee_pose"]):
        stamp = m.message.header.stamp.sec + m.message.header.stamp.nanosec * 1e-9
        seen[round(stamp, 6)] = m.message.pose.position.z
    return np.array([seen[t] for t in sorted(seen)])


def test_metrics_match_the_raw_bags_and_up_lifts_the_arm(evaluation):
    _, _, report = evaluation
    rows = {r["condition"]: r for r in csv.DictReader((report.parent / "results.csv").open())}
    for row in rows.values():
        z = ee_height(row["bag"])
        assert float(row["displacement_z"]) == pytest.approx(z[-1] - z[0], abs=1e-9)
        assert float(row["height_max"]) == pytest.approx(z.max(), abs=1e-9)
        assert len(z) == int(row["steps"]) + 1  # one pose per control step, plus the start
    base, up = ee_height(rows["baseline"]["bag"]), ee_height(rows["up_2.0"]["bag"])
    assert up[-1] - base[-1] > 0.1  # steering 'up' lifts the end effector in simulation
    steering = [m.message.status[0] for m in read_bag(rows["up_2.0"]["bag"], ["/steering_state"])]
    assert all({kv.key: kv.value for kv in s.values}["strength.up"] == "2.0" for s in steering)


def test_finished_episodes_are_not_run_again(evaluation):
    config, out, report = evaluation
    bag = out / "bags" / "libero_spatial_t0_i0_baseline_s7"
    mtime = (bag / "metadata.yaml").stat().st_mtime
    only_baseline = EvalConfig(**{**config.__dict__, "conditions": [Condition("baseline")]})
    evaluate(only_baseline, out, progress=False)
    assert (bag / "metadata.yaml").stat().st_mtime == mtime


def test_config_needs_a_baseline(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("suite: libero_spatial\ntasks: [0]\ninit_states: [0]\nconditions:\n  - {name: up}\n")
    with pytest.raises(ValueError, match="baseline"):
        EvalConfig.load(path)


def test_counterfactual_replay_reproduces_then_changes_the_recorded_actions(evaluation):
    from vla_steering.dictionaries import load_dictionary
    from vla_steering.policies import make_policy, steer
    from vla_steering_node.counterfactual import counterfactual

    _, out, _ = evaluation
    bag = out / "bags" / "libero_spatial_t0_i0_baseline_s7"
    policy = steer(make_policy("demo"), load_dictionary(ROOT / "config" / "demo_vla_dictionary.yaml", 1536))
    engine = policy.engine
    same = counterfactual(bag, policy, ["agentview", "wrist"])
    assert len(same) >= 16  # most of the 24 recorded steps had their observation recorded too
    for row in same:  # unsteered again: the recorded actions, from the recorded observations
        assert abs(row["counterfactual_dz"] - row["recorded_dz"]) < 1e-5
    engine.set_strength("up", 2.0)
    steered = counterfactual(bag, policy, ["agentview", "wrist"])
    assert np.mean([r["counterfactual_dz"] - r["recorded_dz"] for r in steered]) > 0.5


def test_activation_mining_over_the_recorded_bags(evaluation, tmp_path):
    """Every recorded observation of both bags replayed with 'up' clamped: its neurons are captured at exactly the
    clamp at every position; the strongest neurons are listed with their tokens, frames and a loadable concept."""
    import json

    from vla_steering.capture import NeuronStats
    from vla_steering.dictionaries import load_dictionary
    from vla_steering_node.counterfactual import recorded_steps
    from vla_steering_node.mining import main

    _, out, _ = evaluation
    bags = sorted(str(p) for p in (out / "bags").iterdir())
    up = load_dictionary(ROOT / "config" / "demo_vla_dictionary.yaml", 1536)["up"]
    layers = sorted({layer for layer, _ in up.neurons})
    code = main([*bags, "--strength", "up=9", "--layers", ",".join(map(str, layers)), "--top", "10",
                 "--clusters", "3", "--out", str(tmp_path)])
    assert code == 0
    stats = NeuronStats.load(tmp_path / "neuron_stats.npz")
    recorded = sum(1 for bag in bags for _ in recorded_steps(bag, ["agentview", "wrist"], "libero",
                                                            ["gripper_finger_left", "gripper_finger_right"]))
    assert stats.observations == recorded >= 8 and stats.layers == tuple(layers)
    for layer, neuron in up.neurons:
        row = stats.layers.index(layer)
        assert stats.max_abs[row, neuron] == 9.0 and stats.mean[row, neuron] == 9.0
    with open(tmp_path / "top_neurons.csv") as handle:
        rows = list(csv.DictReader(handle))
    peaks = [float(r["max_abs"]) for r in rows]
    assert len(rows) == 10 and peaks == sorted(peaks, reverse=True) and peaks[0] == round(stats.max_abs.max(), 6)
    assert all(len(json.loads(r["top_tokens"])) == 8 and r["bag"] in {Path(b).name for b in bags} for r in rows)
    mined = load_dictionary(tmp_path / "mined.yaml", 1536)["mined"]
    assert set(mined.neurons) == {(int(r["layer"]), int(r["neuron"])) for r in rows} and mined.strength == 0.0
    assert {r["cluster"] for r in rows} == {"0", "1", "2"} and (tmp_path / "mining_tsne.png").stat().st_size > 1000
    assert "| layer | neuron |" in (tmp_path / "mining.md").read_text()
    ranked = tmp_path / "ranked"
    assert main([*bags, "--layers", ",".join(map(str, layers)), "--top", "200", "--keywords", "up", "--out",
                 str(ranked)]) == 0
    with open(ranked / "top_neurons.csv") as handle:
        scores = [float(r["keyword_score"]) for r in csv.DictReader(handle)]
    assert scores == sorted(scores, reverse=True)
    assert main([str(tmp_path / "no_such_bag"), "--out", str(tmp_path / "x")]) == 1


def test_a_namespaced_run_gives_the_same_metrics(evaluation, namespaced):
    plain_config, plain_out, _ = evaluation
    config, out, report = namespaced
    spaced = {r["condition"]: r for r in csv.DictReader((report.parent / "results.csv").open())}
    assert set(spaced) == {"baseline", "up_2.0"}
    for row in spaced.values():
        assert "/robot1/action_chunk" in bag_counts(row["bag"])  # recorded under the namespace
        plain_bag = plain_out / "bags" / Path(row["bag"]).name  # the same episode, recorded without one
        plain = episode_metrics(episode_from_bag(plain_bag), plain_config.horizon_steps)
        assert int(row["steps"]) == config.max_steps == plain["steps"]
        for key, value in plain.items():
            if key == "latency_ms":  # wall-clock latency varies run to run
                continue
            if isinstance(value, float):
                assert float(row[key]) == pytest.approx(value, abs=1e-6, nan_ok=True), key
            else:
                assert row[key] == str(value), key


def test_a_live_change_reaches_a_namespaced_node(tmp_path):
    os.environ.update(ROS_DOMAIN_ID=str(DOMAIN), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    data = yaml.safe_load((ROOT / "config" / "eval_ci.yaml").read_text())
    data.update(namespace="robot1", max_steps=16, conditions=[
        {"name": "baseline"}, {"name": "live_up", "live": {"at_step": 8, "strengths": {"up": 2.0}}}])
    path = tmp_path / "live.yaml"
    path.write_text(yaml.safe_dump(data))
    report = evaluate(EvalConfig.load(path), tmp_path / "out", progress=False)
    rows = {r["condition"]: r for r in csv.DictReader((report.parent / "results.csv").open())}
    steering = [float({kv.key: kv.value for kv in m.message.status[0].values}.get("strength.up", 0.0))
                for m in read_bag(rows["live_up"]["bag"], ["/steering_state"])]  # active concepts only
    assert steering[0] == 0.0 and steering[-1] == 2.0  # set through /robot1/vla_steering_node's service
