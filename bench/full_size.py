"""Full-size architectures with random weights, for GPU throughput (random weights cost what
real ones do; no hub is reachable). Each builder returns the family's real colpali-engine model
at its published size, in bf16 on ``device``, and the tiny tests' processor of that family
(a byte-level tokenizer: the page prompt is longer than a real tokenizer's by ~20 tokens, the
image tokens are the same).

- colqwen2: Qwen2-VL-2B (ColQwen2's base), the dimensions of its config.json.
- colqwen2_5: Qwen2.5-VL-3B (ColQwen2.5's base), the dimensions of its config.json.
- colqwen3_5: a Qwen3.5 of the 4B class (hybrid: 3 Gated DeltaNet layers to 1 attention layer)
  with a 24-block vision tower: dimensions as best known offline, NOT read from a hub config.
"""

from __future__ import annotations

from typing import Any

from tests.tiny_families import _QWEN3_ROPE, _qwen3_processor, _qwen_ids
from tests.tiny_model import build_processor, colqwen2_config


def _build(model_cls: Any, config: Any, device: str) -> Any:
    import torch

    config._attn_implementation = "sdpa"
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            return model_cls(config).eval()
    finally:
        torch.set_default_dtype(torch.float32)


def colqwen2(device: str, budget: int = 768) -> tuple[Any, Any]:
    from colpali_engine.models import ColQwen2

    processor = build_processor(max_visual_tokens=budget)
    config = colqwen2_config(
        processor,
        text=dict(
            vocab_size=151936,
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
            rope_theta=1e6,
        ),
        vision=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4),
    )
    return _build(ColQwen2, config, device), processor


def colqwen2_5(device: str, budget: int = 768) -> tuple[Any, Any]:
    from colpali_engine.models import ColQwen2_5, ColQwen2_5_Processor
    from transformers import Qwen2_5_VLConfig

    processor = build_processor(budget, ColQwen2_5_Processor)
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            max_position_embeddings=128000,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": [16, 24, 24],
            },
        ),
        vision_config=dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=2048,
            window_size=112,
            fullatt_block_indexes=[7, 15, 23, 31],
        ),
        **_qwen_ids(processor.tokenizer),
    )
    return _build(ColQwen2_5, config, device), processor


def colqwen3_5(device: str, budget: int = 768) -> tuple[Any, Any]:
    from colpali_engine.models import ColQwen3_5, ColQwen3_5Processor
    from transformers.models.qwen3_5 import Qwen3_5Config

    processor = _qwen3_processor(ColQwen3_5Processor, budget)
    layers = 32
    config = Qwen3_5Config(
        text_config=dict(
            vocab_size=248320,
            hidden_size=2560,
            intermediate_size=9216,
            num_hidden_layers=layers,
            num_attention_heads=16,
            num_key_value_heads=4,
            head_dim=256,
            linear_num_key_heads=16,
            linear_num_value_heads=32,
            linear_key_head_dim=128,
            linear_value_head_dim=128,
            layer_types=[
                "full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)
            ],
            rope_parameters={
                **_QWEN3_ROPE,
                "mrope_section": [11, 11, 10],
                "mrope_interleaved": True,
                "partial_rotary_factor": 0.25,
            },
        ),
        vision_config=dict(
            depth=24,
            hidden_size=1024,
            intermediate_size=4096,
            num_heads=16,
            out_hidden_size=2560,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            num_position_embeddings=2304,
        ),
        **_qwen_ids(processor.tokenizer),
    )
    return _build(ColQwen3_5, config, device), processor


BUILDERS = {"colqwen2": colqwen2, "colqwen2_5": colqwen2_5, "colqwen3_5": colqwen3_5}
