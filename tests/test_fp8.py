"""FP8 matmuls (``COLQWEN_FP8``): close to the exact products, and the same code path on CPU
as on a GPU (torch's ``_scaled_mm`` runs on both)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from retrieval.config import Settings
from retrieval.encoder import Encoder, _compilable_stacks
from retrieval.errors import ConfigurationError
from retrieval.models import fp8
from tests.test_encoder import page_image


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


def _layer(n_in: int = 256, n_out: int = 512) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(n_in, n_out)


def test_an_fp8_layer_tracks_the_float32_product():
    linear = _layer()
    x = torch.randn(3, 40, 256)
    with torch.no_grad():
        exact, approx = linear(x), fp8.Fp8Linear(linear)(x)
    assert approx.shape == exact.shape and approx.dtype == exact.dtype
    assert float(_cosines(approx, exact).min()) >= 0.998


def test_one_large_token_does_not_flatten_the_others():
    """Scales are per row: a token 10^5 times larger than the rest leaves them as exact as
    alone (one scale for the whole input would push them into fp8's subnormals)."""
    linear = _layer()
    x = torch.randn(16, 256) * 1e-2
    x[3] *= 1e7
    with torch.no_grad():
        exact, approx = linear(x) - linear.bias, fp8.Fp8Linear(linear)(x) - linear.bias
    others = [i for i in range(16) if i != 3]
    assert float(_cosines(approx[others], exact[others]).min()) >= 0.998
    assert float(_cosines(approx[3:4], exact[3:4]).min()) >= 0.998


def test_a_zero_input_gives_the_bias_without_nans():
    linear = _layer()
    with torch.no_grad():
        out = fp8.Fp8Linear(linear)(torch.zeros(4, 256))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, linear.bias.expand(4, -1), atol=1e-2, rtol=1e-2)


def test_the_setting_runs_the_blocks_in_fp8_close_to_the_exact_model(tiny_model_dir, encoder):
    """COLQWEN_FP8: every linear layer of the vision blocks and decoder layers runs in fp8, the
    projection head stays exact; pages and queries embed close to the float32 model's."""
    exact_linears = sum(
        isinstance(m, nn.Linear) for s in _compilable_stacks(encoder.model) for m in s.modules()
    )
    settings = Settings(model=str(tiny_model_dir), device="cpu", fp8=True, batch_size=4)
    fast = Encoder.from_settings(settings)
    layers = [m for s in _compilable_stacks(fast.model) for m in s.modules()]
    assert sum(isinstance(m, fp8.Fp8Linear) for m in layers) == exact_linears > 0
    assert not any(isinstance(m, nn.Linear) for m in layers)
    assert isinstance(fast.model.custom_text_proj, nn.Linear)

    pages = [page_image(644, 896, seed=s) for s in range(3)]
    for a, b in zip(fast.embed_pages(pages), encoder.embed_pages(pages), strict=True):
        assert a.grid == b.grid and a.multivector.shape == b.multivector.shape
        c = _cosines(torch.from_numpy(a.multivector), torch.from_numpy(b.multivector))
        assert float(c.mean()) >= 0.99, float(c.mean())
    [q_fast], [q_exact] = fast.embed_queries(["a chart"]), encoder.embed_queries(["a chart"])
    c = _cosines(torch.from_numpy(np.asarray(q_fast)), torch.from_numpy(np.asarray(q_exact)))
    assert float(c.mean()) >= 0.99


def test_a_gpu_without_fp8_products_is_refused_with_what_to_do(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    with pytest.raises(ConfigurationError, match=r"8\.9.*A100.*Unset COLQWEN_FP8"):
        fp8.check_device("cuda:0")
    fp8.check_device("cpu")  # CPUs run them


@pytest.mark.gpu
def test_fp8_on_the_full_size_model_stays_close_to_float32():
    """bf16 with fp8 matmuls, compiled, the real architecture with random weights: per token,
    how close to a float32 copy of the model, beside plain bf16 (BENCHMARKS.md). Measured on an
    H100: fp8 min 0.951, mean 0.981; bf16 min 0.999, mean 0.9997. The bounds catch a broken
    scale or layout (which gives cosines near 0), not the loss fp8 costs by design."""
    from PIL import Image

    from bench.ingest_bench import full_size_encoder
    from tests.test_parallel import float32_reference, token_cosines

    encoder = full_size_encoder("cuda", 8)
    pages = [Image.effect_noise((644, 924), 64).convert("RGB") for _ in range(4)]
    pages += [page_image(672, 868, seed=s) for s in range(4)]
    reference = float32_reference(encoder, pages)
    bf16 = encoder.embed_pages(pages)
    encoder.use_fp8()
    encoder.compile()
    fast = encoder.embed_pages(pages)
    bf16_ref, fast_ref = token_cosines(bf16, reference), token_cosines(fast, reference)
    for name, c in [("bf16/fp32", bf16_ref), ("fp8/fp32", fast_ref),
                    ("fp8/bf16", token_cosines(fast, bf16))]:  # fmt: skip
        print(f"{name}: min {float(c.min()):.5f}, mean {float(c.mean()):.6f}")
    assert [x.grid for x in fast] == [x.grid for x in bf16]
    assert float(fast_ref.mean()) >= 0.97 and float(fast_ref.min()) >= 0.9
    assert float(bf16_ref.mean()) > float(fast_ref.mean())
