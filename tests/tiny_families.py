"""Tiny, randomly initialised checkpoints of every model family colpali-engine ships, offline.

Each builder returns ``(model, processor)``: the family's real colpali-engine model and processor
classes, the real image processor, prompt and special tokens, over a byte-level tokenizer and a
network a few hundred thousand parameters small. ``write_checkpoint(name, out_dir)`` saves one
so the encoder loads it the way it loads a real checkpoint. Embeddings are random: only shapes
and token layout mean anything. ColQwen2 itself lives in ``tests.tiny_model``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.tiny_model import SPECIAL_TOKENS as QWEN_SPECIALS
from tests.tiny_model import build_processor, qwen_tokenizer

SMALL_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
SMALL_VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
)


def _byte_vocab(first: list[str]) -> dict[str, int]:
    """``first`` tokens, then the 256 symbols of the byte-level alphabet."""
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {token: i for i, token in enumerate(first)}
    for symbol in sorted(ByteLevel.alphabet()):
        vocab.setdefault(symbol, len(vocab))
    return vocab


def _fast_tokenizer(specials: list[str], **named: str) -> Any:
    """A byte-level BPE tokenizer (no merges) with ``specials`` as special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(vocab=_byte_vocab(specials), merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, **named)
    tok.add_special_tokens({"additional_special_tokens": specials})
    return tok


def _seeded(model_cls: Any, config: Any, seed: int) -> Any:
    import torch

    torch.manual_seed(seed)
    return model_cls(config).eval()


# --- the Qwen family ----------------------------------------------------------------------------


def _qwen_ids(tok: Any) -> dict[str, int]:
    ids = dict(zip(QWEN_SPECIALS, tok.convert_tokens_to_ids(QWEN_SPECIALS), strict=True))
    return dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def _qwen3_processor(processor_cls: Any, budget: int) -> Any:
    from transformers import Qwen2VLImageProcessor
    from transformers.models.qwen3_vl import Qwen3VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(
        patch_size=16, merge_size=2, min_pixels=4 * 32 * 32, max_pixels=budget * 32 * 32
    )
    return processor_cls(
        image_processor=image_processor,
        tokenizer=qwen_tokenizer(),
        video_processor=Qwen3VLVideoProcessor(),
    )


_QWEN3_ROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
_QWEN3_VISION = dict(
    depth=2,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    out_hidden_size=64,
    patch_size=16,
    spatial_merge_size=2,
    temporal_patch_size=2,
    num_position_embeddings=64,
)


def colqwen2_5(seed: int = 0, budget: int = 768) -> tuple[Any, Any]:
    from colpali_engine.models import ColQwen2_5, ColQwen2_5_Processor
    from transformers import Qwen2_5_VLConfig

    processor = build_processor(budget, ColQwen2_5_Processor)
    tok = processor.tokenizer
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok),
            num_key_value_heads=2,
            rope_parameters={**_QWEN3_ROPE, "rope_type": "default"},
            **SMALL_TEXT,
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            fullatt_block_indexes=[1],
            window_size=112,
        ),
        **_qwen_ids(tok),
    )
    return _seeded(ColQwen2_5, config, seed), processor


def colqwen3(seed: int = 0, budget: int = 768) -> tuple[Any, Any]:
    from colpali_engine.models import ColQwen3, ColQwen3Processor
    from transformers.models.qwen3_vl import Qwen3VLConfig

    processor = _qwen3_processor(ColQwen3Processor, budget)
    tok = processor.tokenizer
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=len(tok),
            num_key_value_heads=2,
            head_dim=16,
            rope_parameters={**_QWEN3_ROPE, "mrope_interleaved": True},
            **SMALL_TEXT,
        ),
        vision_config=dict(**_QWEN3_VISION, deepstack_visual_indexes=[0]),
        **_qwen_ids(tok),
    )
    return _seeded(ColQwen3, config, seed), processor  # 320-d vectors, as the real ones


