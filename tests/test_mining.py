"""Activation mining of two sets of runs (bags of 'move up' runs against bags of 'move down' runs) on the demo VLA
(real SmolLM2 weights): the ranking, its keyword-family hits against chance, and the page."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from vla_steering import contract
from vla_steering.bags import TYPESTORE, BagWriter
from vla_steering.dictionaries import load_dictionary
from vla_steering.policies.demo_vla import DIRECTIONS, render_scene

GRIPPER = ["gripper_finger_left", "gripper_finger_right"]


def write_run_bag(path, instruction: str, chunks: int, seed: int) -> str:
    """A bag as the recorder writes one run: per control step both cameras, the EE pose, the joint states and
    the action chunk, stamped alike; the instruction first. Serialised by rosbags (the reader's library)."""
    types = TYPESTORE.types
    header = lambda sec, frame="": types["std_msgs/msg/Header"](  # noqa: E731
        stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=0), frame_id=frame)
    floats = lambda values: np.asarray(values, np.float64)  # noqa: E731
    topics = [contract.camera(c) for c in contract.CAMERAS] + [contract.EE_POSE, contract.JOINT_STATES,
                                                               contract.INSTRUCTION, contract.ACTION_CHUNK]
    writer = BagWriter(path, [(t.in_bag, t.msgtype) for t in topics])

    def write(topic, ns: int, message) -> None:
        writer.write(topic.in_bag, ns, TYPESTORE.serialize_cdr(message, topic.msgtype))

    write(contract.INSTRUCTION, 1, types["std_msgs/msg/String"](data=instruction))
    rng = np.random.default_rng(seed)
    geometry = "geometry_msgs/msg/"
    for step in range(chunks):
        ns, sec = (step + 1) * 10**9, step + 1
        scene = render_scene(("left", "right")[(seed + step) % 2], "red", rng)
        for name in contract.CAMERAS:
            write(contract.camera(name), ns, types["sensor_msgs/msg/Image"](
                header=header(sec, name), height=scene.shape[0], width=scene.shape[1], encoding="rgb8",
                is_bigendian=0, step=scene.shape[1] * 3, data=scene.reshape(-1)))
        pose = types[geometry + "Pose"](position=types[geometry + "Point"](x=0.1, y=0.0, z=0.9),
                                        orientation=types[geometry + "Quaternion"](x=1.0, y=0.0, z=0.0, w=0.0))
        write(contract.EE_POSE, ns, types[geometry + "PoseStamped"](header=header(sec, "world"), pose=pose))
        write(contract.JOINT_STATES, ns, types["sensor_msgs/msg/JointState"](
            header=header(sec), name=GRIPPER, position=floats([0.02, -0.02]), velocity=floats([]), effort=floats([])))
        point = types["trajectory_msgs/msg/JointTrajectoryPoint"](
            positions=floats([0.0] * 7), velocities=floats([]), accelerations=floats([]), effort=floats([]),
            time_from_start=types["builtin_interfaces/msg/Duration"](sec=0, nanosec=0))
        write(contract.ACTION_CHUNK, ns, types["trajectory_msgs/msg/JointTrajectory"](
            header=header(sec), joint_names=list("abcdefg"), points=[point]))
    writer.close()
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    up = [write_run_bag(folder / f"up_{i}", text, 4, i) for i, text in enumerate(DIRECTIONS["up"][0])]
    down = [write_run_bag(folder / f"down_{i}", text, 4, 10 + i) for i, text in enumerate(DIRECTIONS["down"][0])]
    return up, down


LAYERS = ",".join(str(x) for x in range(15, 30))  # the later half of SmolLM2's 30 layers


