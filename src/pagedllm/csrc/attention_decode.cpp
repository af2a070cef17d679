// Paged attention over the blocked bf16 layout (kv_layout.h), continued from attention.cpp:
// the decode routine (one query token per work item, all of its GQA group in one pass over
// the blocks, with an online softmax) and paged_attention_vnni, which schedules every work
// item of a call over the threads: decodes in chunks that prefetch across items, long decodes
// split into block ranges when there are too few for the threads, and items of several tokens
// handed to attend_item_vnni (attention_prefill.cpp). The decode routine has an AVX512-BF16
// version and an AVX2 + FMA one (the build's PAGEDLLM_ISA_*); the scheduler is shared.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "attention.h"
#include "kv_layout.h"
#include "vec.h"

namespace pagedllm {

#if defined(PAGEDLLM_BLOCKED_KV)
namespace {

// ---------------------------------------------------------------------------------------
// Decode: a work item with one query token (a decoding request, or a chunk's last token
// alone in its tile). Its rows are the GQA group sharing the KV head, so each K and V block
// is read once for all of them, in one pass: per block, the group's 16 scores, an online
// softmax step (running max and sum; the float32 accumulators are rescaled when the max
// grows) and the probability-weighted values. Decode reads every block of its context once
// and computes little on it, so it runs at memory speed; block tables scatter the blocks,
// which the hardware prefetcher cannot follow, so the loop prefetches the blocks
// ahead itself (kDecodeAhead), into the next item of the thread's chunk when the current one ends.
// ---------------------------------------------------------------------------------------

constexpr int64_t kDecodeAhead = 2;  // blocks (K and V) prefetched ahead of the one in use
inline void prefetch_line(const char* p) { _mm_prefetch(p, _MM_HINT_T0); }

struct DecodeItem {
  const uint16_t* k;      // the KV head's K blocks
  const uint16_t* v;      // its V blocks
  const int32_t* blocks;  // block ids from the first block holding a visible key
  int64_t num_blocks;
  int64_t lo, hi;  // visible keys, counted from the first of those blocks' first token
  int64_t token;   // the query (and output) row
};

inline DecodeItem decode_item(const AttentionItem& it, const AttentionArgs& a, const uint16_t* k_base,
                              const uint16_t* v_base, int64_t block_elems) {
  const int64_t r = it.request;
  const int64_t q_len = a.starts[r + 1] - a.starts[r];
  const int64_t pos = a.lens[r] - q_len + it.first_token;
  const int64_t lo = a.window > 0 ? std::max<int64_t>(0, pos - a.window + 1) : 0;
  const int64_t first = lo / kVnniBlock;
  const int64_t head_offset = static_cast<int64_t>(it.kv_head) * a.num_blocks * block_elems;
  DecodeItem d;
  d.k = k_base + head_offset;
  d.v = v_base + head_offset;
  d.blocks = a.table + r * a.table_stride + first;
  d.num_blocks = pos / kVnniBlock - first + 1;
  d.lo = lo - first * kVnniBlock;
  d.hi = pos - first * kVnniBlock;
  d.token = a.starts[r] + it.first_token;
  return d;
}

#if defined(PAGEDLLM_ISA_AVX512_BF16)
constexpr int kDecodeAccumulators = 16;  // float32 output vectors held in registers (of 32)

// cap * tanh(x / cap) on 16 lanes, tanh(y) = sign(y) (1 - 2 / (exp(2|y|) + 1)) (absolute error
// ~1e-7 cap; no calls, which would spill the accumulators).
inline __m512 soft_cap16(__m512 x, float cap) {
  const __m512 y2 = _mm512_abs_ps(_mm512_mul_ps(x, _mm512_set1_ps(2.0f / cap)));
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 t = _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(fast_exp16(y2), one)));
  const __m512 sign = _mm512_and_ps(x, _mm512_castsi512_ps(_mm512_set1_epi32(static_cast<int>(0x80000000u))));
  return _mm512_mul_ps(_mm512_or_ps(t, sign), _mm512_set1_ps(cap));
}

