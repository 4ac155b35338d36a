"""Probes and sparse autoencoders on the demo VLA's residual streams (real SmolLM2 weights): held-out R² well
above a shuffled control; an SAE that reconstructs held-out data, has motion-word features, and whose 'up'/'down'
feature's decoder direction moves dz more than other features' directions do; the CLI pages."""

from __future__ import annotations

import numpy as np
import pytest

from vla_steering.dictionaries import InterventionDictionary, load_dictionary

LAYERS = [5, 25]
SAE_LAYER = 25
FVU_BOUND = 0.15  # measured 0.04-0.05 held-out (TopK and BatchTopK, 256 features, k = 8, 216 samples to fit)


def observations(scenes_per_instruction: int = 1):
    from vla_steering.policies import Observation
    from vla_steering.policies.demo_vla import render_scene, training_instructions

    out = []
    for i, (text, _, _) in enumerate(training_instructions()):
        for j in range(scenes_per_instruction):
            image = render_scene(("left", "right")[(i + j) % 2], "red", np.random.default_rng(1000 * i + j))
            out.append(Observation({"agentview": image}, np.zeros(8, np.float32), text.format(color="red")))
    return out


@pytest.fixture(scope="module")
def demo():
    from vla_steering.policies import make_policy

    return make_policy("demo")


@pytest.fixture(scope="module")
def dataset(demo):
    from vla_steering.capture import record_residuals
    from vla_steering.policies import SteeredPolicy

    obs = observations(scenes_per_instruction=2)
    residuals, actions = record_residuals(SteeredPolicy(demo), obs, LAYERS)
    return obs, residuals, actions


def test_probes_read_the_action_from_the_residual_and_the_shuffled_control_does_not(demo, dataset, tmp_path):
    from vla_steering.probes import fit_probes, write_report

    _, residuals, actions = dataset
    result = fit_probes(residuals, actions, LAYERS, demo.action_space.dims)
    varied = [j for j, d in enumerate(result.dims) if d in ("dx", "dy", "dz", "gripper")]
    print("held-out R2", np.round(result.r2, 3).tolist(), "control", np.round(result.control_r2, 3).tolist())
    # measured with 270 observations (189 to fit): R² 0.86-0.99, the control within 0.06 of 0
    assert np.all(result.r2[:, varied] > 0.7)
    assert np.all(np.abs(result.control_r2[:, varied]) < 0.2)
    assert np.all(result.r2[1, varied] >= result.r2[0, varied] - 0.05)  # layer 25 reads it at least as well as 5
    assert np.all(np.isnan(result.r2[:, [3, 4, 5]]))  # the demo never rotates: no R² for constant targets
    page = write_report(result, tmp_path).read_text()
    assert "| 25 |" in page and (tmp_path / "probes_r2.png").stat().st_size > 1000


