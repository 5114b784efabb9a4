"""The FP8 tensor-core path (CUDA only) must equal the CPU emulation dequant(A)·dequant(B)ᵀ."""

from __future__ import annotations

import pytest
import torch

from kpop.quant.fp8_gemm import chunk_scales, fp8_block_gemm
from kpop.quant.gemm import qgemm
from kpop.quant.grids import E2M1, INT4
from kpop.quant.linear import fp4_linear
from kpop.quant.recipe import GemmSpec, OperandSpec, make_recipe
from kpop.quant.scaling import BlockFormat, quantize


def test_chunk_scales_expand_blocks_to_rows_and_16_column_chunks():
    x = torch.randn(20, 64, generator=torch.Generator().manual_seed(0))
    q2d = quantize(x, E2M1, BlockFormat((16, 16), "e4m3"))
    s = chunk_scales(q2d)
    assert s.shape == (20, 4)
    assert torch.equal(s[17], q2d.scales[1]) and torch.equal(s[3], q2d.scales[0])
    q32 = quantize(x, INT4, BlockFormat((1, 32), "e8m0"))
    assert torch.equal(chunk_scales(q32), q32.scales.repeat_interleave(2, dim=1))
    with pytest.raises(RuntimeError):
        fp8_block_gemm(q32, q32)  # CPU tensors


@pytest.mark.gpu
@pytest.mark.parametrize("grid", [INT4, E2M1])
@pytest.mark.parametrize("blocks", [((1, 16), (1, 16)), ((1, 16), (16, 16)), ((1, 32), (1, 32))])
def test_fp8_block_gemm_equals_cpu_emulation(grid, blocks):
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(40, 96, generator=gen) * torch.rand(40, 96, generator=gen) * 3
    b = torch.randn(24, 96, generator=gen)
    scale = "e8m0" if blocks[0][1] == 32 else "e4m3"
    qa_cpu = quantize(a, grid, BlockFormat(blocks[0], scale))
    qb_cpu = quantize(b, grid, BlockFormat(blocks[1], scale))
    ref = qa_cpu.dequantize().double() @ qb_cpu.dequantize().double().t()
    qa = quantize(a.cuda(), grid, BlockFormat(blocks[0], scale))
    qb = quantize(b.cuda(), grid, BlockFormat(blocks[1], scale))
    assert torch.equal(qa.codes.cpu(), qa_cpu.codes)  # the GPU quantiser agrees with the CPU one
    got = fp8_block_gemm(qa, qb).cpu().double()
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.gpu
def test_fp8_recipe_path_matches_emulation_for_the_forward_gemm():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(64, 128, generator=gen).cuda()
    w = torch.randn(48, 128, generator=gen).cuda()
    spec = GemmSpec(OperandSpec("uniform"), OperandSpec("uniform"), rht=16)
    emulated = qgemm(x, w, spec, "fprop", seed=0, fp8=False)
    tensor_core = qgemm(x, w, spec, "fprop", seed=0, fp8=True)
    assert torch.allclose(tensor_core, emulated, rtol=1e-5, atol=1e-4)
    y = fp4_linear(x, w, None, make_recipe("ufp4", fp8_gemm=True))
    assert torch.allclose(y, emulated, rtol=1e-5, atol=1e-4)