// kN rows (query heads) of one decode item: q_pairs [kN][kD / 2] (bf16 pairs, scaled),
// outputs to out[i]; or, for a part of a split item, unnormalised to partial[i] as
// [kD accumulators, running max, running sum].
template <int kD, int kN>
void decode_rows(const DecodeItem& d, const DecodeItem* next, const uint32_t* q_pairs, uint16_t* const* out,
                 float* partial, float cap) {
  constexpr int64_t kPairs = kD / 2, kChunks = kD / 16, kBlockElems = kD * kVnniBlock;
  static_assert(kPairs * 64 == kBlockElems * 2, "one prefetch per dim pair covers a block");
  __m512 acc[kN][kChunks];
  float row_max[kN], row_sum[kN];
#pragma GCC unroll 8
  for (int i = 0; i < kN; ++i) {
#pragma GCC unroll 16
    for (int c = 0; c < kChunks; ++c) acc[i][c] = _mm512_setzero_ps();
    row_max[i] = -std::numeric_limits<float>::infinity();
    row_sum[i] = 0.0f;
  }
  const int64_t n = d.num_blocks;
  for (int64_t b = 0; b < n; ++b) {
    const int64_t id = d.blocks[b];
    const uint16_t* kb = d.k + id * kBlockElems;
    const uint16_t* vb = d.v + id * kBlockElems;
    // The block kDecodeAhead on (this item's or the next one's); else this one again (a no-op).
    const char* pk = reinterpret_cast<const char*>(kb);
    const char* pv = reinterpret_cast<const char*>(vb);
    if (b + kDecodeAhead < n) {
      const int64_t ahead = d.blocks[b + kDecodeAhead];
      pk = reinterpret_cast<const char*>(d.k + ahead * kBlockElems);
      pv = reinterpret_cast<const char*>(d.v + ahead * kBlockElems);
    } else if (next != nullptr && b + kDecodeAhead - n < next->num_blocks) {
      const int64_t ahead = next->blocks[b + kDecodeAhead - n];
      pk = reinterpret_cast<const char*>(next->k + ahead * kBlockElems);
      pv = reinterpret_cast<const char*>(next->v + ahead * kBlockElems);
    }

    // Scores of the block's 16 keys, one vector per row (two partial sums: shorter chains).
    __m512 s[kN], s_odd[kN];
#pragma GCC unroll 8
    for (int i = 0; i < kN; ++i) s[i] = s_odd[i] = _mm512_setzero_ps();
    for (int64_t p = 0; p < kPairs; p += 2) {
      prefetch_line(pk + p * 64);
      prefetch_line(pv + p * 64);
      prefetch_line(pk + p * 64 + 64);
      prefetch_line(pv + p * 64 + 64);
      const __m512bh k0 = (__m512bh)_mm512_loadu_si512(kb + p * 32);
      const __m512bh k1 = (__m512bh)_mm512_loadu_si512(kb + p * 32 + 32);
#pragma GCC unroll 8
      for (int i = 0; i < kN; ++i) {
        const uint32_t* qp = q_pairs + i * kPairs + p;
        s[i] = _mm512_dpbf16_ps(s[i], k0, (__m512bh)_mm512_set1_epi32(static_cast<int>(qp[0])));
        s_odd[i] = _mm512_dpbf16_ps(s_odd[i], k1, (__m512bh)_mm512_set1_epi32(static_cast<int>(qp[1])));
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < kN; ++i) s[i] = _mm512_add_ps(s[i], s_odd[i]);

    // Visible keys of this block: [lo, hi] within it.
    const int64_t lo = d.lo - b * kVnniBlock, hi = d.hi - b * kVnniBlock;
    __mmask16 visible = 0xFFFF;
    if (lo > 0) visible &= static_cast<__mmask16>(0xFFFFu << lo);
    if (hi < kVnniBlock - 1) visible &= static_cast<__mmask16>(0xFFFFu >> (kVnniBlock - 1 - hi));

    // Online softmax step; probabilities to bf16 pairs (0 for invisible keys).
    alignas(64) uint32_t probs[kN][kVnniBlock / 2];
#pragma GCC unroll 8
    for (int i = 0; i < kN; ++i) {
      if (cap > 0.0f) s[i] = soft_cap16(s[i], cap);
      const float block_max = _mm512_mask_reduce_max_ps(visible, s[i]);
      if (block_max > row_max[i]) {
        const float alpha = fast_exp(row_max[i] - block_max);  // ~0 for the first block
        const __m512 va = _mm512_set1_ps(alpha);
#pragma GCC unroll 16
        for (int c = 0; c < kChunks; ++c) acc[i][c] = _mm512_mul_ps(acc[i][c], va);
        row_sum[i] *= alpha;
        row_max[i] = block_max;
      }
      const __m512 e = _mm512_maskz_mov_ps(visible, fast_exp16(_mm512_sub_ps(s[i], _mm512_set1_ps(row_max[i]))));
      row_sum[i] += _mm512_reduce_add_ps(e);
      _mm256_store_si256(reinterpret_cast<__m256i*>(probs[i]), to_bf16x16(e));
    }

    // Probability-weighted values: a vector is 16 dims of one token pair.
    for (int64_t tp = 0; tp < kVnniBlock / 2; ++tp) {
#pragma GCC unroll 16
      for (int c = 0; c < kChunks; ++c) {
        const __m512bh vv = (__m512bh)_mm512_loadu_si512(vb + (tp * kD + c * 16) * 2);
#pragma GCC unroll 8
        for (int i = 0; i < kN; ++i) {
          acc[i][c] = _mm512_dpbf16_ps(acc[i][c], vv, (__m512bh)_mm512_set1_epi32(static_cast<int>(probs[i][tp])));
        }
      }
    }
  }
  if (partial != nullptr) {
#pragma GCC unroll 8
    for (int i = 0; i < kN; ++i) {
      float* dst = partial + i * (kD + 2);
#pragma GCC unroll 16
      for (int c = 0; c < kChunks; ++c) _mm512_storeu_ps(dst + c * 16, acc[i][c]);
      dst[kD] = row_max[i];
      dst[kD + 1] = row_sum[i];
    }
    return;
  }
#pragma GCC unroll 8
  for (int i = 0; i < kN; ++i) {
    const __m512 inv = _mm512_set1_ps(1.0f / row_sum[i]);
#pragma GCC unroll 16
    for (int c = 0; c < kChunks; ++c) {
      store_bf16x16(out[i] + c * 16, _mm512_mul_ps(acc[i][c], inv));
    }
  }
}

// Every row of a decode item, kRows at a time (rows beyond the first kRows read the item's
// blocks again, from cache).
template <int kD>
void attend_decode(const AttentionItem& it, const DecodeItem& d, const DecodeItem* next, const AttentionArgs& a,
                   const uint16_t* q_base, uint16_t* o_base, float* partial) {
  constexpr int kPairs = kD / 2;
  constexpr int kRows = std::max(1, kDecodeAccumulators / (kD / 16));
  const int64_t group = a.group;
  alignas(64) uint32_t q_pairs[kRows * kPairs];
  uint16_t* out[kRows];
  for (int64_t g0 = 0; g0 < group; g0 += kRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kRows, group - g0));
    for (int i = 0; i < rows; ++i) {
      const int64_t head = it.kv_head * group + g0 + i;
      const uint16_t* q = q_base + d.token * a.q_stride0 + head * a.q_stride1;
      for (int p = 0; p < kPairs; ++p) {
        const float x0 = bf16_to_float(q[2 * p]) * a.scale;
        const float x1 = bf16_to_float(q[2 * p + 1]) * a.scale;
        q_pairs[i * kPairs + p] = static_cast<uint32_t>(bf16_bits(x0)) | (static_cast<uint32_t>(bf16_bits(x1)) << 16);
      }
      out[i] = o_base + d.token * a.o_stride0 + head * a.o_stride1;
    }
    // Rows past the first pass read this item again: prefetch it, not the next one.
    const DecodeItem* after = g0 + kRows < group ? &d : next;
    float* rows_partial = partial != nullptr ? partial + g0 * (kD + 2) : nullptr;
    switch (rows) {
#define PAGEDLLM_DECODE_ROWS(N)                                          \
  case N:                                                                \
    if constexpr (N <= kRows) decode_rows<kD, N>(d, after, q_pairs, out, rows_partial, a.cap); \
    break;
      PAGEDLLM_DECODE_ROWS(1)
      PAGEDLLM_DECODE_ROWS(2)
      PAGEDLLM_DECODE_ROWS(3)
      PAGEDLLM_DECODE_ROWS(4)
#undef PAGEDLLM_DECODE_ROWS
      default:
        break;
    }
  }
}

