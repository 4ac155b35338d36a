"""``vla-steer``: the offline command line (project, search, cluster, dictionaries, effects).

Examples::

    vla-steer project --model smollm2-135m --out artifacts/smollm2
    vla-steer search --projection artifacts/smollm2 --keywords up --top-n 20 \\
        --write artifacts/up.yaml --concept up --strength 5
    vla-steer cluster --model smollm2-135m --projection artifacts/smollm2 --keywords up down --candidates 60 -k 2
    vla-steer validate --dictionary artifacts/up.yaml --model smollm2-135m
    vla-steer act --policy demo --instruction "move left" --dictionary config/demo_vla_dictionary.yaml \\
        --concept up --strength 2
    vla-steer effect --model smollm2-135m --dictionary artifacts/up.yaml --concept up --strength 5 \\
        --prompt "The robot lifts the cup"
    vla-steer reindex bags/run_20261201_120000
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _layers(text: str | None) -> list[int] | None:
    return None if not text else [int(x) for x in text.split(",")]


def cmd_project(args: argparse.Namespace) -> int:
    from vla_steering.projection import project_value_vectors, source_from_model, tokenizer_decoder

    if args.openpi:
        from vla_steering.openpi_params import load_param_tree, openpi_source

        source = openpi_source(load_param_tree(args.openpi), expert=args.expert, name=str(args.openpi))
        tokenizer = None
    else:
        from vla_steering.loading import load_language_model

        model, tokenizer = load_language_model(args.model)
        source = source_from_model(model, name=str(args.model))
    projection = project_value_vectors(source, layers=_layers(args.layers), top_k=args.top_k,
                                       variant=args.variant, memory_budget_mb=args.memory_mb)
    if tokenizer is not None:
        projection.attach_tokens(tokenizer_decoder(tokenizer))
    npz, txt = projection.save(args.out)
    print(f"projected {len(projection)} neurons -> {npz} and {txt}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from vla_steering.concepts import concept_from_matches, rank_neurons
    from vla_steering.dictionaries import InterventionDictionary, load_dictionary, save_dictionary
    from vla_steering.projection import Projection

    projection = Projection.load(args.projection)
    matches = rank_neurons(projection, args.keywords, match=args.match, sign=args.sign, top_n=args.top_n,
                           min_score=args.min_score)
    for m in matches:
        print(f"L{m.layer:<3} N{m.neuron:<6} flat {m.flat_index:<8} score {m.score:.3f}  {list(m.tokens)}")
    if args.write:
        concept = concept_from_matches(args.concept or args.keywords[0], matches, mode=args.mode,
                                       strength=args.strength,
                                       description=f"{args.match} match of {args.keywords} in {args.sign} tokens")
        meta = projection.meta
        if Path(args.write).exists():  # add the concept to the dictionary already there
            dictionary = load_dictionary(args.write, meta.get("intermediate_size")).with_concepts(concept)
        else:
            dictionary = InterventionDictionary({concept.name: concept}, model_name=meta.get("model", ""),
                                                num_layers=meta.get("num_layers"),
                                                intermediate_size=meta.get("intermediate_size"))
        print(f"wrote {save_dictionary(dictionary, args.write, args.format)}")
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    import numpy as np

    from vla_steering.concepts import cluster_neurons, keyword_scores
    from vla_steering.loading import load_language_model
    from vla_steering.projection import Projection, source_from_model

    projection = Projection.load(args.projection)
    model, _ = load_language_model(args.model)
    source = source_from_model(model)
    rows = None
    if args.keywords:
        scores = keyword_scores(projection, args.keywords)
        rows = np.argsort(-scores, kind="stable")[: args.candidates]
    rows = np.arange(len(projection)) if rows is None else rows
    labels = cluster_neurons(source, projection, args.k, rows=rows, space=args.space, seed=args.seed)
    for cluster in range(args.k):
        members = rows[labels == cluster]
        print(f"cluster {cluster}: {len(members)} neurons")
        for r in members[: args.show]:
            print(f"  L{projection.layer[r]} N{projection.neuron[r]}  {list(projection.pos_tokens[r][:6])}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from vla_steering.dictionaries import load_dictionary

    if args.model:
        from vla_steering.anatomy import primary_stack
        from vla_steering.loading import load_language_model
        from vla_steering.steering import check_fits

        model, _ = load_language_model(args.model)
        dictionary = load_dictionary(args.dictionary, primary_stack(model).intermediate_size)
        check_fits(model, dictionary)
    else:
        dictionary = load_dictionary(args.dictionary, args.intermediate_size)
        dictionary.validate({None: (args.num_layers, args.intermediate_size)})
    for c in dictionary.concepts.values():
        print(f"{c.name}: {c.summary}, mode {c.mode}, strength {c.strength}")
    print("valid")
    return 0


def cmd_control(args: argparse.Namespace) -> int:
    from vla_steering.dictionaries import load_dictionary, random_control, save_dictionary

    dictionary = load_dictionary(args.dictionary, args.intermediate_size)
    control = random_control(dictionary, args.concept, args.name or f"{args.concept}_random", seed=args.seed)
    save_dictionary(dictionary.with_concepts(control), args.dictionary)
    print(f"added {control.name}: {len(control.neurons)} random neurons in layers {list(control.layers)}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from vla_steering.dictionaries import load_dictionary, save_dictionary

    dictionary = load_dictionary(args.dictionary, args.intermediate_size)
    print(f"wrote {save_dictionary(dictionary, args.out, args.to)}")
    return 0


def cmd_effect(args: argparse.Namespace) -> int:
    from vla_steering.anatomy import primary_stack
    from vla_steering.dictionaries import load_dictionary
    from vla_steering.effects import next_token_effect
    from vla_steering.loading import load_language_model
    from vla_steering.steering import SteeringEngine

    model, tokenizer = load_language_model(args.model)
    dictionary = load_dictionary(args.dictionary, primary_stack(model).intermediate_size)
    engine = SteeringEngine(model, dictionary)
    engine.set_strengths({name: 0.0 for name in engine.concepts})
    effect = next_token_effect(model, tokenizer, engine, args.prompt, {args.concept: args.strength}, top=args.top)
    print(f"prompt: {args.prompt!r}; {args.concept} at {args.strength}")
    print(f"{'unsteered':<34} {'steered':<34}")
    for (tb, pb), (ts, ps) in zip(effect.baseline, effect.steered):
        print(f"{tb!r:<24} {pb:8.4f}  {ts!r:<24} {ps:8.4f}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from vla_steering.loading import resolve_model_dir

    for name in args.models:
        print(f"{name}: {resolve_model_dir(name)}")
    if not args.skip_demo_vla:
        from vla_steering.policies.demo_vla import DemoVLAConfig, load_demo_vla

        load_demo_vla()
        print(f"demo VLA: trained and cached ({DemoVLAConfig().key()})")
    return 0


def cmd_act(args: argparse.Namespace) -> int:
    import numpy as np

    from vla_steering.policies import POLICY_OPTIONS, Observation, SteeredPolicy, make_policy, steer_from_file

    if args.image:
        from PIL import Image

        image = np.asarray(Image.open(args.image).convert("RGB"))
    else:
        from vla_steering.policies.demo_vla import render_scene

        image = render_scene(args.scene, "red", np.random.default_rng(args.seed))
    state = np.asarray(args.state, np.float32) if args.state else np.zeros(8, np.float32)
    observation = Observation({"camera": image}, state, args.instruction)
    given = {"unnorm_key": args.unnorm_key, "center_crop_scale": args.center_crop_scale, "dtype": args.dtype,
             "seed": args.noise_seed, "tokenizer": args.tokenizer, "asset_id": args.asset_id, "vlm": args.vlm}
    options = {k: v for k, v in given.items() if v is not None and k in POLICY_OPTIONS.get(args.policy, {})}
    ignored = sorted(k for k, v in given.items() if v is not None and k not in options)
    if ignored:
        raise ValueError(f"policy {args.policy!r} takes no {', '.join(ignored)}")
    policy = make_policy(args.policy, args.checkpoint, args.device, **options)
    np.set_printoptions(precision=3, suppress=True)
    print(f"action space {policy.action_space.name}: {list(policy.action_space.dims)}")
    print("unsteered:\n", SteeredPolicy(policy).act(observation).actions)
    if args.dictionary:
        steered = steer_from_file(policy, args.dictionary)
        steered.engine.set_strengths({name: 0.0 for name in steered.engine.concepts} | {args.concept: args.strength})
        print(f"steered ({args.concept} at {args.strength}, {steered.engine.dictionary[args.concept].mode}):\n",
              steered.act(observation).actions)
    return 0


def _scene_images(args: argparse.Namespace) -> list:
    """--image files, else ``--scenes`` rendered demo scenes (the block alternating sides)."""
    import numpy as np

    if args.image:
        from PIL import Image

        return [np.asarray(Image.open(path).convert("RGB")) for path in args.image]
    from vla_steering.policies.demo_vla import render_scene

    rng = np.random.default_rng(args.seed)
    return [render_scene(("left", "right")[i % 2], "red", rng) for i in range(args.scenes)]


def _observations(instructions: list[str], images: list) -> list:
    """Every instruction with every image (robot state zero)."""
    import numpy as np

    from vla_steering.policies import Observation

    return [Observation({"camera": image}, np.zeros(8, np.float32), text) for text in instructions for image in images]


def _instructions(args: argparse.Namespace) -> list[str]:
    """--instructions file (one per line), else the demo VLA's training instructions."""
    if args.instructions:
        lines = [line.strip() for line in Path(args.instructions).read_text().splitlines()]
        return [line for line in lines if line]
    from vla_steering.policies.demo_vla import training_instructions

    return [text.format(color="red") for text, _, _ in training_instructions()]


