"""Evaluation at scale: a study's grid, its keyed results, and the CI sweep sharded over Ray workers.

The Ray runs happen inside a loopback-only network namespace (nothing leaves 127.0.0.0/8): the
installed ``evaluation`` with ``--workers 2`` (plain ``ray.init()``), the same with one policy server
batching for both workers, and Ray's local 2-node test cluster with one worker killed by its PID
mid-episode. Each must give the sequential run's rows and metrics (exactly, but for a batch's float
rounding with the server), every episode once, every bag readable.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from netns import loopback_namespace
from ros_harness import SOURCE_PATH, unique_domain_id, wait_for

from vla_steer_bringup.results import ResultStore
from vla_steer_bringup.study import Episode, EvalConfig, study_dictionary
from vla_steering.bags import read_bag
from vla_steering.dictionaries import load_dictionary

ROOT = Path(__file__).resolve().parents[1]
CI_SWEEP = ROOT / "config" / "eval_sweep_ci.yaml"
WALL_CLOCK = {"latency_ms", "bag"}  # what differs between runs of the same episode


def write_config(path: Path, **changes) -> Path:
    data = yaml.safe_load(CI_SWEEP.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_sweep_expands_to_the_grid_with_matched_random_controls(tmp_path):
    config = EvalConfig.load(write_config(tmp_path / "c.yaml", seeds=[1, 2], init_states=[0, 3], sweep={
        "concepts": ["up", "down"], "strengths": [1.0, 4.0], "random_controls": 2}))
    names = [c.name for c in config.conditions]
    assert names == ["baseline", "up_1.0", "up_4.0", "down_1.0", "down_4.0", "up_random0_1.0", "up_random0_4.0",
                     "up_random1_1.0", "up_random1_4.0", "down_random0_1.0", "down_random0_4.0",
                     "down_random1_1.0", "down_random1_4.0"]
    assert config.condition("down_random1_4.0").strengths == {"down_random1": 4.0}
    episodes = config.episodes()
    assert len(episodes) == len(set(episodes)) == 2 * 2 * len(names)  # init states x seeds x conditions
    assert episodes[0] == Episode("libero_spatial", 0, 0, "baseline", 1)
    assert episodes[0].name == "libero_spatial_t0_i0_baseline_s1"
    dictionary = load_dictionary(study_dictionary(config, tmp_path / "out"))
    for concept in ("up", "down"):
        source = dictionary[concept].by_layer()
        for i in range(2):
            control = dictionary[f"{concept}_random{i}"].by_layer()
            assert {layer: len(n) for layer, n in control.items()} == {layer: len(n) for layer, n in source.items()}
            assert all(not set(control[layer]) & set(source[layer]) for layer in source)
    assert dictionary["up_random0"].neurons != dictionary["up_random1"].neurons


@pytest.mark.parametrize("change, message", [
    ({"sweep": {"concepts": ["up"]}}, "needs concepts and strengths"),
    ({"sweep": {"concepts": ["up"], "strengths": [1], "randoms": 1}}, "unknown keys"),
    ({"conditions": [{"name": "baseline"}, {"name": "up_2.0", "strengths": {"up": 1.0}}]}, "condition names repeat"),
    ({"seeds": [7, 7]}, "seeds repeat"),
    ({"workers": 2}, "unknown keys"),
])
def test_a_bad_study_is_refused_with_the_reason(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        EvalConfig.load(write_config(tmp_path / "c.yaml", **change))


def test_a_random_control_of_a_concept_the_dictionary_lacks_is_refused(tmp_path):
    config = EvalConfig.load(write_config(tmp_path / "c.yaml", sweep={
        "concepts": ["nope"], "strengths": [1.0], "random_controls": 1}))
    with pytest.raises(ValueError, match="'nope' is not in"):
        study_dictionary(config, tmp_path)


def test_results_are_kept_once_per_key_and_whole(tmp_path):
    store = ResultStore(tmp_path)
    a, b = Episode("s", 0, 0, "baseline", 7), Episode("s", 0, 0, "up_2.0", 7)
    row = {"suite": "s", "task_id": 0, "init_state": 0, "condition": "baseline", "seed": 7, "steps": 8}
    store.put(a, row)
    store.put(a, row | {"steps": 9})  # again: replaced, not added
    assert store.rows([b, a]) == [row | {"steps": 9}] and store.get(b) is None
    assert sorted(p.name for p in store.folder.iterdir()) == [f"{a.name}.json"]  # no temporary left
    store.path(b).write_text(json.dumps(row))  # a's row under b's name
    with pytest.raises(ValueError, match="another episode's row"):
        store.get(b)


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The CI sweep run one episode after another, without Ray."""
    from vla_steer_bringup.evaluation import evaluate

    os.environ.update(ROS_DOMAIN_ID=str(unique_domain_id()), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    out = tmp_path_factory.mktemp("sequential")
    evaluate(EvalConfig.load(CI_SWEEP), out, progress=False)
    return out


def rows_by_key(out: Path) -> dict[tuple, dict]:
    rows = ResultStore(out).rows(EvalConfig.load(CI_SWEEP).episodes())
    return {(r["task_id"], r["init_state"], r["condition"], r["seed"]): r for r in rows}


def assert_same_rows(out: Path, reference: Path, rounding: float = 0.0) -> None:
    """Every episode once, each with the reference's metrics: exactly, or within ``rounding`` of each number."""
    rows, expected = rows_by_key(out), rows_by_key(reference)
    assert len(rows) == len(expected) == 4
    for key, row in rows.items():
        want = {k: v for k, v in expected[key].items() if k not in WALL_CLOCK}
        if rounding:
            want = {k: pytest.approx(v, abs=rounding) if isinstance(v, float) else v for k, v in want.items()}
        assert {k: v for k, v in row.items() if k not in WALL_CLOCK} == want, key
    table = (out / "report" / "results.csv").read_text().splitlines()
    assert len(table) == 1 + 4  # the merged table: a header and one row per episode, none twice


def rigs_started(out: Path) -> int:
    """How many simulation rigs (bridge, node and recorder, kept across episodes) the run started."""
    return len(list((out / "logs").glob("rig_*.sim_bridge.log")))


def test_the_sequential_run_keeps_one_rig_for_all_its_episodes(sequential):
    """One rig for the 4 episodes, and each bag is logged on its own episode's sim time (which starts again at 0
    each episode): the instruction and the start event no later than the first image, so every recorded
    observation reads back with its instruction (what mining and counterfactual replay take)."""
    from vla_steering import contract
    from vla_steering_node.counterfactual import recorded_steps

    bags = sorted((sequential / "bags").iterdir())
    assert rigs_started(sequential) == 1 and len(bags) == 4
    for bag in bags:
        first = {}
        for m in read_bag(bag):
            first.setdefault(m.topic, m.timestamp_ns)
        image = first[contract.camera("agentview").in_bag]
        assert first[contract.INSTRUCTION.in_bag] <= image and first[contract.EPISODE_EVENTS.in_bag] <= image, bag
        steps = list(recorded_steps(bag, ["agentview", "wrist"], "libero",
                                    ["gripper_finger_left", "gripper_finger_right"]))
        assert steps and all(observation.instruction for _, observation, _ in steps), bag.name


def run_on_a_test_cluster(prefix: list[str], out: Path) -> subprocess.Popen:
    env = dict(os.environ, ROS_DOMAIN_ID=str(unique_domain_id()), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               RAY_USAGE_STATS_ENABLED="0")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), SOURCE_PATH])
    return subprocess.Popen([*prefix, sys.executable, str(Path(__file__).parent / "ray_sweep_run.py"),
                             str(CI_SWEEP), str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_two_ray_workers_of_the_installed_runner_give_the_sequential_rows_and_metrics(sequential, fresh_install,
                                                                                      tmp_path):
    """The installed ``evaluation`` (outside the tree, PYTHONPATH unset, the preset found by name) with
    ``--workers 2``: plain ``ray.init()`` on this machine."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH")}
    env.update(ROS_DOMAIN_ID=str(unique_domain_id()), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               RAY_USAGE_STATS_ENABLED="0")
    with loopback_namespace() as prefix:
        run = subprocess.run([*prefix, str(fresh_install / "bin" / "evaluation"), "eval_sweep_ci", "--workers", "2",
                              "--out", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert_same_rows(tmp_path, sequential)
    assert rigs_started(tmp_path) == 2  # one per worker, kept across its episodes
    assert "up_2.0" in (tmp_path / "report" / "report.md").read_text()


def test_one_policy_server_batching_for_two_workers_gives_the_sequential_rows(sequential, fresh_install,
                                                                             tmp_path):
    """``--workers 2 --batch 2`` (installed): both rigs' steering nodes send their observations to one
    policy server, which answers every chunk they publish; the rows are the sequential run's (the
    metrics up to a batch's float rounding, when two observations happen to share a forward)."""
    from vla_steering import contract

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH")}
    env.update(ROS_DOMAIN_ID=str(unique_domain_id()), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               RAY_USAGE_STATS_ENABLED="0")
    with loopback_namespace() as prefix:
        run = subprocess.run([*prefix, str(fresh_install / "bin" / "evaluation"), "eval_sweep_ci", "--workers", "2",
                              "--batch", "2", "--out", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert_same_rows(tmp_path, sequential, rounding=1e-4)
    assert rigs_started(tmp_path) == 2
    served = json.loads((tmp_path / "logs" / "policy_server.json").read_text())["batch_sizes"]
    chunks = sum(1 for bag in (tmp_path / "bags").iterdir() for m in read_bag(bag)
                 if m.topic == contract.ACTION_CHUNK.in_bag)
    assert chunks > 0 and sum(int(size) * count for size, count in served.items()) == chunks, served
    for log in (tmp_path / "logs").glob("rig_*.vla_steering_node.log"):
        assert "(policy server policy_server_" in log.read_text(), log


def test_a_policy_server_that_dies_fails_the_study_at_once_with_the_reason(fresh_install, tmp_path):
    """Every node's observations go to the server: killed mid-episode, the study stops with the reason
    (not after the episode timeout), its nodes stopped, what finished kept."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH")}
    env.update(ROS_DOMAIN_ID=str(unique_domain_id()), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               RAY_USAGE_STATS_ENABLED="0")
    with loopback_namespace() as prefix:
        run = subprocess.Popen([*prefix, str(fresh_install / "bin" / "evaluation"), "eval_sweep_ci", "--workers", "2",
                                "--batch", "2", "--out", str(tmp_path)], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        victim, deadline = None, time.monotonic() + 600
        while victim is None and time.monotonic() < deadline and run.poll() is None:
            if any(f.stat().st_size > 20_000 for f in (tmp_path / "bags").glob("*/*.mcap")):  # an episode runs
                victim = next((int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                               and _cmdline(p).startswith(b"ray::PolicyServer")), None)
                if victim is not None:
                    os.kill(victim, signal.SIGKILL)
                    killed = time.monotonic()
            time.sleep(0.5)
        output, _ = run.communicate(timeout=300)
    assert victim is not None, "the server was not found mid-episode: " + output[-3000:]
    assert run.returncode == 1 and "the policy server died" in output, output[-3000:]
    assert time.monotonic() - killed < 120
    left = lambda: [p.name for p in Path("/proc").iterdir()  # noqa: E731  the rigs' nodes name the output folder
                    if p.name.isdigit() and str(tmp_path).encode() in _cmdline(p)]
    assert wait_for(lambda: not left(), 30), left()


def _cmdline(process: Path) -> bytes:
    try:
        return (process / "cmdline").read_bytes()
    except OSError:
        return b""


def worker_recording(bag: Path) -> int | None:
    """The PID of the Ray actor process running an episode (its process title names the task) whose rig's
    recorder (a child of it) has a file of ``bag`` open."""
    def parent(pid: str) -> str:
        status = Path(f"/proc/{pid}/status").read_text()
        return next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:"))

    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or not any(str(link.readlink()).startswith(str(bag))
                                                   for link in (entry / "fd").iterdir()):
                continue
            worker = parent(entry.name)
            if Path(f"/proc/{worker}/cmdline").read_bytes().startswith(b"ray::EpisodeWorker.run"):
                return int(worker)
        except OSError:
            continue
    return None


def test_a_worker_killed_mid_episode_on_a_two_node_cluster_loses_nothing_and_runs_nothing_twice(sequential,
                                                                                                tmp_path):
    with loopback_namespace() as prefix:
        run = run_on_a_test_cluster(prefix, tmp_path)
        victim, deadline = None, time.monotonic() + 600
        while victim is None and time.monotonic() < deadline and run.poll() is None:
            recording = [b for b in (tmp_path / "bags").glob("*_s*") if not (b / "metadata.yaml").exists()
                         and any(f.stat().st_size > 20_000 for f in b.glob("*.mcap"))]  # an image recorded
            worker = worker_recording(recording[0]) if recording else None
            if worker is not None:
                victim = worker
                os.kill(victim, signal.SIGKILL)
            time.sleep(0.5)
        output, _ = run.communicate(timeout=1200)
    assert victim is not None, "no episode was caught mid-run: " + output[-3000:]
    assert run.returncode == 0, output[-4000:]
    cluster = json.loads(next(line for line in output.splitlines() if line.startswith('{"nodes"')))
    assert cluster == {"nodes": 2, "addresses": ["127.0.0.1"]}
    assert_same_rows(tmp_path, sequential)
    assert rigs_started(tmp_path) == 3  # the two workers' and the replacement's
    kept = list((tmp_path / "bags").glob("*.interrupted_*"))
    assert len(kept) == 1, sorted(p.name for p in (tmp_path / "bags").iterdir())
    finished = [b for b in (tmp_path / "bags").iterdir() if ".interrupted_" not in b.name]
    assert len(finished) == 4
    list(read_bag(kept[0]))  # the interrupted bag is readable (what it holds depends on when the kill came)
    for bag in finished:
        assert sum(1 for _ in read_bag(bag)) > 0