#else  // PAGEDLLM_ISA_AVX2
// ---------------------------------------------------------------------------------------
// The AVX2 + FMA port of the decode routine, on the same blocked layout: a 256-bit K vector is
// one dim pair of 8 tokens, widened to the pair's two dims as float32 (tokens in lanes); a V
// vector is 8 dims of one token pair, widened to the pair's two tokens (dims in lanes). Queries
// and probabilities are rounded to bf16 as the AVX512-BF16 path rounds them, so the products
// are exact in float32 as its dot products are; FMA accumulates them. With 16 registers the
// output accumulators cannot stay in registers across a block as they do there: they live in
// a small per-item array (L1) and each block's p.V loads a tile of them, runs the block's 8
// token pairs and stores it back.
// ---------------------------------------------------------------------------------------

constexpr int kDecodeRows = 4;    // query rows per pass over the blocks (2 score vectors each)
constexpr int kPvTileRows = 2;    // p.V register tiles: 2 rows x 4 vectors of 8 dims (and the
constexpr int kPvTileVecs = 4;    // odd row of a group x 8 vectors), 8 FMA chains each

// cap * tanh(x / cap) on 8 lanes, as soft_cap16.
inline __m256 soft_cap8(__m256 x, float cap) {
  const __m256 sign_bit = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0x80000000u)));
  const __m256 y2 = _mm256_andnot_ps(sign_bit, _mm256_mul_ps(x, _mm256_set1_ps(2.0f / cap)));
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 t = _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(fast_exp8(y2), one)));
  return _mm256_mul_ps(_mm256_or_ps(t, _mm256_and_ps(x, sign_bit)), _mm256_set1_ps(cap));
}