@pytest.mark.parametrize("kind", ["topk", "batchtopk"])
def test_an_sae_reconstructs_held_out_activations_and_has_motion_word_features(dataset, kind):
    from vla_steering.sae import dead_fraction, fraction_of_variance_unexplained, top_samples, train_sae

    obs, residuals, _ = dataset
    data = residuals[:, LAYERS.index(SAE_LAYER)]
    order = np.random.default_rng(0).permutation(len(data))
    held_out, train = order[: len(data) // 5], order[len(data) // 5:]
    trained = train_sae(data[train], 256, 8, kind, steps=1500)
    fvu = fraction_of_variance_unexplained(trained.sae, data[held_out])
    print(f"{kind}: held-out FVU {fvu:.4f}, dead {dead_fraction(trained.sae, data[held_out]):.1%}, "
          f"{trained.seconds:.1f} s")
    assert fvu < FVU_BOUND
    words = ("up", "down", "left", "right", "forward", "back")
    dominated = []
    for feature in range(256):
        top = top_samples(trained.sae, data, feature, 10)
        if len(top) >= 5:
            for word in words:
                if np.mean([word in obs[i].instruction.split() for i in top]) >= 0.8:
                    dominated.append((feature, word))
    assert dominated, "no feature's top instructions are dominated by one motion word"


def test_steering_up_and_down_features_moves_dz_more_than_lateral_features_do(demo, dataset):
    """Features whose top instructions say 'up' ('down') raise (lower) dz when their decoder direction is added;
    features of 'left' / 'right' / 'forward' instructions, added alike, move dz much less."""
    from vla_steering.policies import SteeredPolicy, steer
    from vla_steering.sae import codes, feature_concept, top_samples, train_sae

    obs, residuals, _ = dataset
    data = residuals[:, LAYERS.index(SAE_LAYER)]
    sae = train_sae(data, 256, 8, "topk", steps=1500).sae
    activation = codes(sae, data)
    vertical, lateral = [], []  # (feature, sign of the dz it should cause, strength)
    for feature in range(activation.shape[1]):
        top = top_samples(sae, data, feature, 10)
        if len(top) < 5:
            continue
        strength = 2.0 * float(activation[top, feature].mean())  # twice its typical activation where it fires
        for word, sign, group in (("up", 1.0, vertical), ("down", -1.0, vertical), ("left", 0.0, lateral),
                                  ("right", 0.0, lateral), ("forward", 0.0, lateral)):
            if np.mean([word in obs[i].instruction.split() for i in top]) >= 0.8:
                group.append((feature, sign, strength))
    assert len(vertical) >= 3 and len(lateral) >= 3, (vertical, lateral)
    held_out = [o for o in observations()[::9] if not any(w in o.instruction.split() for w in ("up", "down"))][:8]
    base = np.array([SteeredPolicy(demo).act(o).actions[0, 2] for o in held_out])

    def dz_change(feature: int, strength: float) -> float:
        concept = feature_concept(sae, feature, "f", SAE_LAYER, None, strength)
        steered = steer(demo, InterventionDictionary({"f": concept}), max_abs_strength=1e4)
        try:
            return float(np.mean([steered.act(o).actions[0, 2] for o in held_out] - base))
        finally:
            steered.engine.remove()

    signed = [sign * dz_change(f, s) for f, sign, s in vertical[:6]]
    sideways = [abs(dz_change(f, s)) for f, _, s in lateral[:6]]
    print(f"signed dz change of up/down features {np.round(signed, 3)} (mean {np.mean(signed):.3f}); "
          f"|dz change| of lateral features {np.round(sideways, 3)} (mean {np.mean(sideways):.3f})")
    assert np.mean(signed) > 2.0 * np.mean(sideways) and np.mean(signed) > 0.05


def test_the_sae_latent_difference_of_up_and_down_steers_dz_more_than_random_directions(demo, dataset):
    """The decoder's image of mean z('up' instructions) - mean z('down' ones), added at the raw contrast's norm,
    raises dz on held-out non-vertical instructions more than random directions of that norm do."""
    from vla_steering.dictionaries import Concept
    from vla_steering.policies import SteeredPolicy, steer
    from vla_steering.sae import latent_difference, train_sae

    obs, residuals, _ = dataset
    data = residuals[:, LAYERS.index(SAE_LAYER)]
    sae = train_sae(data, 256, 8, "topk", steps=1500).sae
    words = [o.instruction.split() for o in obs]
    up = data[[i for i, w in enumerate(words) if "up" in w]]
    down = data[[i for i, w in enumerate(words) if "down" in w]]
    _, direction = latent_difference(sae, up, down)
    raw = up.mean(axis=0) - down.mean(axis=0)
    cosine = float(direction @ raw / np.linalg.norm(direction) / np.linalg.norm(raw))
    held_out = [o for o in observations()[::9] if not any(w in o.instruction.split() for w in ("up", "down"))][:8]
    base = np.array([SteeredPolicy(demo).act(o).actions[0, 2] for o in held_out])

    def dz_change(vector: np.ndarray) -> np.ndarray:
        concept = Concept("d", (), mode="add", directions={SAE_LAYER: tuple(vector)})
        steered = steer(demo, InterventionDictionary({"d": concept}))
        steered.engine.set_strength("d", float(np.linalg.norm(raw)))
        try:
            return np.array([steered.act(o).actions[0, 2] for o in held_out]) - base
        finally:
            steered.engine.remove()

    effect = dz_change(direction)
    rng = np.random.default_rng(0)
    random_means = [dz_change(rng.normal(size=len(raw))).mean() for _ in range(5)]
    half_ci = 1.96 * effect.std(ddof=1) / np.sqrt(len(effect))
    print(f"SAE latent-difference direction: cos with mean_up - mean_down {cosine:.3f}; dz {effect.mean():+.3f} "
          f"+- {half_ci:.3f} (95% CI); random directions {np.round(random_means, 3)}")
    assert cosine > 0.5
    assert effect.mean() - half_ci > max(random_means)


def test_the_cli_writes_the_sae_page_and_concepts_then_contrasts_pairs_through_it(tmp_path):
    from vla_steering.cli import main

    code = main(["sae", "--layer", str(SAE_LAYER), "--features", "64", "--k", "4", "--steps", "200",
                 "--scenes", "1", "--feature", "3", "--out", str(tmp_path)])
    assert code == 0
    page = (tmp_path / "sae.md").read_text()
    assert "held-out fraction of variance unexplained" in page and "| feature |" in page
    assert (tmp_path / "sae_gallery.png").stat().st_size > 1000 and (tmp_path / "sae.pt").exists()
    concept = load_dictionary(tmp_path / "sae_3.yaml", 1536)["sae_3"]
    assert concept.mode == "add" and concept.layers == (SAE_LAYER,)

    (tmp_path / "pairs.yaml").write_text("up_down: {a: [move up, lift it], b: [move down, lower it]}\n"
                                         "left_right: {a: [move left], b: [move right]}\n")
    out = tmp_path / "contrast"
    assert main(["contrast", "--pairs", str(tmp_path / "pairs.yaml"), "--layers", str(SAE_LAYER), "--scenes", "1",
                 "--sae", str(tmp_path / "sae.pt"), "--name", "motions", "--out", str(out)]) == 0
    concepts = load_dictionary(out / "motions.yaml", 1536).concepts
    assert sorted(concepts) == ["left_right", "left_right_sae", "up_down", "up_down_sae"]
    assert all(c.mode == "add" and c.layers == (SAE_LAYER,) for c in concepts.values())
    report = (out / "contrast.md").read_text()
    assert "## `left_right`" in report and "Off-diagonal" in report
    assert (out / f"cross_cosines_L{SAE_LAYER}.png").stat().st_size > 1000
    # an SAE used at a layer or position it was not trained on is refused, with the reason
    assert main(["contrast", "--a", "move up", "--b", "move down", "--layers", "5", "--scenes", "1",
                 "--sae", str(tmp_path / "sae.pt"), "--out", str(out)]) == 1
