// Skinny matmuls (decode) on 8-bit weights with one scale per output row, for CPUs with
// AVX512-BF16 or with AVX2 + FMA (the avx2 build): the compiled path of `--quantization int8`.
//
// Registered as torch.ops.pagedllm.gemv_int8 / gemv_int8_kernel / int8_linear / dequantize_int8_t
// (registration.cpp); declared here for the decoder stack.
//
// The weight W [N, K], w[n, k] = code[n, k] * scale[n] with code in -127..127, is one uint8
// tensor `packed` of ceil(N / 16) * 16 * (K + 4) bytes (made by `pack_gemv_int8` in
// pagedllm/ops/int8_gemv.py), read front to back as one stream:
//
//   blocks       16 output rows each (the last one padded with code 0, scale 0);
//   super-blocks of 4 blocks (64 rows; the last one holds the 1..4 blocks left), one after the
//                other; a super-block of nb blocks starts with nb * 64 bytes of scales (16
//                float32 per block, block by block), then for each group g of 32 values of k a
//                chunk of nb * 512 bytes: for each line o = 0..3 (k0 = 32 g + 8 o), block by
//                block, the line's 128 bytes;
//   a line       8 values of k of a block's 16 rows as four pairs p = 0..3 of 32 bytes: for each
//                row r the signed codes of k0 + 2p and k0 + 2p + 1, side by side.
//
// The AVX-512 path multiplies in integers (AVX512-VNNI). x is first rounded, per row and group
// of 32 values of k, to int16 codes times a power-of-two step that puts the group's largest
// |x| in [2^14, 2^15): values within 2^7 of that largest keep every bit of their bf16, smaller
// ones lose bits below the step (at most 2^-16 of the group's largest |x|). A pair's 32 bytes,
// sign-extended to int16, hold in each 32-bit lane r the codes of row r at k and k + 1: the
// operand of one int16 dot product against the broadcast pair of x's codes. A group's sums are
// exact in int32; each is scaled by its step into float32 accumulators, and the row's weight
// scale comes once at the end. Widening the codes (one instruction per 32) is shared by every
// row of x in a tile, so a row of x costs one dot product per 32 values; converting the codes
// to bf16 for vdpbf16ps instead took five instructions per 32, which bounded one row on CPUs
// that run AVX-512 on 256-bit units.
//
// The AVX2 path converts 8 bytes (4 rows, both values of a pair) to float32 at a time and
// accumulates code * x with float32 FMAs against the broadcast pair x[k], x[k + 1]; adjacent
// lanes are added at the end. Neither path is bit-equal to torch's _weight_int8pack_mm in
// general (each sums in its own order, the AVX-512 path on x rounded as above, then rounds to
// bf16): a few outputs in a thousand differ by a bf16 ulp, more only where the sum cancels to
// near zero (test_int8_gemv.py measures it). Each row of x is computed alike whatever the
// number of rows, so results do not depend on the batch.

#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <cstdint>

namespace pagedllm {

constexpr int64_t kInt8GroupSize = 32;  // values of k per chunk of the stream
constexpr int64_t kInt8BlockRows = 16;  // output rows per block
constexpr int64_t kInt8SuperBlocks = 4;  // blocks per super-block
constexpr int64_t kInt8GemvMaxRows = 1 << 16;

// Bytes of `packed` for a weight of n rows and k columns.
constexpr int64_t int8_packed_bytes(int64_t n, int64_t k) {
  return (n + kInt8BlockRows - 1) / kInt8BlockRows * kInt8BlockRows * (k + 4);
}

// Whether gemv_int8 takes x [M, K] against a weight of n rows packed as above: a build with
// AVX512-BF16 or AVX2 + FMA, x a bf16 CPU tensor with unit stride along K, M <= kInt8GemvMaxRows, K % 32 == 0,
// `packed` a contiguous uint8 CPU tensor of int8_packed_bytes(n, K) bytes.
bool gemv_int8_supported(const at::Tensor& x, const at::Tensor& packed, int64_t n);

// out bf16 [M, N] (unit stride along N) = x bf16 [M, K] @ W^T, W packed as above; parallel over
// blocks of output rows.
void gemv_int8(at::Tensor out, const at::Tensor& x, const at::Tensor& packed);

// gemv_int8 through one kernel whatever M: "vector" (the fused products above) or "amx" (on
// CPUs with AMX-BF16, what gemv_int8 runs for more than 16 rows: each super-block dequantized
// into a bf16 panel for the tiles). For tests and benchmarks.
void gemv_int8_kernel(at::Tensor out, const at::Tensor& x, const at::Tensor& packed, c10::string_view kernel);

// gemv_int8 into a new tensor: x [M, K] -> bf16 [M, n].
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& packed, int64_t n);

// out [K, rows] (bf16 or float32, unit stride along rows) = rows row_begin.. of W transposed and
// dequantized (code * scale, rounded once): the weight of an ordinary matmul for many rows of x
// (prefill). row_begin % 16 == 0.
void dequantize_int8_t(at::Tensor out, const at::Tensor& packed, int64_t row_begin);

}  // namespace pagedllm