// The largest of 8 lanes.
inline float max_of_lanes8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// kR rows' p.V over one block for dims [c0 * 8, (c0 + kVecs) * 8): probs [kR][16] (float,
// bf16-exact), acc [kR][kD].
template <int kD, int kR, int kVecs>
inline void decode_pv_tile(const uint16_t* vb, const float* probs, float* acc, int c0) {
  __m256 a[kR][kVecs];
#pragma GCC unroll 4
  for (int r = 0; r < kR; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < kVecs; ++c) a[r][c] = _mm256_load_ps(acc + r * kD + (c0 + c) * 8);
#pragma GCC unroll 8
  for (int tp = 0; tp < kVnniBlock / 2; ++tp) {
    __m256 p_even[kR], p_odd[kR];
#pragma GCC unroll 4
    for (int r = 0; r < kR; ++r) {
      p_even[r] = _mm256_broadcast_ss(probs + r * kVnniBlock + 2 * tp);
      p_odd[r] = _mm256_broadcast_ss(probs + r * kVnniBlock + 2 * tp + 1);
    }
#pragma GCC unroll 8
    for (int c = 0; c < kVecs; ++c) {
      const __m256i vv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(vb + (tp * kD + (c0 + c) * 8) * 2));
      const __m256 v_even = low_bf16_to_float8(vv), v_odd = high_bf16_to_float8(vv);
#pragma GCC unroll 4
      for (int r = 0; r < kR; ++r) {
        a[r][c] = _mm256_fmadd_ps(p_even[r], v_even, a[r][c]);
        a[r][c] = _mm256_fmadd_ps(p_odd[r], v_odd, a[r][c]);
      }
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < kR; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < kVecs; ++c) _mm256_store_ps(acc + r * kD + (c0 + c) * 8, a[r][c]);
}

