// Layouts of the paged KV caches, shared by the cache write (cache_write.cpp) and the
// attention kernels (attention.cpp, attention_prefill.cpp, attention_decode.cpp).
//
// A cache is [kv_heads, num_blocks, block_size, head_dim]; a token's slot is
// block * block_size + offset, and block tables list each request's blocks in order.
//
// Plain layout (any dtype, block_size a power of two): one row of head_dim values per token.
//
// Blocked ("vnni") layout: bf16 caches in a blocked layout for AVX512-BF16 dot products
// (block_size 16, head_dim a multiple of 32); the AVX2 build reads the same layout, widening
// each 32-bit lane's bf16 pair to two float32 vectors. Within one block of one KV head:
//   K: [head_dim / 2][16 tokens][2 dims]   a vector of 32 bf16 = one dim pair of all 16 tokens
//   V: [8 token pairs][head_dim][2 tokens]  a vector = 16 dims of one token pair
// so q.k for 16 keys is head_dim / 2 `vdpbf16ps` with no horizontal sums, and p.V likewise
// with dims in lanes. The tensor keeps its [kv_heads, num_blocks, 16, head_dim] shape; only
// the order of the values within a block differs. pagedllm/ops/cpu_kernels.py's vnni_layout
// applies the same conditions on the Python side.

#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "vec.h"

// Builds with kernels for the blocked layout: AVX512-BF16 (bf16 dot products) and AVX2 + FMA.
#if defined(PAGEDLLM_ISA_AVX512_BF16) || defined(PAGEDLLM_ISA_AVX2)
#define PAGEDLLM_BLOCKED_KV 1
#endif

namespace pagedllm {

constexpr int64_t kVnniBlock = 16;  // tokens per block in the blocked layout

// Index within one block (of one KV head) of token `token`'s value `dim`, for K and for V.
inline int64_t vnni_key_index(int64_t token, int64_t dim) { return ((dim >> 1) * kVnniBlock + token) * 2 + (dim & 1); }
inline int64_t vnni_value_index(int64_t token, int64_t dim, int64_t head_dim) {
  return ((token >> 1) * head_dim + dim) * 2 + (token & 1);
}

// Whether a cache can use the blocked layout: bf16, block_size 16, head_dim % 32 == 0, and a
// build with kernels that read it (AVX512-BF16 or AVX2).
inline bool vnni_layout_supported(const at::Tensor& cache) {
#if defined(PAGEDLLM_BLOCKED_KV)
  return cache.scalar_type() == at::kBFloat16 && cache.size(2) == kVnniBlock && cache.size(3) % 32 == 0;
#else
  (void)cache;
  return false;
#endif
}

}  // namespace pagedllm
