"""Benchmark the native backends at the golden sizes (and SmolVLA at its real size); prints BENCHMARKS.md's figures.

Per backend, each in its own process (so that peak memory is its own): load time from a
warm page cache, peak resident memory, time per prediction (median), and the steering
overhead as the median of back-to-back steered/unsteered pair ratios (order alternating,
so the machine's drift cancels in each pair), with a 3-neuron clamp on a middle layer of the
(primary) VLM stack.

``smolvla-real`` is SmolVLA at ``lerobot/smolvla_base``'s sizes (SmolVLM2-500M with 16 of its 32
text layers kept, 512-pixel images, a 720-wide expert), ``pi05-real`` pi0.5 at ``pi05_base``'s
(PaliGemma 2B, Gemma 300M expert): no real weights are available offline, so random ones in the
published layout are written once into the cache (about 1.8 GB and 13 GB, in 2 GB shards).

Run: PYTHONPATH=vla_steering_node:tests .venv/bin/python benchmarks/backends.py
(the golden folders are rebuilt into the cache by tests/golden.py if absent).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

CASES = {"openvla-fp32": ("openvla", {"dtype": "float32"}), "openvla-bf16": ("openvla", {"dtype": "bfloat16"}),
         "pi0-fp32": ("pi0", {}), "pi05-fp32": ("pi05", {}), "smolvla-fp32": ("smolvla", {}),
         "smolvla-real": ("smolvla", {}), "pi05-real": ("pi05", {})}
# SmolVLM2-500M-Video-Instruct's and smolvla_base's sizes (the golden set's architecture.json)
REAL_SMOLVLM = {"text": {"hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
                         "num_attention_heads": 15, "num_key_value_heads": 5, "head_dim": 64, "vocab_size": 49280},
                "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                           "num_attention_heads": 12, "patch_size": 16, "image_size": 512},
                "scale_factor": 4, "kept_layers": 16, "expert_width": 720, "expert_mlp": 2048}


def bench_folder(name: str):
    import os
    from pathlib import Path

    return Path(os.environ.get("VLA_STEER_CACHE", Path.home() / ".cache" / "vla_steer")) / "bench" / name


def write_random_weights(model, published: dict[str, str], out, shard_bytes: int = 2 << 30) -> None:
    """``model``'s (random) tensors under their published names, in shards with an index (bounded memory).

    ``published``: model-name prefix -> published prefix, first match wins; other names get ``model.``.
    """
    import json

    from safetensors.torch import save_file

    shards, current, size = [], {}, 0
    for name, tensor in model.state_dict().items():
        prefix = next((p for p in published if name.startswith(p)), None)
        current[published[prefix] + name[len(prefix):] if prefix else "model." + name] = tensor.contiguous()
        size += tensor.numel() * tensor.element_size()
        if size >= shard_bytes:
            shards.append(current)
            current, size = {}, 0
    shards.append(current)
    weight_map = {}
    for index, tensors in enumerate(shards, 1):
        file = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, out / file)
        weight_map.update(dict.fromkeys(tensors, file))
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def real_smolvla_folder():
    """A SmolVLA folder at the real sizes with random weights under LeRobot's names (written once)."""
    import json
    import shutil

    import torch
    from golden import golden_dir
    from transformers import AutoConfig

    from vla_steering.policies.smolvla import PUBLISHED, SmolVLAModel, smolvla_sizes

    out = bench_folder("smolvla-real")
    if (out / ".complete").exists():
        return out
    source = golden_dir("smolvla")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(source / "smolvlm2_standin", out / "smolvlm2_standin")
    for item in source.glob("policy_*"):
        shutil.copy(item, out / item.name)
    config = json.loads((source / "config.json").read_text())
    config.update(num_vlm_layers=REAL_SMOLVLM["kept_layers"], resize_imgs_with_padding=[512, 512])
    (out / "config.json").write_text(json.dumps(config, indent=2))
    backbone = json.loads((source / "smolvlm2_standin" / "config.json").read_text())
    backbone["text_config"].update(REAL_SMOLVLM["text"])
    backbone["vision_config"].update(REAL_SMOLVLM["vision"])
    backbone["scale_factor"] = REAL_SMOLVLM["scale_factor"]
    (out / "smolvlm2_standin" / "config.json").write_text(json.dumps(backbone, indent=2))
    vlm = AutoConfig.from_pretrained(str(out / "smolvlm2_standin"))
    vlm.text_config.num_hidden_layers = REAL_SMOLVLM["kept_layers"]
    sizes = smolvla_sizes(config, vlm.text_config, REAL_SMOLVLM["kept_layers"])
    torch.manual_seed(0)
    model = SmolVLAModel(vlm, REAL_SMOLVLM["expert_width"], REAL_SMOLVLM["expert_mlp"], sizes)
    write_random_weights(model, {"vlm.": PUBLISHED + "vlm.model.", "lm_head.": PUBLISHED + "vlm.lm_head.",
                                 "expert.": PUBLISHED + "lm_expert."}, out)
    (out / ".complete").write_text("random weights at smolvla_base's sizes\n")
    return out