// kN rows (query heads) of one decode item, as the AVX512-BF16 decode_rows: q [kN][kD]
// (scaled, bf16-exact floats); outputs to out[i], or for a part of a split item unnormalised
// to partial[i] as [kD accumulators, running max, running sum].
template <int kD, int kN>
void decode_rows(const DecodeItem& d, const DecodeItem* next, const float* q, uint16_t* const* out, float* partial,
                 float cap) {
  constexpr int64_t kPairs = kD / 2, kBlockElems = kD * kVnniBlock;
  static_assert(kPairs * 64 == kBlockElems * 2, "one prefetch per dim pair covers a block");
  static_assert(kD % (16 * kPvTileVecs) == 0, "head size must be a multiple of 64");
  // Few rows leave too few independent FMA chains for the scores: split each into even and odd
  // dims (not for 3 rows: 12 accumulators and the 4 key vectors would spill).
  constexpr int kSplit = kN <= 2 ? 2 : 1;
  alignas(32) float acc[kN][kD];
  alignas(32) float probs[kN][kVnniBlock];
  float row_max[kN], row_sum[kN];
  for (int i = 0; i < kN; ++i) {
    std::fill(acc[i], acc[i] + kD, 0.0f);
    row_max[i] = -std::numeric_limits<float>::infinity();
    row_sum[i] = 0.0f;
  }
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256 neg_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  const int64_t n = d.num_blocks;
  for (int64_t b = 0; b < n; ++b) {
    const int64_t id = d.blocks[b];
    const uint16_t* kb = d.k + id * kBlockElems;
    const uint16_t* vb = d.v + id * kBlockElems;
    // The block kDecodeAhead on (this item's or the next one's); else this one again (a no-op).
    const char* pk = reinterpret_cast<const char*>(kb);
    const char* pv = reinterpret_cast<const char*>(vb);
    if (b + kDecodeAhead < n) {
      const int64_t ahead = d.blocks[b + kDecodeAhead];
      pk = reinterpret_cast<const char*>(d.k + ahead * kBlockElems);
      pv = reinterpret_cast<const char*>(d.v + ahead * kBlockElems);
    } else if (next != nullptr && b + kDecodeAhead - n < next->num_blocks) {
      const int64_t ahead = next->blocks[b + kDecodeAhead - n];
      pk = reinterpret_cast<const char*>(next->k + ahead * kBlockElems);
      pv = reinterpret_cast<const char*>(next->v + ahead * kBlockElems);
    }

    // Scores of the block's 16 keys: per row, tokens 0-7 and 8-15 in two vectors.
    __m256 s[kSplit][kN][2];
#pragma GCC unroll 2
    for (int h = 0; h < kSplit; ++h)
#pragma GCC unroll 4
      for (int i = 0; i < kN; ++i) s[h][i][0] = s[h][i][1] = _mm256_setzero_ps();
    for (int64_t p = 0; p < kPairs; ++p) {
      prefetch_line(pk + p * 64);
      prefetch_line(pv + p * 64);
      const __m256i k0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kb + p * 32));
      const __m256i k1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kb + p * 32 + 16));
      const __m256 k0_even = low_bf16_to_float8(k0), k0_odd = high_bf16_to_float8(k0);
      const __m256 k1_even = low_bf16_to_float8(k1), k1_odd = high_bf16_to_float8(k1);
#pragma GCC unroll 4
      for (int i = 0; i < kN; ++i) {
        const __m256 q_even = _mm256_broadcast_ss(q + i * kD + 2 * p);
        const __m256 q_odd = _mm256_broadcast_ss(q + i * kD + 2 * p + 1);
        s[0][i][0] = _mm256_fmadd_ps(q_even, k0_even, s[0][i][0]);
        s[0][i][1] = _mm256_fmadd_ps(q_even, k1_even, s[0][i][1]);
        s[kSplit - 1][i][0] = _mm256_fmadd_ps(q_odd, k0_odd, s[kSplit - 1][i][0]);
        s[kSplit - 1][i][1] = _mm256_fmadd_ps(q_odd, k1_odd, s[kSplit - 1][i][1]);
      }
    }
    if constexpr (kSplit == 2) {
#pragma GCC unroll 4
      for (int i = 0; i < kN; ++i) {
        s[0][i][0] = _mm256_add_ps(s[0][i][0], s[1][i][0]);
        s[0][i][1] = _mm256_add_ps(s[0][i][1], s[1][i][1]);
      }
    }

    // Visible keys of this block: [lo, hi] within it, as lane masks of the two halves.
    const int lo = static_cast<int>(std::max<int64_t>(d.lo - b * kVnniBlock, 0));
    const int hi = static_cast<int>(std::min<int64_t>(d.hi - b * kVnniBlock, kVnniBlock - 1));
    const __m256i above = _mm256_set1_epi32(lo - 1), below = _mm256_set1_epi32(hi + 1);
    const __m256i lane_hi = _mm256_add_epi32(lane, _mm256_set1_epi32(8));
    const __m256 visible0 = _mm256_castsi256_ps(
        _mm256_and_si256(_mm256_cmpgt_epi32(lane, above), _mm256_cmpgt_epi32(below, lane)));
    const __m256 visible1 = _mm256_castsi256_ps(
        _mm256_and_si256(_mm256_cmpgt_epi32(lane_hi, above), _mm256_cmpgt_epi32(below, lane_hi)));

    // Online softmax step; probabilities rounded to bf16 (0 for invisible keys).