def _add_observation_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", default="demo", help="demo, openvla, pi0, pi05, smolvla")
    p.add_argument("--checkpoint", default="", help="local checkpoint directory (not for demo)")
    p.add_argument("--stack", default=None, help="decoder stack (module path; default: the primary)")
    p.add_argument("--position", default="last", choices=("last", "mean", "instruction"),
                   help="the residual at each call's last position (the decision token), averaged over all "
                        "positions, or averaged over the instruction's tokens")
    p.add_argument("--image", nargs="*", help="RGB image files, each paired with every instruction "
                                               "(default: rendered demo scenes)")
    p.add_argument("--scenes", type=int, default=2, help="rendered demo scenes per instruction")
    p.add_argument("--seed", type=int, default=0)


def _contrast_pairs(args: argparse.Namespace) -> dict[str, tuple[list[str], list[str]]]:
    """--a/--b as one pair named --name, or --pairs: a YAML file {name: {a: [...], b: [...]}}."""
    if bool(args.pairs) == bool(args.a or args.b):
        raise ValueError("give either --a and --b, or --pairs")
    if not args.pairs:
        if not (args.a and args.b):
            raise ValueError("--a and --b both need instructions")
        return {args.name: (args.a, args.b)}
    import yaml

    spec = yaml.safe_load(Path(args.pairs).read_text())
    if not isinstance(spec, dict) or not spec:
        raise ValueError(f"{args.pairs}: expected a mapping pair name -> {{a: [...], b: [...]}}")
    pairs = {}
    for name, sets in spec.items():
        if not isinstance(sets, dict) or not all(isinstance(sets.get(k), list) and sets[k] for k in ("a", "b")):
            raise ValueError(f"{args.pairs}: pair {name!r} needs non-empty lists a and b")
        pairs[str(name)] = ([str(t) for t in sets["a"]], [str(t) for t in sets["b"]])
    return pairs


