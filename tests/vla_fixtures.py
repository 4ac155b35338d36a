"""Small random-weight models with the real architectures of pi0 and OpenVLA, built offline."""

from __future__ import annotations

import torch


def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from vla_steering.loading import resolve_model_dir

    return AutoTokenizer.from_pretrained(resolve_model_dir("smollm2-135m"))


def tiny_pi0():
    """(PI0ForConditionalGeneration, PI0Processor): PaliGemma(Gemma) prefix + Gemma action expert."""
    from transformers import PI0Config, PI0ForConditionalGeneration, PI0Processor, SiglipImageProcessorPil

    tokenizer = smollm2_tokenizer()
    images = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    images.image_seq_length = 4
    processor = PI0Processor(image_processor=images, tokenizer=tokenizer, max_state_dim=16, chunk_size=5,
                             state_mean=[0.0] * 8, state_std=[1.0] * 8, actions_mean=[0.1] * 7,
                             actions_std=[2.0] * 7)
    gemma = {"model_type": "gemma", "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
             "head_dim": 16}
    config = PI0Config(
        vlm_config={
            "model_type": "paligemma",
            "text_config": {**gemma, "hidden_size": 32, "intermediate_size": 48, "vocab_size": len(tokenizer)},
            "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 40,
                              "num_hidden_layers": 1, "num_attention_heads": 2, "patch_size": 16, "image_size": 32,
                              "vision_use_head": False},
            "projection_dim": 32,
            "image_token_id": processor.image_token_id,
        },
        dit_config={**gemma, "hidden_size": 16, "intermediate_size": 24, "vocab_size": 8},
        chunk_size=5, max_state_dim=16, max_action_dim=16, num_inference_steps=3,
    )
    torch.manual_seed(0)
    return PI0ForConditionalGeneration(config).eval(), processor


def tiny_openvla():
    """(LlavaForConditionalGeneration, LlavaProcessor): a vision tower + projector feeding a Llama
    language model, OpenVLA's (Prismatic's) shape built from stock transformers parts."""
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = smollm2_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=16,
                               num_additional_image_tokens=1,
                               vision_feature_select_strategy="default")
    config = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 40,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "patch_size": 16, "image_size": 32},
        text_config={"model_type": "llama", "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": len(tokenizer)},
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default", vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config).eval(), processor