#pragma GCC unroll 4
    for (int i = 0; i < kN; ++i) {
      __m256 s0 = s[0][i][0], s1 = s[0][i][1];
      if (cap > 0.0f) {
        s0 = soft_cap8(s0, cap);
        s1 = soft_cap8(s1, cap);
      }
      const float block_max =
          max_of_lanes8(_mm256_max_ps(_mm256_blendv_ps(neg_inf, s0, visible0), _mm256_blendv_ps(neg_inf, s1, visible1)));
      if (block_max > row_max[i]) {
        const float alpha = fast_exp(row_max[i] - block_max);  // ~0 for the first block
        const __m256 va = _mm256_set1_ps(alpha);
        for (int c = 0; c < kD; c += 8) _mm256_store_ps(acc[i] + c, _mm256_mul_ps(_mm256_load_ps(acc[i] + c), va));
        row_sum[i] *= alpha;
        row_max[i] = block_max;
      }
      const __m256 m = _mm256_set1_ps(row_max[i]);
      const __m256 e0 = _mm256_and_ps(visible0, fast_exp8(_mm256_sub_ps(s0, m)));
      const __m256 e1 = _mm256_and_ps(visible1, fast_exp8(_mm256_sub_ps(s1, m)));
      row_sum[i] += reduce_add8(_mm256_add_ps(e0, e1));
      _mm256_store_ps(probs[i], round_bf16x8(e0));
      _mm256_store_ps(probs[i] + 8, round_bf16x8(e1));
    }

    // Probability-weighted values, a register tile at a time.
    constexpr int kPairedRows = kN - kN % kPvTileRows;
    for (int c0 = 0; c0 < kD / 8; c0 += kPvTileVecs) {
#pragma GCC unroll 2
      for (int i = 0; i < kPairedRows; i += kPvTileRows) {
        decode_pv_tile<kD, kPvTileRows, kPvTileVecs>(vb, probs[i], acc[i], c0);
      }
    }
    if constexpr (kPairedRows < kN) {
      for (int c0 = 0; c0 < kD / 8; c0 += 2 * kPvTileVecs) {
        decode_pv_tile<kD, 1, 2 * kPvTileVecs>(vb, probs[kPairedRows], acc[kPairedRows], c0);
      }
    }
  }
  if (partial != nullptr) {
    for (int i = 0; i < kN; ++i) {
      float* dst = partial + i * (kD + 2);
      std::copy(acc[i], acc[i] + kD, dst);
      dst[kD] = row_max[i];
      dst[kD + 1] = row_sum[i];
    }
    return;
  }
  for (int i = 0; i < kN; ++i) {
    const __m256 inv = _mm256_set1_ps(1.0f / row_sum[i]);
    for (int c = 0; c < kD; c += 8) store_bf16x8(out[i] + c, _mm256_mul_ps(_mm256_load_ps(acc[i] + c), inv));
  }
}

// Every row of a decode item, kDecodeRows at a time (rows beyond the first pass read the
// item's blocks again, from cache).
template <int kD>
void attend_decode(const AttentionItem& it, const DecodeItem& d, const DecodeItem* next, const AttentionArgs& a,
                   const uint16_t* q_base, uint16_t* o_base, float* partial) {
  const int64_t group = a.group;
  alignas(32) float q_rows[kDecodeRows * kD];
  uint16_t* out[kDecodeRows];
  for (int64_t g0 = 0; g0 < group; g0 += kDecodeRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kDecodeRows, group - g0));
    for (int i = 0; i < rows; ++i) {
      const int64_t head = it.kv_head * group + g0 + i;
      const uint16_t* q = q_base + d.token * a.q_stride0 + head * a.q_stride1;
      for (int c = 0; c < kD; ++c) q_rows[i * kD + c] = round_to<c10::BFloat16>(bf16_to_float(q[c]) * a.scale);
      out[i] = o_base + d.token * a.o_stride0 + head * a.o_stride1;
    }
    // Rows past the first pass read this item again: prefetch it, not the next one.
    const DecodeItem* after = g0 + kDecodeRows < group ? &d : next;
    float* rows_partial = partial != nullptr ? partial + g0 * (kD + 2) : nullptr;
    switch (rows) {
      case 1: decode_rows<kD, 1>(d, after, q_rows, out, rows_partial, a.cap); break;
      case 2: decode_rows<kD, 2>(d, after, q_rows, out, rows_partial, a.cap); break;
      case 3: decode_rows<kD, 3>(d, after, q_rows, out, rows_partial, a.cap); break;
      default: decode_rows<kD, 4>(d, after, q_rows, out, rows_partial, a.cap); break;
    }
  }
}
#endif

// Head sizes with a decode routine; other items (and other sizes) take attend_item_vnni.
template <int kD>
constexpr bool kHasDecode = kD == 64 || kD == 128 || kD == 256;

// A decode item's blocks [first_block, end_block); part >= 0 when the item is split (few
// long decodes: parts run on different threads and are combined after).
struct DecodeRange {
  int32_t item, first_block, end_block, part;
};