def cmd_contrast(args: argparse.Namespace) -> int:
    import numpy as np

    from vla_steering.anatomy import primary_stack
    from vla_steering.capture import record_residuals
    from vla_steering.contrast import concept_cosines, residual_contrast, write_report
    from vla_steering.dictionaries import Concept, InterventionDictionary, load_dictionary, save_dictionary
    from vla_steering.policies import SteeredPolicy, make_policy

    pairs = _contrast_pairs(args)
    layers = _layers(args.layers)
    policy = make_policy(args.policy, args.checkpoint)
    stack = primary_stack(policy.model, args.stack)
    sae = None
    if args.sae:
        from vla_steering.sae import latent_difference, load_sae

        sae, trained_on = load_sae(args.sae)
        if trained_on["layer"] not in layers or trained_on["position"] != args.position:
            raise ValueError(f"{args.sae} was trained on layer {trained_on['layer']} at position "
                             f"{trained_on['position']!r}: give that layer in --layers and that --position")
    neurons = {}
    if args.dictionary:
        neurons = {n: c for n, c in load_dictionary(args.dictionary, stack.intermediate_size).concepts.items()
                   if c.neurons}
    images, steered = _scene_images(args), SteeredPolicy(policy)
    results, concepts, cosines, extra = {}, {}, {}, {}
    for name, (a, b) in pairs.items():
        residual_a, residual_b = (record_residuals(steered, _observations(texts, images), layers, args.stack,
                                                   args.position, progress=True)[0] for texts in (a, b))
        result = results[name] = residual_contrast(stack.name, layers, residual_a, residual_b)
        concepts[name] = result.concept(name, f"{' / '.join(a)} minus {' / '.join(b)} ({args.position} position)")
        cosines[name] = concept_cosines(result, policy.model, neurons)
        if sae is not None:
            index = layers.index(trained_on["layer"])
            dz, direction = latent_difference(sae, residual_a[:, index], residual_b[:, index])
            top = ", ".join(f"f{f} {dz[f]:+.3g}" for f in np.argsort(-np.abs(dz))[:5])
            concepts[f"{name}_sae"] = Concept(
                f"{name}_sae", (), mode="add", strength=0.0, stack=stack.name,
                directions={layers[index]: tuple(direction)},
                description=f"SAE latent-mean difference of {name} (|W_dec dz| {np.linalg.norm(direction):.3g}; "
                            f"largest dz: {top})")
            extra.setdefault(layers[index], {})[f"{name}_sae"] = direction
        for layer, norm in zip(result.layers, result.norms, strict=True):
            print(f"{name} layer {layer}: |mean_A - mean_B| = {norm:.4g}")
    out = Path(args.out)
    path = save_dictionary(InterventionDictionary(concepts), out / f"{args.name}.yaml")
    report = write_report(results, out, cosines, extra)
    print(f"concepts {list(concepts)} (mode add, off) -> {path}; report -> {report}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from vla_steering.capture import record_residuals
    from vla_steering.policies import SteeredPolicy, make_policy
    from vla_steering.probes import fit_probes, write_report

    policy = make_policy(args.policy, args.checkpoint)
    layers = _layers(args.layers)
    observations = _observations(_instructions(args), _scene_images(args))
    residuals, actions = record_residuals(SteeredPolicy(policy), observations, layers, args.stack, args.position,
                                          progress=True)
    result = fit_probes(residuals, actions, layers, policy.action_space.dims, seed=args.seed)
    report = write_report(result, Path(args.out))
    print(f"probes on {result.train} + {result.test} observations -> {report}")
    return 0


def cmd_sae(args: argparse.Namespace) -> int:
    import numpy as np

    from vla_steering.capture import record_residuals
    from vla_steering.dictionaries import InterventionDictionary, save_dictionary
    from vla_steering.policies import SteeredPolicy, make_policy
    from vla_steering.sae import feature_concept, save_sae, train_sae, write_report

    policy = make_policy(args.policy, args.checkpoint)
    observations = _observations(_instructions(args), _scene_images(args))
    residuals, actions = record_residuals(SteeredPolicy(policy), observations, [args.layer], args.stack,
                                          args.position, progress=True)
    data = residuals[:, 0]
    order = np.random.default_rng(args.seed).permutation(len(data))
    held_out, train = order[: len(data) // 5], order[len(data) // 5:]
    trained = train_sae(data[train], args.features, args.k, args.kind, steps=args.steps, seed=args.seed)
    out = Path(args.out)
    report = write_report(trained, data, held_out, observations, actions, policy.action_space.dims, out)
    save_sae(trained.sae, out / "sae.pt", args.layer, args.stack, args.position)
    if args.feature is not None:
        concept = feature_concept(trained.sae, args.feature, f"sae_{args.feature}", args.layer, args.stack)
        save_dictionary(InterventionDictionary({concept.name: concept}), out / f"{concept.name}.yaml")
    print(f"SAE ({args.kind}, {args.features} features, k={args.k}) on {len(train)} observations -> {report}")
    return 0


def cmd_reindex(args: argparse.Namespace) -> int:
    from vla_steering.bags import reindex

    for bag in args.bags:
        counts = reindex(bag)
        print(f"{bag}: {sum(counts.values())} messages readable ({', '.join(f'{t} {n}' for t, n in counts.items())})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vla-steer", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("project", help="project value vectors through the unembedding")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="smollm2-135m, gemma3-270m, a .gguf file or a Hugging Face directory")
    source.add_argument("--openpi", help="an openpi (JAX) checkpoint directory")
    p.add_argument("--expert", type=int, default=0, help="openpi expert: 0 PaliGemma, 1 action expert")
    p.add_argument("--out", required=True, help="output directory (projection.npz, top_tokens.txt)")
    p.add_argument("--layers", help="comma-separated layers (default: all)")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--variant", default="raw", choices=("raw", "final_norm", "post_ffn_final_norm"))
    p.add_argument("--memory-mb", type=float, default=256.0, help="bound on the logits block")
    p.set_defaults(func=cmd_project)

    p = sub.add_parser("search", help="rank neurons for keywords; optionally write a dictionary")
    p.add_argument("--projection", required=True)
    p.add_argument("--keywords", nargs="+", required=True)
    p.add_argument("--match", default="family", choices=("family", "exact"))
    p.add_argument("--sign", default="pos", choices=("pos", "neg"))
    p.add_argument("--top-n", type=int, default=20)
    p.add_argument("--min-score", type=float, default=0.0)
    p.add_argument("--write", help="write the matches as a one-concept dictionary here")
    p.add_argument("--concept", help="concept name (default: the first keyword)")
    p.add_argument("--mode", default="clamp", choices=("clamp", "scale", "add"))
    p.add_argument("--strength", type=float, default=0.0)
    p.add_argument("--format", default="native", choices=("native", "reference"))
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("cluster", help="k-means over neurons (optionally the best keyword candidates)")
    p.add_argument("--model", required=True)
    p.add_argument("--projection", required=True)
    p.add_argument("-k", type=int, required=True)
    p.add_argument("--space", default="semantic", choices=("semantic", "weight"))
    p.add_argument("--keywords", nargs="*")
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show", type=int, default=8)
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("validate", help="check a dictionary against a model or a shape")
    p.add_argument("--dictionary", required=True)
    p.add_argument("--model")
    p.add_argument("--num-layers", type=int)
    p.add_argument("--intermediate-size", type=int)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("control", help="add a size-matched random-neuron control for a concept (same layers)")
    p.add_argument("--dictionary", required=True, help="a native dictionary, updated in place")
    p.add_argument("--concept", required=True)
    p.add_argument("--name", help="the control's name (default: <concept>_random)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--intermediate-size", type=int)
    p.set_defaults(func=cmd_control)

    p = sub.add_parser("convert", help="convert a dictionary between the reference and native formats")
    p.add_argument("--dictionary", required=True)
    p.add_argument("--to", required=True, choices=("native", "reference"))
    p.add_argument("--intermediate-size", type=int)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("effect", help="a concept's effect on a prompt's next-token distribution")
    p.add_argument("--model", required=True)
    p.add_argument("--dictionary", required=True)
    p.add_argument("--concept", required=True)
    p.add_argument("--strength", type=float, required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--top", type=int, default=10)
    p.set_defaults(func=cmd_effect)

    p = sub.add_parser("prepare", help="dequantise the bundled models into the cache (done by scripts/setup.sh)")
    p.add_argument("--models", nargs="+", default=["smollm2-135m"], help="bundled model names")
    p.add_argument("--skip-demo-vla", action="store_true", help="do not train/cache the demo VLA")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("act", help="one policy inference on an image + instruction, with and without steering")
    p.add_argument("--policy", default="demo", help="demo, openvla, pi0, pi05, smolvla")
    p.add_argument("--checkpoint", default="", help="local checkpoint directory (not for demo)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--image", help="an RGB image file (default: a rendered demo scene)")
    p.add_argument("--scene", default="left", choices=("left", "right"), help="demo scene: the block's side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--state", type=float, nargs="*", help="robot state (default: 8 zeros)")
    p.add_argument("--instruction", required=True)
    p.add_argument("--dictionary", help="intervention dictionary; with --concept and --strength")
    p.add_argument("--concept", default="up")
    p.add_argument("--strength", type=float, default=2.0)
    p.add_argument("--unnorm-key", help="openvla: the dataset whose action statistics un-normalise")
    p.add_argument("--center-crop-scale", type=float, help="openvla: area kept by the evaluation center crop")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), help="openvla: weights' dtype (default bfloat16)")
    p.add_argument("--noise-seed", type=int, help="pi0, pi05, smolvla: seed of the flow-matching noise")
    p.add_argument("--tokenizer", help="pi0, pi05: local folder of the PaliGemma tokenizer")
    p.add_argument("--vlm", help="smolvla: local folder of the SmolVLM2 backbone's config and tokenizer")
    p.add_argument("--asset-id", help="pi0, pi05, openpi folders: which assets/<id>/norm_stats.json")
    p.set_defaults(func=cmd_act)

    p = sub.add_parser("contrast", help="a contrastive residual-stream direction between two instruction sets, "
                                        "as a steerable concept (mode add)")
    _add_observation_arguments(p)
    p.add_argument("--a", nargs="+", help="set A's instructions (e.g. 'move up' 'lift it')")
    p.add_argument("--b", nargs="+", help="set B's instructions (e.g. 'move down' 'lower it')")
    p.add_argument("--pairs", help="instead of --a/--b: a YAML file of pairs {name: {a: [...], b: [...]}}")
    p.add_argument("--layers", required=True, help="comma-separated layers")
    p.add_argument("--dictionary", help="report the cosine with this dictionary's neuron concepts")
    p.add_argument("--sae", help="a vla-steer sae model (sae.pt): also each pair's SAE latent-mean difference "
                                 "as a direction (<pair>_sae)")
    p.add_argument("--name", default="contrast", help="the concept's name (with --pairs: the dictionary's file name)")
    p.add_argument("--out", required=True, help="output folder (<name>.yaml, contrast.md, cosine plots)")
    p.set_defaults(func=cmd_contrast)

    p = sub.add_parser("probe", help="ridge probes: held-out R² of each action dimension from each layer's residual")
    _add_observation_arguments(p)
    p.add_argument("--instructions", help="a file of instructions, one per line (default: the demo's training set)")
    p.add_argument("--layers", required=True, help="comma-separated layers")
    p.add_argument("--out", required=True, help="output folder (probes.md, probes_r2.png)")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("sae", help="train a TopK / BatchTopK sparse autoencoder on a layer's residual stream")
    _add_observation_arguments(p)
    p.add_argument("--instructions", help="a file of instructions, one per line (default: the demo's training set)")
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--features", type=int, default=256)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--kind", default="topk", choices=("topk", "batchtopk"))
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--feature", type=int, help="also write this feature's decoder direction as a concept")
    p.add_argument("--out", required=True, help="output folder (sae.md, galleries, sae.pt)")
    p.set_defaults(func=cmd_sae)

    p = sub.add_parser("reindex", help="make bags whose recording was killed or ran out of disk readable again")
    p.add_argument("bags", nargs="+", help="bag directories")
    p.set_defaults(func=cmd_reindex)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from vla_steering.bags import BagError
    from vla_steering.policies.base import PolicyOutputError

    args = build_parser().parse_args(argv)
    if args.command == "validate" and not args.model and (args.num_layers is None or args.intermediate_size is None):
        print("vla-steer validate: give --model, or both --num-layers and --intermediate-size", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (FileNotFoundError, ImportError, KeyError, ValueError, PolicyOutputError, BagError) as error:
        print(f"vla-steer {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
