// The Intel AMX half of the tiled prefill attention (attend_item_vnni_tiled in
// attention_prefill.cpp): a chunk's scores q.k and its p.V on the tile unit, the online softmax
// between them staying on vectors. Compiled only where the build targets AMX-BF16.
//
// Why tiles: a long prompt's attention is two matmuls per KV head (16 query rows x 256 keys x
// the head size, twice), which the vdpbf16ps loops run at a small fraction of what tdpbf16ps
// does. The blocked cache layout (kv_layout.h) already is the tile unit's B operand:
//   - a K block's 16 dim pairs x 16 tokens x 2 dims is one 16-row tile of 64-byte rows per 32
//     dims, so scores need no copy;
//   - a V block's 8 token pairs x 16 dims x 2 tokens is one 8-row tile per 16 dims (blocks are
//     scattered by the block table, so a tile cannot span two), multiplied by 16 probabilities
//     (one block) of 16 query rows.
//
// Tiles: 0-3 accumulate (scores of 4 key blocks, or 64 dims of p.V), 4 holds 32 dims of 16
// query rows, 5 the probabilities of 16 rows for one block, 6 a K block's 16 dim pairs, 7 a V
// block's 8 token pairs.

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "attention.h"
#include "gemm_bf16_impl.h"
#include "kv_layout.h"

#if defined(PAGEDLLM_HAVE_AMX_BF16)