constexpr int64_t kSplitMinBlocks = 4;      // blocks per part at least
constexpr int64_t kSplitThreadBlocks = 32;  // split when the items hold this many blocks per thread

// The block range as an item of its own (visible keys and block ids shifted).
inline DecodeItem narrow(DecodeItem d, int64_t first_block, int64_t end_block) {
  d.blocks += first_block;
  d.num_blocks = end_block - first_block;
  d.lo -= first_block * kVnniBlock;
  d.hi -= first_block * kVnniBlock;
  return d;
}

// Output rows of a split item from its parts' [accumulators, max, sum]: the parts' sums and
// accumulators rescaled to the largest max.
template <int kD>
void combine_parts(const AttentionItem& it, const DecodeItem& d, const float* partials, int64_t parts,
                   const AttentionArgs& a, uint16_t* o_base) {
  const int64_t group = a.group, row_stride = kD + 2, part_stride = group * row_stride;
  for (int64_t g = 0; g < group; ++g) {
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t p = 0; p < parts; ++p) m = std::max(m, partials[p * part_stride + g * row_stride + kD]);
    alignas(64) float acc[kD] = {};
    float sum = 0.0f;
    for (int64_t p = 0; p < parts; ++p) {
      const float* src = partials + p * part_stride + g * row_stride;
      const float w = std::exp(src[kD] - m);
      sum += w * src[kD + 1];
      for (int64_t c = 0; c < kD; ++c) acc[c] += w * src[c];
    }
    uint16_t* o = o_base + d.token * a.o_stride0 + (it.kv_head * group + g) * a.o_stride1;
#if defined(PAGEDLLM_ISA_AVX512_BF16)
    const __m512 inv = _mm512_set1_ps(1.0f / sum);
    for (int64_t c = 0; c < kD; c += 16) {
      store_bf16x16(o + c, _mm512_mul_ps(_mm512_load_ps(acc + c), inv));
    }
#else
    const __m256 inv = _mm256_set1_ps(1.0f / sum);
    for (int64_t c = 0; c < kD; c += 8) store_bf16x8(o + c, _mm256_mul_ps(_mm256_load_ps(acc + c), inv));
#endif
  }
}

}  // namespace

// Every work item of a call: see the file header. Decode items need a head size with a decode
// routine (kHasDecode); the others, and every item of other sizes, take attend_item_vnni.
template <int kD>
void paged_attention_vnni(at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                          const at::Tensor& value_cache, const AttentionArgs& args,
                          const std::vector<AttentionItem>& items) {
  const int64_t head_dim = query.size(2), block_elems = head_dim * kVnniBlock;
  const int64_t num_items = static_cast<int64_t>(items.size());
  const auto* q = reinterpret_cast<const uint16_t*>(query.data_ptr<at::BFloat16>());
  const auto* k = reinterpret_cast<const uint16_t*>(key_cache.data_ptr<at::BFloat16>());
  const auto* v = reinterpret_cast<const uint16_t*>(value_cache.data_ptr<at::BFloat16>());
  auto* o = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t max_threads = std::max<int64_t>(1, at::get_num_threads());
  auto is_decode = [&](const AttentionItem& it) { return kHasDecode<kD> && it.end_token - it.first_token == 1; };

  // Fewer decode items than a few per thread (few sequences) over long contexts: cut them
  // into block ranges so that every thread streams a share of the context.
  std::vector<DecodeRange> ranges;
  std::vector<float> partials;
  int64_t num_parts = 0, total_blocks = 0;
  if (kHasDecode<kD> && max_threads > 1 && num_items < 4 * max_threads &&
      std::all_of(items.begin(), items.end(), is_decode)) {
    for (const AttentionItem& it : items) total_blocks += decode_item(it, args, k, v, block_elems).num_blocks;
  }
  if (total_blocks >= kSplitThreadBlocks * max_threads) {
    const int64_t per_part = std::max(kSplitMinBlocks, (total_blocks + 8 * max_threads - 1) / (8 * max_threads));
    for (int64_t i = 0; i < num_items; ++i) {
      const int64_t n = decode_item(items[i], args, k, v, block_elems).num_blocks;
      const int64_t parts = (n + per_part - 1) / per_part;
      for (int64_t p = 0; p < parts; ++p) {
        ranges.push_back({static_cast<int32_t>(i), static_cast<int32_t>(n * p / parts),
                          static_cast<int32_t>(n * (p + 1) / parts), parts > 1 ? static_cast<int32_t>(num_parts++) : -1});
      }
    }
    partials.resize(num_parts * args.group * (head_dim + 2));
  }
  const bool split = !ranges.empty();
  const int64_t num_entries = split ? static_cast<int64_t>(ranges.size()) : num_items;
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min(max_threads, num_entries)));

  // Guided self-scheduling: chunks of a share of the entries left, so a thread prefetches
  // across the entries of its chunk and the last chunks are small enough to balance. After
  // the leading decode items (the scheduler puts decodes first), entries go one at a time:
  // prefill tiles are costly and uneven.
  int64_t decode_prefix = num_entries;
  if (!split) {
    decode_prefix = 0;
    while (decode_prefix < num_items && is_decode(items[decode_prefix])) ++decode_prefix;
  }
  std::atomic<int64_t> next_entry{0};
