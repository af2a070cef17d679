// Skinny matmuls (decode) on 4-bit group-quantized weights, for CPUs with AVX512-BF16.
//
// Declared here so that other translation units can call them directly; they are also
// registered as torch.ops.pagedllm.gemv_int4 (quant_gemv.cpp).
//
// Packed layout (made by pagedllm/model/layers/quantization/int4.py, `pack_gemv`), for a
// weight W [N, K] with w[n, k] = (code[n, k] - 8) * scale[k / 32, n] + zero[k / 32, n]:
//
//   packed      uint8 [ceil(N / 16), K * 8]: output rows in blocks of 16 (the last block
//               padded with code 0); within a block k-major, one 64-byte line per 8 values
//               of k ("octet"), and in it one little-endian uint32 per row i = 0..15 holding
//               that row's 8 codes: code[k0 + 2j] in bits 4j..4j+3 and code[k0 + 2j + 1] in
//               bits 16+4j..16+4j+3 (j = 0..3, k0 = 8 * octet).
//   scale_zero  bf16 [ceil(N / 16), K / 32, 16, 2]: (scale, zero) of row i of the block for
//               each group of 32 values of k (padded rows: 0, 0).
//
// One 32-bit lane then yields, with a shift and a mask, the (k, k + 1) pair of one row as
// two bf16 values 16 + code (exact), which AVX512-BF16 dot products multiply by the
// (x[k], x[k + 1]) pair in float32; the per-group scale and the offset (zero - 24 * scale)
// times the group's sum of x are applied once per group. Products are exact and
// accumulation is in float32; the result is rounded to bf16 once.

#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace pagedllm {

constexpr int64_t kInt4GroupSize = 32;   // values of k per (scale, zero)
constexpr int64_t kInt4BlockRows = 16;   // output rows per packed block
constexpr int64_t kInt4GemvMaxRows = 1 << 16;  // the most rows of x gemv_int4 takes

// Whether gemv_int4 takes x [M, K] against a weight of N rows packed as above: the CPU has
// AVX512-BF16 (at compile time), x bf16 with unit stride along K, M <= kInt4GemvMaxRows,
// K % 32 == 0, and packed / scale_zero contiguous with the sizes of the layout.
bool gemv_int4_supported(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale_zero, int64_t n);

// out bf16 [M, N] (unit stride along N) = x bf16 [M, K] @ W^T, W packed as above.
// Parallel over blocks of output rows (at::parallel_for).
void gemv_int4(at::Tensor out, const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale_zero);

// out [K, rows] (bf16 or float32, unit stride along rows) = rows row_begin.. of W, transposed:
// the dequantized weight for an ordinary matmul (many rows of x). row_begin % 16 == 0.
// Registered as torch.ops.pagedllm.dequantize_int4_t(out, packed, scale_zero, row_begin).
void dequantize_int4_t(at::Tensor out, const at::Tensor& packed, const at::Tensor& scale_zero, int64_t row_begin);

}  // namespace pagedllm
