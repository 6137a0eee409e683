"""Write a tiny, randomly initialised ColQwen2 checkpoint, offline.

    python -m tests.tiny_model OUT_DIR [--adapter ADAPTER_DIR]

The checkpoint has the real ColQwen2 architecture and processor (byte-level tokenizer, Qwen2-VL
image processor, the real prompt and special tokens), just tiny (~180k parameters), so the whole
service runs without a model hub. Its embeddings are random: search results are MEANINGLESS.
Use it to try the service offline and in tests; use ``vidore/colqwen2-v1.0`` for real retrieval.

With ``--adapter``, also write a PEFT/LoRA adapter directory whose ``adapter_config.json``
points at OUT_DIR, which is how the real default model is laid out (adapter on a base).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def qwen_tokenizer():
    """A byte-level Qwen2 tokenizer: the 256 byte symbols and the Qwen2-VL special tokens."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    vocab = {symbol: i for i, symbol in enumerate(sorted(ByteLevel.alphabet()))}
    vocab[SPECIAL_TOKENS[0]] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    return tokenizer


def build_processor(max_visual_tokens: int = 768, processor_cls=None):
    """A ColQwen2Processor (or ``processor_cls``, ColQwen2.5's) with ``qwen_tokenizer``."""
    from colpali_engine.models import ColQwen2Processor
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(
        min_pixels=4 * 28 * 28, max_pixels=max_visual_tokens * 28 * 28
    )
    return (processor_cls or ColQwen2Processor)(
        image_processor=image_processor,
        tokenizer=qwen_tokenizer(),
        video_processor=Qwen2VLVideoProcessor(),
    )


def colqwen2_config(processor, *, text: dict, vision: dict):
    """A Qwen2-VL config for ColQwen2 whose special-token ids match ``processor``'s tokenizer."""
    from transformers import Qwen2VLConfig

    tok = processor.tokenizer
    ids = dict(zip(SPECIAL_TOKENS, tok.convert_tokens_to_ids(SPECIAL_TOKENS), strict=True))
    return Qwen2VLConfig(
        text_config={
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            **text,
        },
        vision_config={
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            **vision,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def build_model(processor, seed: int = 0):
    """A random ColQwen2: hidden 64, 2 text layers, vision depth 2, 128-d output."""
    import torch
    from colpali_engine.models import ColQwen2

    config = colqwen2_config(
        processor,
        text=dict(
            vocab_size=len(processor.tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            # mrope_section must sum to head_dim / 2 = 64 / 4 / 2 = 8.
            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
            # NOTE: no pad_token_id: on a random model padded rows would become exactly 0 and the
            # L2 normalisation inside ColQwen2 would give NaN.
        ),
        vision=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2),
    )
    torch.manual_seed(seed)
    return ColQwen2(config).eval()


def write_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a full tiny checkpoint (model + processor) to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor = build_processor()
    build_model(processor, seed=seed).save_pretrained(out)
    processor.save_pretrained(out)
    return out


def write_tiny_adapter(base_dir: str | Path, adapter_dir: str | Path, seed: int = 1) -> Path:
    """Write a LoRA adapter on ``base_dir`` (non-zero weights, so it changes the output)."""
    import torch
    from colpali_engine.models import ColQwen2, ColQwen2Processor
    from peft import LoraConfig, get_peft_model

    base_dir, out = Path(base_dir).resolve(), Path(adapter_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = ColQwen2.from_pretrained(base_dir, local_files_only=True, dtype=torch.float32)
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=r".*language_model.*\.(q_proj|v_proj)",
        modules_to_save=["custom_text_proj"],
        init_lora_weights=False,  # random A and B: the adapter must visibly change the output
    )
    torch.manual_seed(seed)
    peft_model = get_peft_model(base, lora)
    peft_model.save_pretrained(out)
    config_path = out / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(base_dir)
    config_path.write_text(json.dumps(config, indent=2))
    # The real vidore/colqwen2-v1.0 ships its processor files beside the adapter.
    ColQwen2Processor.from_pretrained(base_dir, local_files_only=True).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="directory to write the tiny checkpoint to")
    parser.add_argument("--adapter", help="also write a LoRA adapter on it to this directory")
    args = parser.parse_args(argv)
    out = write_tiny_model(args.out_dir)
    print(f"wrote tiny ColQwen2 to {out} (random weights: results are meaningless)")
    if args.adapter:
        print(f"wrote LoRA adapter to {write_tiny_adapter(out, args.adapter)}")


if __name__ == "__main__":
    main()