def real_pi05_folder():
    """A pi0.5 folder at pi05_base's sizes (PaliGemma 2B + Gemma 300M expert) with random weights (written once)."""
    import shutil

    import torch
    from golden import golden_dir

    from vla_steering.policies.pi0 import FlowConfig, GemmaDims, paligemma_config
    from vla_steering.policies.pi05 import Pi05Model

    out = bench_folder("pi05-real")
    if (out / ".complete").exists():
        return out
    source = golden_dir("pi05")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(source / "paligemma_tokenizer_standin", out / "paligemma_tokenizer_standin")
    for item in [source / "config.json", *source.glob("policy_*")]:
        shutil.copy(item, out / item.name)
    vlm, expert = GemmaDims(2048, 18, 16384, 8, 256), GemmaDims(1024, 18, 4096, 8, 256)
    torch.manual_seed(0)
    model = Pi05Model(paligemma_config(vlm, 257152, 224), expert, FlowConfig(50, 32, 32, 10, 4e-3, 4.0))
    pali = "model.paligemma_with_expert.paligemma."
    write_random_weights(model, {"vlm.language_model.embed_tokens.": pali + "lm_head.",
                                 "vlm.vision_tower.": pali + "model.vision_tower.vision_model.",
                                 "vlm.multi_modal_projector.": pali + "model.multi_modal_projector.",
                                 "vlm.language_model.": pali + "model.language_model.",
                                 "expert.": "model.paligemma_with_expert.gemma_expert.model."}, out)
    (out / ".complete").write_text("random weights at pi05_base's sizes\n")
    return out


def observation(family: str):
    from golden import golden_dir
    from PIL import Image

    from vla_steering.policies import Observation

    inputs = golden_dir(family) / "inputs"
    if family == "openvla":
        images = {"agentview": np.asarray(Image.open(inputs / "image.png").convert("RGB"))}
        state = np.zeros(8, np.float32)
    else:
        images = {n: np.asarray(Image.open(inputs / f"{f}.png").convert("RGB"))
                  for n, f in (("image", "agentview"), ("wrist_image", "wrist"))}
        state = np.load(inputs / "state.npy")
    return Observation(images, state, (inputs / "instruction.txt").read_text())


def run_case(name: str, pairs: int) -> None:
    from golden import checkpoint

    from vla_steering.anatomy import primary_stack
    from vla_steering.dictionaries import Concept, InterventionDictionary
    from vla_steering.policies import make_policy, steer

    family, options = CASES[name]
    real = {"smolvla-real": real_smolvla_folder, "pi05-real": real_pi05_folder}
    folder = real[name]() if name in real else checkpoint(family)
    if family in ("pi0", "pi05"):
        options = {"tokenizer": str(folder / "paligemma_tokenizer_standin")}
    elif family == "smolvla":
        options = {"vlm": str(folder / "smolvlm2_standin")}
    make_policy(family, str(folder), **options)  # warm the page cache
    start = time.perf_counter()
    policy = make_policy(family, str(folder), **options)
    load = time.perf_counter() - start
    layer = primary_stack(policy.model).num_layers // 2
    steered = steer(policy, InterventionDictionary({"c": Concept("c", tuple((layer, n) for n in (3, 40, 77)))}))
    obs = observation(family)
    steered.act(obs)
    ratios, times = [], {0.0: [], 8.0: []}
    for i in range(pairs):
        pair = {}
        for strength in ((8.0, 0.0) if i % 2 == 0 else (0.0, 8.0)):
            steered.engine.set_strength("c", strength)
            begin = time.perf_counter()
            steered.act(obs)
            pair[strength] = time.perf_counter() - begin
            times[strength].append(pair[strength])
        ratios.append(pair[8.0] / pair[0.0])
    params = sum(p.numel() for p in policy.model.parameters()) / 1e6
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{name}: {params:.0f} M params; load {load:.1f} s; peak RSS {peak:.0f} MiB; prediction "
          f"{statistics.median(times[0.0]):.2f} s unsteered / {statistics.median(times[8.0]):.2f} s steered "
          f"(medians of {pairs}); steering overhead: median pair ratio {statistics.median(ratios):.3f} "
          f"(pairs {min(ratios):.3f}-{max(ratios):.3f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("case", nargs="?", choices=sorted(CASES), help="one case in this process (default: all)")
    parser.add_argument("--pairs", type=int, default=6)
    args = parser.parse_args()
    if args.case:
        run_case(args.case, args.pairs)
        return
    for case in CASES:
        pairs = 2 if case == "openvla-bf16" else args.pairs  # ~30 s a prediction on a CPU without bf16 units
        subprocess.run([sys.executable, __file__, case, "--pairs", str(pairs)], check=True)


if __name__ == "__main__":
    main()
