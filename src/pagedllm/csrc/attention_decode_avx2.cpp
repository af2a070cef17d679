// The AVX2 + FMA decode routine of paged attention over the blocked bf16 layout (attend_decode
// and its register tiles), for builds where vec.h sets PAGEDLLM_ISA_AVX2. Apart from
// attention_decode.cpp (the AVX512-BF16 routine and the scheduler that calls either) so that
// each file holds one instruction set's kernel; what they share is in attention.h.

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "attention.h"
#include "kv_layout.h"
#include "vec.h"

#if defined(PAGEDLLM_ISA_AVX2)
namespace pagedllm {
namespace detail {

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

namespace {

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

}  // namespace

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

// The head sizes with a decode routine (kHasDecode in attention_decode.cpp).
template void attend_decode<64>(const AttentionItem&, const DecodeItem&, const DecodeItem*, const AttentionArgs&,
                                const uint16_t*, uint16_t*, float*);
template void attend_decode<128>(const AttentionItem&, const DecodeItem&, const DecodeItem*, const AttentionArgs&,
                                 const uint16_t*, uint16_t*, float*);
template void attend_decode<256>(const AttentionItem&, const DecodeItem&, const DecodeItem*, const AttentionArgs&,
                                 const uint16_t*, uint16_t*, float*);

}  // namespace detail
}  // namespace pagedllm
#endif  // PAGEDLLM_ISA_AVX2
