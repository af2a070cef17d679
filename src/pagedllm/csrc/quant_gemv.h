// Skinny matmuls (decode) on 4-bit group-quantized weights, for CPUs with AVX512-BF16 or with
// AVX2 + FMA (the avx2 build).
//
// Declared here so that other translation units can call them directly; they are also
// registered as torch.ops.pagedllm.gemv_int4 / int4_linear / dequantize_int4_t (registration.cpp).
//
// The weight W [N, K], w[n, k] = (code[n, k] - 8) * scale[n, k / G] + zero[n, k / G] with a
// group size G of 32, 64 or 128, is one uint8 tensor `packed` of ceil(N / 16) * (8 K + 64 K / G)
// bytes (made by `pack_gemv` in pagedllm/ops/int4_gemv.py), read front to back as one stream:
//
//   blocks      16 output rows each (the last one padded with code 0, scale 0, zero 0);
//   super-blocks of 4 blocks (64 rows; the last one holds the 1..4 blocks left), stored one
//               after the other; within one of nb blocks, for each group g of G values of k
//               a chunk of nb * (8 G + 64) bytes: nb * 8 G bytes of codes, in G / 32 quads of
//               nb * 256 bytes (each quad block by block: a block's 4 lines for those 32
//               values of k), then nb * 64 bytes of (scale, zero) (block by block);
//   codes       of one block and group: G / 8 lines of 64 bytes, one per 8 values of k (k0 = G g
//               + 8 * line; line l in quad l / 4); in a line one little-endian uint32 per row
//               i = 0..15 holding
//               code[k0 + 2j] in bits 4j..4j+3 and code[k0 + 2j + 1] in bits 16+4j..16+4j+3;
//   (scale, zero) of one block and group: 16 pairs of bf16, row i's at bytes 4i..4i+3.
//
// One 32-bit lane yields, with a shift and a mask, the (k, k + 1) pair of one row as two bf16
// values 16 + code (exact), which AVX512-BF16 dot products multiply by the (x[k], x[k + 1])
// pair in float32; each group's scale and offset (zero - 24 * scale, times the group's sum of
// x) are applied once. Products are exact, accumulation is in float32, and the output is
// rounded to bf16 once.
//
// The AVX2 path reads the same bytes as two 32-byte halves per line (rows 0-7, then 8-15):
// the nibbles are masked into bytes, each byte becomes one row's code as an exact float32
// (a byte shuffle and a conversion) and meets the broadcast float32 x[k] in an FMA; per group
// the term is then acc * scale + (zero - 8 * scale) * sum of x. The same exactness holds.

#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <cstdint>

namespace pagedllm {

constexpr int64_t kInt4GroupSize = 32;        // the smallest group (values of k per (scale, zero))
constexpr int64_t kInt4MaxGroupSize = 128;    // the largest; G is 32 << j
constexpr int64_t kInt4BlockRows = 16;        // output rows per block
constexpr int64_t kInt4SuperBlocks = 4;       // blocks per super-block
constexpr int64_t kInt4GemvMaxRows = 1 << 16;  // the most rows of x gemv_int4 takes

// Bytes of `packed` for a weight of n rows and k columns in groups of g.
constexpr int64_t int4_packed_bytes(int64_t n, int64_t k, int64_t g = kInt4GroupSize) {
  return (n + kInt4BlockRows - 1) / kInt4BlockRows * (8 * k + 64 * k / g);
}

// Whether the layout takes groups of g values of k for a weight of k columns.
constexpr bool int4_takes_group_size(int64_t g, int64_t k) {
  return (g == 32 || g == 64 || g == kInt4MaxGroupSize) && k > 0 && k % g == 0;
}

// The group size of a weight of n rows and k columns packed in `bytes` bytes (the byte count
// differs for each G, so the kernels' signatures carry no group size): 32, 64 or 128 where k is
// a multiple of it and the count matches, else 0.
constexpr int64_t int4_group_size(int64_t n, int64_t k, int64_t bytes) {
  for (int64_t g = kInt4GroupSize; g <= kInt4MaxGroupSize; g *= 2)
    if (int4_takes_group_size(g, k) && int4_packed_bytes(n, k, g) == bytes) return g;
  return 0;
}

// Whether gemv_int4 takes x [M, K] against a weight of n rows packed as above: a build with
// AVX512-BF16 or AVX2 + FMA, x a bf16 CPU tensor with unit stride along K, M <= kInt4GemvMaxRows, K % 32 == 0,
// `packed` a contiguous uint8 CPU tensor of int4_packed_bytes(n, K, G) bytes for some G.
bool gemv_int4_supported(const at::Tensor& x, const at::Tensor& packed, int64_t n);

// out bf16 [M, N] (unit stride along N) = x bf16 [M, K] @ W^T, W packed as above.
// Parallel over blocks of output rows (at::parallel_for). Where a caller picks between this
// and dequantize + matmul: Int4Weight's GEMV_MAX_ROWS (int4.py) is the measured crossover.
void gemv_int4(at::Tensor out, const at::Tensor& x, const at::Tensor& packed);
// gemv_int4 through one kernel, "vector" or "amx", whatever the row count (tests, benchmarks).
void gemv_int4_kernel(at::Tensor out, const at::Tensor& x, const at::Tensor& packed, c10::string_view kernel);

// gemv_int4 into a new tensor: x [M, K] (made contiguous if needed) -> bf16 [M, n].
at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& packed, int64_t n);

// out [K, rows] (bf16 or float32, unit stride along rows) = rows row_begin.. of W, transposed
// and dequantized ((code - 8) * scale + zero, rounded once): the weight for an ordinary matmul
// when x has many rows (prefill). row_begin % 16 == 0; group_size the weight's G (the bytes of
// `packed` alone do not tell it without the weight's row count).
void dequantize_int4_t(at::Tensor out, const at::Tensor& packed, int64_t row_begin, int64_t group_size);

}  // namespace pagedllm