def colqwen3_5(seed: int = 0, budget: int = 768) -> tuple[Any, Any]:
    from colpali_engine.models import ColQwen3_5, ColQwen3_5Processor
    from transformers.models.qwen3_5 import Qwen3_5Config

    processor = _qwen3_processor(ColQwen3_5Processor, budget)
    tok = processor.tokenizer
    config = Qwen3_5Config(
        text_config=dict(
            vocab_size=len(tok),
            num_key_value_heads=2,
            head_dim=16,
            linear_num_key_heads=2,
            linear_num_value_heads=2,
            linear_key_head_dim=16,
            linear_value_head_dim=16,
            layer_types=["linear_attention", "full_attention"],  # both kinds of layer
            rope_parameters={**_QWEN3_ROPE, "mrope_interleaved": True},
            **SMALL_TEXT,
        ),
        vision_config=_QWEN3_VISION,
        **_qwen_ids(tok),
    )
    return _seeded(ColQwen3_5, config, seed), processor


# --- PaliGemma and Gemma 3: one fixed square --------------------------------------------------

_GEMMA_BASE = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]


def colpali(seed: int = 0, budget: int = 768, side_px: int = 448) -> tuple[Any, Any]:
    from colpali_engine.models import ColPali, ColPaliProcessor
    from transformers import GemmaTokenizer, PaliGemmaConfig, SiglipImageProcessor

    tok = GemmaTokenizer(vocab=_byte_vocab(_GEMMA_BASE), merges=[])
    image_processor = SiglipImageProcessor(
        size={"height": side_px, "width": side_px}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    # (448 / 14)^2 = 1024, as PaliGemma-448's config says
    image_processor.image_seq_length = (side_px // 14) ** 2
    processor = ColPaliProcessor(image_processor=image_processor, tokenizer=tok)
    config = PaliGemmaConfig(
        text_config=dict(vocab_size=len(tok), num_key_value_heads=1, head_dim=16, **SMALL_TEXT),
        vision_config=dict(patch_size=14, image_size=side_px, projection_dim=64, **SMALL_VISION),
        image_token_id=processor.image_token_id,
        projection_dim=64,
    )
    return _seeded(ColPali, config, seed), processor


_GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<start_of_image>{% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
)


def colgemma3(
    seed: int = 0, budget: int = 768, side_px: int = 896, tokens: int = 256
) -> tuple[Any, Any]:
    from colpali_engine.models import ColGemma3, ColGemmaProcessor3
    from transformers import Gemma3Config, Gemma3ImageProcessor, GemmaTokenizer

    specials = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    tok = GemmaTokenizer(
        vocab=_byte_vocab(_GEMMA_BASE + specials + ["<start_of_turn>", "<end_of_turn>"]),
        merges=[],
        extra_special_tokens={
            "boi_token": specials[0],
            "eoi_token": specials[1],
            "image_token": specials[2],
        },
    )
    tok.chat_template = _GEMMA3_TEMPLATE
    image_processor = Gemma3ImageProcessor(
        size={"height": side_px, "width": side_px}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    processor = ColGemmaProcessor3(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_length=tokens,
        chat_template=_GEMMA3_TEMPLATE,
    )
    config = Gemma3Config(
        text_config=dict(
            vocab_size=len(tok),
            num_key_value_heads=1,
            head_dim=16,
            # NOTE: a window shorter than the page's tokens gives NaN rows in transformers 5.23.
            sliding_window=4096,
            pad_token_id=None,
            **SMALL_TEXT,
        ),
        vision_config=dict(patch_size=14, image_size=side_px, **SMALL_VISION),
        mm_tokens_per_image=tokens,
        image_token_index=tok.image_token_id,
        boi_token_index=tok.boi_token_id,
        eoi_token_index=tok.eoi_token_id,
    )
    return _seeded(ColGemma3, config, seed), processor


# --- Idefics3 and ModernVBert: tiles plus a global view -------------------------------------

_ROW_COL = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]


def _tiled_processor(
    processor_cls: Any, bos: str, longest_edge: int, tile_px: int, seq_len: int
) -> Any:
    from transformers import Idefics3ImageProcessor

    specials = [
        "<|endoftext|>",
        bos,
        "<end_of_utterance>",
        "<fake_token_around_image>",
        "<image>",
        "<global-img>",
        *_ROW_COL,
    ]
    tok = _fast_tokenizer(
        specials,
        bos_token=bos,
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": longest_edge},
        max_image_size={"longest_edge": tile_px},
        do_image_splitting=True,
    )
    return processor_cls(image_processor=image_processor, tokenizer=tok, image_seq_len=seq_len)


def colidefics3(
    seed: int = 0, budget: int = 768, longest_edge: int = 2048, tile_px: int = 512, scale: int = 4
) -> tuple[Any, Any]:
    """``scale``: the pixel shuffle of the 16 px patches of a tile (tile_px / 16 / scale
    tokens a side)."""
    from colpali_engine.models import ColIdefics3, ColIdefics3Processor
    from transformers import Idefics3Config

    side = tile_px // 16 // scale
    processor = _tiled_processor(
        ColIdefics3Processor, "<|im_start|>", longest_edge, tile_px, side * side
    )
    tok = processor.tokenizer
    config = Idefics3Config(
        text_config=dict(
            model_type="llama",
            vocab_size=len(tok),
            num_key_value_heads=2,
            pad_token_id=None,
            **SMALL_TEXT,
        ),
        vision_config=dict(patch_size=16, image_size=tile_px, **SMALL_VISION),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=scale,  # 32 x 32 patches of a 512 px tile -> 8 x 8 tokens at 4
    )
    return _seeded(ColIdefics3, config, seed), processor


def colmodernvbert(
    seed: int = 0, budget: int = 768, longest_edge: int = 2048, tile_px: int = 512, scale: int = 4
) -> tuple[Any, Any]:
    from colpali_engine.models import ColModernVBert, ColModernVBertProcessor
    from transformers import ModernVBertConfig

    side = tile_px // 16 // scale
    processor = _tiled_processor(
        ColModernVBertProcessor, "<|begin_of_text|>", longest_edge, tile_px, side * side
    )
    tok = processor.tokenizer
    special_ids = {
        key: tok.convert_tokens_to_ids(token)
        for key, token in [
            ("bos_token_id", "<|begin_of_text|>"),
            ("cls_token_id", "<|begin_of_text|>"),
            ("eos_token_id", "<end_of_utterance>"),
            ("sep_token_id", "<end_of_utterance>"),
            ("pad_token_id", "<|endoftext|>"),
        ]
    }
    config = ModernVBertConfig(
        text_config=dict(
            vocab_size=len(tok), global_attn_every_n_layers=1, **special_ids, **SMALL_TEXT
        ),
        vision_config=dict(patch_size=16, image_size=tile_px, **SMALL_VISION),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        pixel_shuffle_factor=scale,
    )
    return _seeded(ColModernVBert, config, seed), processor


def colqwen2(seed: int = 0, budget: int = 768) -> tuple[Any, Any]:
    from tests.tiny_model import build_model

    processor = build_processor(budget)
    return build_model(processor, seed=seed), processor


BUILDERS = {
    "colqwen2": colqwen2,
    "colqwen2_5": colqwen2_5,
    "colqwen3": colqwen3,
    "colqwen3_5": colqwen3_5,
    "colpali": colpali,
    "colgemma3": colgemma3,
    "colidefics3": colidefics3,
    "colmodernvbert": colmodernvbert,
}


def write_checkpoint(name: str, out_dir: str | Path, seed: int = 0, **geometry: int) -> Path:
    """Save a tiny checkpoint of family ``name`` (model and processor) to ``out_dir``;
    ``geometry``: the builder's image settings, where they are not the released ones."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = BUILDERS[name](seed, **geometry)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