#pragma omp parallel num_threads(threads)
  {
    std::unique_ptr<VnniScratch> scratch;  // for the items with several tokens
    auto entry_decode = [&](int64_t e) {
      if (!split) return decode_item(items[e], args, k, v, block_elems);
      const DecodeRange& r = ranges[e];
      return narrow(decode_item(items[r.item], args, k, v, block_elems), r.first_block, r.end_block);
    };
    for (;;) {
      int64_t begin = next_entry.load(std::memory_order_relaxed), end;
      do {
        end = begin >= decode_prefix
                  ? begin + 1
                  : std::min(decode_prefix, begin + std::max<int64_t>(2, (decode_prefix - begin) / (2 * threads)));
      } while (begin < num_entries && !next_entry.compare_exchange_weak(begin, end, std::memory_order_relaxed));
      if (begin >= num_entries) break;
      DecodeItem current{}, following{};
      bool have_current = false;
      for (int64_t e = begin; e < end; ++e) {
        const AttentionItem& it = items[split ? ranges[e].item : e];
        if (!is_decode(it)) {
          if (!scratch) scratch = std::make_unique<VnniScratch>(head_dim);
          attend_item_vnni<kD>(it, args, q, k, v, o, head_dim, *scratch);
          have_current = false;
          continue;
        }
        if constexpr (kHasDecode<kD>) {
          if (!have_current) {  // the first of a run: nothing prefetched its first blocks
            current = entry_decode(e);
            for (int64_t b = 0; b < std::min<int64_t>(kDecodeAhead, current.num_blocks); ++b) {
              const char* kb = reinterpret_cast<const char*>(current.k + current.blocks[b] * block_elems);
              const char* vb = reinterpret_cast<const char*>(current.v + current.blocks[b] * block_elems);
              for (int64_t off = 0; off < block_elems * 2; off += 64) {
                prefetch_line(kb + off);
                prefetch_line(vb + off);
              }
            }
          }
          const bool more = e + 1 < end && (split || is_decode(items[e + 1]));
          if (more) following = entry_decode(e + 1);
          float* partial = nullptr;
          if (split && ranges[e].part >= 0) partial = partials.data() + ranges[e].part * args.group * (kD + 2);
          attend_decode<kD>(it, current, more ? &following : nullptr, args, q, o, partial);
          current = following;
          have_current = more;
        }
      }
    }
  }
  if constexpr (kHasDecode<kD>) {
    for (int64_t e = 0; e < static_cast<int64_t>(ranges.size());) {  // split items' outputs
      const DecodeRange& r = ranges[e];
      int64_t parts = 1;
      while (e + parts < static_cast<int64_t>(ranges.size()) && ranges[e + parts].item == r.item) ++parts;
      if (r.part >= 0) {
        const AttentionItem& it = items[r.item];
        combine_parts<kD>(it, decode_item(it, args, k, v, block_elems),
                          partials.data() + r.part * args.group * (kD + 2), parts, args, o);
      }
      e += parts;
    }
  }
}

// The head sizes paged_attention dispatches to (0: any other).
template void paged_attention_vnni<64>(at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                       const AttentionArgs&, const std::vector<AttentionItem>&);
template void paged_attention_vnni<128>(at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                        const AttentionArgs&, const std::vector<AttentionItem>&);
template void paged_attention_vnni<256>(at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                        const AttentionArgs&, const std::vector<AttentionItem>&);
template void paged_attention_vnni<0>(at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const AttentionArgs&, const std::vector<AttentionItem>&);
#endif

}  // namespace pagedllm
