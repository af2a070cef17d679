// Skinny matmuls (decode) on 8-bit weights with one scale per output row, for CPUs with
// AVX512-BF16 or with AVX2 + FMA (the avx2 build): the compiled path of `--quantization int8`.
//
// Registered as torch.ops.pagedllm.gemv_int8 / int8_linear / dequantize_int8_t
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
//                block, 64 bytes of the low nibbles of u = code + 128, then 64 of the high ones;
//   a line       8 values of k of a block's 16 rows, laid out as gemv_int4's (quant_gemv.h): one
//                little-endian uint32 per row holding nibble[k0 + 2j] in bits 4j..4j+3 and
//                nibble[k0 + 2j + 1] in bits 16+4j..19+4j.
//
// Each nibble becomes the exact bf16 16 + nibble with one shift and a mask, as in gemv_int4;
// low nibbles meet x and high nibbles 16 x (exact in bf16) in the same float32 accumulator:
//     acc = sum 16x (16 + hi) + x (16 + lo) = sum x u + 272 sum x,
// so sum x code = acc - 400 sum x, scaled by the row's scale once. Per byte of weight this is
// gemv_int4's work: one shift, one mask and half a dot product per row of x.
//
// The AVX2 path reads each line as two 32-byte halves (rows 0-7, then 8-15), merges the two
// nibble planes into the signed code bytes (u ^ 0x80), moves each byte to the top of its lane
// with a byte shuffle (code * 2^24, an exact float32 after conversion) and accumulates
// code * 2^24 * x (exact products) with float32 FMAs; 2^-24 and the row's scale come last.
// Neither path is bit-equal to torch's _weight_int8pack_mm in general (each sums in its own
// order in float32, then rounds to bf16): on a 576 x 1536 weight and 32 random rows, without
// bias, the AVX-512 path's output differed from torch's in 16 of 18432 values, the AVX2
// path's in 3, by one bf16 ulp (more only where the sum cancels to near zero); with a bias
// added (test_int8_gemv.py), the AVX-512 path's were all equal, the AVX2 path's all but one.

#pragma once

#include <ATen/core/Tensor.h>

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

// gemv_int8 into a new tensor: x [M, K] -> bf16 [M, n].
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& packed, int64_t n);

// out [K, rows] (bf16 or float32, unit stride along rows) = rows row_begin.. of W transposed and
// dequantized (code * scale, rounded once): the weight of an ordinary matmul for many rows of x
// (prefill). row_begin % 16 == 0.
void dequantize_int8_t(at::Tensor out, const at::Tensor& packed, int64_t row_begin);

}  // namespace pagedllm