def test_up_runs_against_down_runs_rank_the_up_and_down_token_families_above_chance(runs, tmp_path):
    """The difference of decision-token activations between the runs, weighted by what each neuron's value vector
    writes toward 'up' rather than 'down', lists neurons of those token families far above chance. The plain
    difference does not (measured: 1 of 100, p ~0.5): the demo's behaviour difference is not carried by the
    up/down-family neurons' activations alone."""
    from vla_steering.capture import NeuronStats
    from vla_steering.policies import make_policy
    from vla_steering.policies.base import SteeredPolicy
    from vla_steering_node.mining import enrichment, main, mined_projection, ranking

    up, down = runs
    out = tmp_path / "attributed"
    assert main([*up, "--versus", *down, "--layers", LAYERS, "--position", "last", "--attribute", "up", "down",
                 "--keywords", "up", "down", "--top", "100", "--format", "reference", "--out", str(out)]) == 0
    page = (out / "mining.md").read_text()
    summary = next(line for line in page.splitlines() if "listed neurons have" in line)
    hits, p_value = int(summary.split(" of the ")[0]), float(summary.split("p = ")[1].split(" ")[0])
    with open(out / "top_neurons.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 100 and sum(float(r["keyword_score"]) > 0 for r in rows) == hits
    assert {r["instruction"] for r in rows} <= set(DIRECTIONS["up"][0])  # the maximising frames are set A's
    assert all(len(json.loads(r["top_tokens"])) == 8 for r in rows)
    mined = load_dictionary(out / "mined.yaml", 1536)["mined"]  # written in the paper's format, read back
    assert "format" not in yaml.safe_load((out / "mined.yaml").read_text())
    assert set(mined.neurons) == {(int(r["layer"]), int(r["neuron"])) for r in rows}
    stats, versus = NeuronStats.load(out / "neuron_stats.npz"), NeuronStats.load(out / "neuron_stats_versus.npz")
    assert stats.observations == versus.observations == 20 and stats.layers == tuple(range(15, 30))
    projection = mined_projection(SteeredPolicy(make_policy("demo")), stats)
    plain = enrichment(projection, [projection.row(x, n) for x, n, _ in ranking(stats, versus, None, 100)],
                       ["up", "down"])
    print(f"attributed: {summary} | plain difference: {plain.summary(['up', 'down'])}")
    assert p_value < 0.05 and hits >= 3 * plain.chance * plain.listed


def test_mining_refuses_attribution_without_a_second_set(runs, tmp_path, capsys):
    from vla_steering_node.mining import main

    up, _ = runs
    assert main([up[0], "--attribute", "up", "down", "--out", str(tmp_path)]) == 1
    assert "--attribute needs --versus" in capsys.readouterr().err
    assert main([up[0], "--versus", up[1], "--attribute", "up", "zzqx", "--out", str(tmp_path)]) == 1
    assert "no token of the vocabulary is in the family of 'zzqx'" in capsys.readouterr().err


def test_a_contrast_from_two_sets_of_bags_is_their_observations_difference_and_steers(runs, tmp_path):
    from vla_steering.contrast import contrast
    from vla_steering.dictionaries import InterventionDictionary, load_dictionary
    from vla_steering.policies import make_policy, steer
    from vla_steering.policies.base import SteeredPolicy
    from vla_steering_node.bag_contrast import main, recorded_observations

    up, down = runs
    assert main(["--a", *up, "--b", *down, "--layers", "24,25", "--name", "up_down", "--out", str(tmp_path)]) == 0
    concept = load_dictionary(tmp_path / "up_down.yaml", 1536)["up_down"]
    assert concept.mode == "add" and concept.strength == 0.0 and concept.layers == (24, 25)
    demo = make_policy("demo")
    cameras = ["agentview", "wrist"]
    set_a, set_b = recorded_observations(up, cameras, "libero"), recorded_observations(down, cameras, "libero")
    assert len(set_a) == len(set_b) == 20 and {o.instruction for o in set_a} == set(DIRECTIONS["up"][0])
    expected = contrast(SteeredPolicy(demo), set_a, set_b, [24, 25])
    for layer, difference in zip(expected.layers, expected.difference, strict=True):
        np.testing.assert_allclose(concept.directions[layer], difference / np.linalg.norm(difference), atol=1e-9)
    report = (tmp_path / "contrast.md").read_text()
    assert "cos with `up`" in report and "| 25 |" in report
    steered = steer(demo, InterventionDictionary({"up_down": concept}))
    observation = recorded_observations([down[0]], cameras, "libero")[0]
    before = steered.act(observation).actions[0, 2]
    steered.engine.set_strength("up_down", float(expected.norms[1]))
    assert steered.act(observation).actions[0, 2] > before + 0.1  # a 'move down' frame, pushed up
    assert main(["--a", str(tmp_path / "none"), "--b", *down, "--layers", "25", "--out", str(tmp_path)]) == 1