namespace pagedllm {
namespace detail {
namespace {

// The tiles as the header comment assigns them.
constexpr AmxTileConfig kAttentionTiles = {
    1, 0, {}, {64, 64, 64, 64, 64, 32, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 8}};

constexpr int64_t kRowsPerTile = 16;
static_assert(kTileRows % kRowsPerTile == 0, "a work item's rows must fill whole tiles of the scratch buffers");
constexpr int64_t kDimsPerTile = 32;  // one A tile of q: 16 dim pairs

std::atomic<bool> attention_tiles_on{true};

// scores[r][16 b + t] for 16 rows r and kN blocks b: q (16 rows of pairs) . K block b.
template <int kD, int kN>
inline void score_blocks(const uint32_t* q, const uint16_t* k_head, const int32_t* blocks, float* s,
                         int64_t s_row_bytes) {
  constexpr int64_t pairs = kD / 2, block_elems = kD * kVnniBlock, q_row_bytes = pairs * 4;
  _tile_zero(0);
  if constexpr (kN > 1) _tile_zero(1);
  if constexpr (kN > 2) _tile_zero(2);
  if constexpr (kN > 3) _tile_zero(3);
  const uint16_t* k0 = k_head + static_cast<int64_t>(blocks[0]) * block_elems;
  const uint16_t* k1 = kN > 1 ? k_head + static_cast<int64_t>(blocks[1]) * block_elems : nullptr;
  const uint16_t* k2 = kN > 2 ? k_head + static_cast<int64_t>(blocks[2]) * block_elems : nullptr;
  const uint16_t* k3 = kN > 3 ? k_head + static_cast<int64_t>(blocks[3]) * block_elems : nullptr;
  for (int64_t c = 0; c < kD / kDimsPerTile; ++c) {
    // 16 dim pairs: q's next 16 pairs, and the K block's next 16 rows of 32 bf16.
    const int64_t k_offset = c * (kDimsPerTile / 2) * 2 * kVnniBlock;
    _tile_loadd(4, q + c * (kDimsPerTile / 2), q_row_bytes);
    _tile_loadd(6, k0 + k_offset, 64);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (kN > 1) {
      _tile_loadd(6, k1 + k_offset, 64);
      _tile_dpbf16ps(1, 4, 6);
    }
    if constexpr (kN > 2) {
      _tile_loadd(6, k2 + k_offset, 64);
      _tile_dpbf16ps(2, 4, 6);
    }
    if constexpr (kN > 3) {
      _tile_loadd(6, k3 + k_offset, 64);
      _tile_dpbf16ps(3, 4, 6);
    }
  }
  _tile_stored(0, s, s_row_bytes);
  if constexpr (kN > 1) _tile_stored(1, s + kVnniBlock, s_row_bytes);
  if constexpr (kN > 2) _tile_stored(2, s + 2 * kVnniBlock, s_row_bytes);
  if constexpr (kN > 3) _tile_stored(3, s + 3 * kVnniBlock, s_row_bytes);
}

}  // namespace

bool amx_attention_enabled() { return attention_tiles_on.load(std::memory_order_relaxed) && amx_tiles_granted(); }

bool set_amx_attention(bool enabled) { return attention_tiles_on.exchange(enabled); }

void amx_attention_begin() { _tile_loadconfig(&kAttentionTiles); }

void amx_attention_end() { _tile_release(); }

template <int kD>
void amx_chunk_scores(const uint32_t* q_pairs, int64_t row_tiles, const uint16_t* k_head, const int32_t* blocks,
                      int64_t nb, float* scores, int64_t stride) {
  constexpr int64_t pairs = kD / 2;
  const int64_t s_row_bytes = stride * 4;
  for (int64_t rt = 0; rt < row_tiles; ++rt) {
    const uint32_t* q = q_pairs + rt * kRowsPerTile * pairs;
    float* s = scores + rt * kRowsPerTile * stride;
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) score_blocks<kD, 4>(q, k_head, blocks + b, s + b * kVnniBlock, s_row_bytes);
    switch (nb - b) {
      case 3: score_blocks<kD, 3>(q, k_head, blocks + b, s + b * kVnniBlock, s_row_bytes); break;
      case 2: score_blocks<kD, 2>(q, k_head, blocks + b, s + b * kVnniBlock, s_row_bytes); break;
      case 1: score_blocks<kD, 1>(q, k_head, blocks + b, s + b * kVnniBlock, s_row_bytes); break;
      default: break;
    }
  }
}

template <int kD>
void amx_chunk_pv(const uint16_t* probs, int64_t stride, const uint16_t* v_head, const int32_t* blocks, int64_t b_lo,
                  int64_t b_hi, float* out_acc) {
  constexpr int64_t block_elems = kD * kVnniBlock, v_row_bytes = kD * 4, o_row_bytes = kD * 4;
  const int64_t p_row_bytes = stride * 2;
  // 64 dims a pass: the 16 rows' running outputs for them stay in tiles 0-3 over the blocks.
  for (int64_t d0 = 0; d0 < kD; d0 += 4 * kVec) {
    float* o = out_acc + d0;
    _tile_loadd(0, o, o_row_bytes);
    _tile_loadd(1, o + kVec, o_row_bytes);
    _tile_loadd(2, o + 2 * kVec, o_row_bytes);
    _tile_loadd(3, o + 3 * kVec, o_row_bytes);
    for (int64_t b = b_lo; b <= b_hi; ++b) {
      // Dims d0 + [0, 64) of a block's 8 token pairs: 16 dims x 2 tokens per 64-byte row.
      const uint16_t* vb = v_head + static_cast<int64_t>(blocks[b]) * block_elems + d0 * 2;
      _tile_loadd(5, probs + b * kVnniBlock, p_row_bytes);
      _tile_loadd(7, vb, v_row_bytes);
      _tile_dpbf16ps(0, 5, 7);
      _tile_loadd(7, vb + 2 * kVec, v_row_bytes);
      _tile_dpbf16ps(1, 5, 7);
      _tile_loadd(7, vb + 4 * kVec, v_row_bytes);
      _tile_dpbf16ps(2, 5, 7);
      _tile_loadd(7, vb + 6 * kVec, v_row_bytes);
      _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, o, o_row_bytes);
    _tile_stored(1, o + kVec, o_row_bytes);
    _tile_stored(2, o + 2 * kVec, o_row_bytes);
    _tile_stored(3, o + 3 * kVec, o_row_bytes);
  }
}

#define PAGEDLLM_AMX_ATTENTION(kD)                                                                                \
  template void amx_chunk_scores<kD>(const uint32_t*, int64_t, const uint16_t*, const int32_t*, int64_t, float*, \
                                     int64_t);                                                                   \
  template void amx_chunk_pv<kD>(const uint16_t*, int64_t, const uint16_t*, const int32_t*, int64_t, int64_t,    \
                                 float*);
PAGEDLLM_AMX_ATTENTION(64)
PAGEDLLM_AMX_ATTENTION(128)
PAGEDLLM_AMX_ATTENTION(256)
#undef PAGEDLLM_AMX_ATTENTION

}  // namespace detail
}  // namespace pagedllm

#endif  // PAGEDLLM_HAVE_AMX_BF16
