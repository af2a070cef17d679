// The AVX2 + FMA version of attend_item_vnni: work items of several query tokens over the
// blocked bf16 layout, for builds where vec.h sets PAGEDLLM_ISA_AVX2. Apart from
// attention_prefill.cpp (the AVX512-BF16 version) so that each file holds one instruction
// set's kernel; both start with prepare_rows (attention.h).

#include <ATen/core/Tensor.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "attention.h"
#include "kv_layout.h"
#include "vec.h"

#if defined(PAGEDLLM_ISA_AVX2)
namespace pagedllm {

// ---------------------------------------------------------------------------------------
// The AVX2 + FMA port, on the same blocked layout and with the tiled path's structure for
// every head size (head_dim % 32 == 0): keys in chunks of kChunkBlocks blocks with an online
// softmax. A 256-bit K vector (one dim pair of 8 tokens) widens to the pair's two dims as
// float32, a V vector (8 dims of one token pair) to the pair's two tokens; queries and
// probabilities are bf16-exact, so the products are exact in float32, as in the AVX512-BF16
// path, and FMA accumulates them. Register tiles fit 16 registers: scores for 4 rows x 16 keys
// (8 accumulators), p.V for 2 rows x 32 dims.
// ---------------------------------------------------------------------------------------

namespace {

constexpr int64_t kChunkBlocks = 16;  // 256 keys
constexpr int kScoreRows = 4;
constexpr int kPvRows = 2;
constexpr int kPvVecs = 4;  // vectors of 8 dims per p.V pass

// The largest of 8 lanes.
inline float max_of_lanes8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// kN rows' scores (q [kN][head_dim], floats) against blocks[0, nb).
template <int kD, int kN>
inline void chunk_scores8(const float* q, int64_t head_dim, const uint16_t* k_head, const int32_t* blocks, int64_t nb,
                          int64_t block_elems, float* scores, int64_t stride) {
  const int64_t dim = kD > 0 ? kD : head_dim, pairs = dim / 2;
  for (int64_t b = 0; b < nb; ++b) {
    const uint16_t* kb = k_head + static_cast<int64_t>(blocks[b]) * block_elems;
    __m256 acc[kN][2];
    for (int i = 0; i < kN; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int64_t p = 0; p < pairs; ++p) {
      const __m256i k0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kb + p * 32));
      const __m256i k1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kb + p * 32 + 16));
      const __m256 k0_even = low_bf16_to_float8(k0), k0_odd = high_bf16_to_float8(k0);
      const __m256 k1_even = low_bf16_to_float8(k1), k1_odd = high_bf16_to_float8(k1);
      for (int i = 0; i < kN; ++i) {
        const __m256 q_even = _mm256_broadcast_ss(q + i * dim + 2 * p);
        const __m256 q_odd = _mm256_broadcast_ss(q + i * dim + 2 * p + 1);
        acc[i][0] = _mm256_fmadd_ps(q_odd, k0_odd, _mm256_fmadd_ps(q_even, k0_even, acc[i][0]));
        acc[i][1] = _mm256_fmadd_ps(q_odd, k1_odd, _mm256_fmadd_ps(q_even, k1_even, acc[i][1]));
      }
    }
    for (int i = 0; i < kN; ++i) {
      _mm256_storeu_ps(scores + i * stride + b * kVnniBlock, acc[i][0]);
      _mm256_storeu_ps(scores + i * stride + b * kVnniBlock + 8, acc[i][1]);
    }
  }
}

// kN rows' p.V over blocks[b_lo, b_hi] (probs: bf16, [kN][stride]), added to out_acc
// ([kN][head_dim]), kPvVecs x 8 dims per pass over the blocks.
template <int kD, int kN>
inline void chunk_pv8(const uint16_t* probs, int64_t stride, const uint16_t* v_head, const int32_t* blocks,
                      int64_t b_lo, int64_t b_hi, int64_t block_elems, int64_t head_dim, float* out_acc) {
  const int64_t dim = kD > 0 ? kD : head_dim;
  for (int64_t c0 = 0; c0 < dim / 8; c0 += kPvVecs) {
    __m256 acc[kN][kPvVecs];
    for (int i = 0; i < kN; ++i)
      for (int c = 0; c < kPvVecs; ++c) acc[i][c] = _mm256_loadu_ps(out_acc + i * dim + (c0 + c) * 8);
    for (int64_t b = b_lo; b <= b_hi; ++b) {
      const uint16_t* vb = v_head + static_cast<int64_t>(blocks[b]) * block_elems;
      for (int64_t tp = 0; tp < kVnniBlock / 2; ++tp) {
        // Each row's probability pair, widened once for the pass's kPvVecs value vectors.
        __m256 p_even[kN], p_odd[kN];
        for (int i = 0; i < kN; ++i) {
          const uint32_t* pp = reinterpret_cast<const uint32_t*>(probs + i * stride);
          const __m256i pair = _mm256_set1_epi32(static_cast<int>(pp[b * (kVnniBlock / 2) + tp]));
          p_even[i] = low_bf16_to_float8(pair);
          p_odd[i] = high_bf16_to_float8(pair);
        }
        for (int c = 0; c < kPvVecs; ++c) {
          const __m256i vv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(vb + (tp * dim + (c0 + c) * 8) * 2));
          const __m256 v_even = low_bf16_to_float8(vv), v_odd = high_bf16_to_float8(vv);
          for (int i = 0; i < kN; ++i) {
            acc[i][c] = _mm256_fmadd_ps(p_odd[i], v_odd, _mm256_fmadd_ps(p_even[i], v_even, acc[i][c]));
          }
        }
      }
    }
    for (int i = 0; i < kN; ++i)
      for (int c = 0; c < kPvVecs; ++c) _mm256_storeu_ps(out_acc + i * dim + (c0 + c) * 8, acc[i][c]);
  }
}

}  // namespace

template <int kD>
void attend_item_vnni(const AttentionItem& it, const AttentionArgs& a, const uint16_t* q_base,
                      const uint16_t* k_base, const uint16_t* v_base, uint16_t* o_base, int64_t runtime_head_dim,
                      VnniScratch& w) {
  const int64_t dim = kD > 0 ? kD : runtime_head_dim;
  const int64_t pairs = dim / 2, block_elems = dim * kVnniBlock;
  constexpr int64_t kChunk = kChunkBlocks * kVnniBlock;
  const int64_t r = it.request, kv_head = it.kv_head, group = a.group;
  const int64_t rows = (it.end_token - it.first_token) * group;
  const int32_t* req_table = a.table + r * a.table_stride;
  const uint16_t* k_head = k_base + kv_head * a.num_blocks * block_elems;
  const uint16_t* v_head = v_base + kv_head * a.num_blocks * block_elems;

  prepare_rows(it, a, q_base, pairs, w);
  for (int64_t row = 0; row < rows; ++row) {
    const uint32_t* src = w.q_pairs.data() + row * pairs;
    float* dst = w.q_rows.data() + row * dim;
    for (int64_t p = 0; p < pairs; ++p) {
      dst[2 * p] = bf16_to_float(static_cast<uint16_t>(src[p] & 0xFFFFu));
      dst[2 * p + 1] = bf16_to_float(static_cast<uint16_t>(src[p] >> 16));
    }
    w.row_max[row] = -std::numeric_limits<float>::infinity();
    w.row_sum[row] = 0.0f;
  }
  if (static_cast<int64_t>(w.scores.size()) < rows * kChunk) {
    w.scores.resize(rows * kChunk);
    w.probs.resize(rows * kChunk);
  }
  std::fill(w.out_acc.begin(), w.out_acc.begin() + rows * dim, 0.0f);
  int64_t min_lo = w.lo[0];
  for (int64_t row = 1; row < rows; ++row) min_lo = std::min(min_lo, w.lo[row]);
  const int64_t first_block = min_lo / kVnniBlock, last_block = w.hi[rows - 1] / kVnniBlock;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256 neg_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());

  for (int64_t chunk = first_block; chunk <= last_block; chunk += kChunkBlocks) {
    const int64_t nb = std::min<int64_t>(kChunkBlocks, last_block - chunk + 1);
    const int64_t base = chunk * kVnniBlock, span = nb * kVnniBlock;
    const int32_t* blocks = req_table + chunk;

    for (int64_t r0 = 0; r0 < rows; r0 += kScoreRows) {
      const float* q = w.q_rows.data() + r0 * dim;
      float* dst = w.scores.data() + r0 * kChunk;
      switch (std::min<int64_t>(kScoreRows, rows - r0)) {
        case 4: chunk_scores8<kD, 4>(q, dim, k_head, blocks, nb, block_elems, dst, kChunk); break;
        case 3: chunk_scores8<kD, 3>(q, dim, k_head, blocks, nb, block_elems, dst, kChunk); break;
        case 2: chunk_scores8<kD, 2>(q, dim, k_head, blocks, nb, block_elems, dst, kChunk); break;
        default: chunk_scores8<kD, 1>(q, dim, k_head, blocks, nb, block_elems, dst, kChunk); break;
      }
    }

    // Online softmax, as in the AVX512-BF16 tiled path, 8 keys per vector.
    for (int64_t row = 0; row < rows; ++row) {
      float* s = w.scores.data() + row * kChunk;
      uint16_t* pr = w.probs.data() + row * kChunk;
      const int64_t lo = std::max<int64_t>(w.lo[row], base) - base;
      const int64_t hi = std::min<int64_t>(w.hi[row], base + span - 1) - base;
      if (hi < lo) {
        std::fill(pr, pr + span, uint16_t{0});
        continue;
      }
      if (a.cap > 0.0f) {
        for (int64_t j = lo; j <= hi; ++j) s[j] = a.cap * std::tanh(s[j] / a.cap);
      }
      // Lanes of the 8 keys from j that are in [lo, hi].
      const __m256i above = _mm256_set1_epi32(static_cast<int>(lo) - 1);
      const __m256i below = _mm256_set1_epi32(static_cast<int>(hi) + 1);
      auto visible = [&](int64_t j) {
        const __m256i key = _mm256_add_epi32(lane, _mm256_set1_epi32(static_cast<int>(j)));
        return _mm256_castsi256_ps(_mm256_and_si256(_mm256_cmpgt_epi32(key, above), _mm256_cmpgt_epi32(below, key)));
      };
      const int64_t j0 = lo & ~int64_t{7}, j1 = (hi | 7) + 1;
      __m256 vmax = _mm256_set1_ps(w.row_max[row]);
      for (int64_t j = j0; j < j1; j += 8) {
        vmax = _mm256_max_ps(vmax, _mm256_blendv_ps(neg_inf, _mm256_loadu_ps(s + j), visible(j)));
      }
      const float m = max_of_lanes8(vmax);
      if (m > w.row_max[row]) {
        const float rescale = fast_exp(w.row_max[row] - m);  // 0-ish for the first chunk: nothing yet
        w.row_sum[row] *= rescale;
        float* oa = w.out_acc.data() + row * dim;
        const __m256 f = _mm256_set1_ps(rescale);
        for (int64_t c = 0; c < dim; c += 8) _mm256_storeu_ps(oa + c, _mm256_mul_ps(_mm256_loadu_ps(oa + c), f));
        w.row_max[row] = m;
      }
      const __m256 shift = _mm256_set1_ps(m);
      __m256 total = _mm256_setzero_ps();
      std::fill(pr, pr + j0, uint16_t{0});
      for (int64_t j = j0; j < j1; j += 8) {
        const __m256 e = _mm256_and_ps(visible(j), fast_exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), shift)));
        total = _mm256_add_ps(total, e);
        store_bf16x8(pr + j, e);
      }
      std::fill(pr + j1, pr + span, uint16_t{0});
      w.row_sum[row] += reduce_add8(total);
    }

    // p.V of this chunk, added to the running outputs.
    for (int64_t r0 = 0; r0 < rows; r0 += kPvRows) {
      const int64_t nr = std::min<int64_t>(kPvRows, rows - r0);
      int64_t lo = w.lo[r0], hi = w.hi[r0];
      for (int64_t i = 1; i < nr; ++i) {
        lo = std::min(lo, w.lo[r0 + i]);
        hi = std::max(hi, w.hi[r0 + i]);
      }
      lo = std::max(lo, base) - base;
      hi = std::min(hi, base + span - 1) - base;
      if (hi < lo) continue;
      const uint16_t* pr = w.probs.data() + r0 * kChunk;
      float* oa = w.out_acc.data() + r0 * dim;
      const int64_t b_lo = lo / kVnniBlock, b_hi = hi / kVnniBlock;
      if (nr == 2) {
        chunk_pv8<kD, 2>(pr, kChunk, v_head, blocks, b_lo, b_hi, block_elems, dim, oa);
      } else {
        chunk_pv8<kD, 1>(pr, kChunk, v_head, blocks, b_lo, b_hi, block_elems, dim, oa);
      }
    }
  }

  for (int64_t row = 0; row < rows; ++row) {
    const int64_t t = it.first_token + row / group, g = row % group;
    uint16_t* o = o_base + (a.starts[r] + t) * a.o_stride0 + (kv_head * group + g) * a.o_stride1;
    const __m256 inv = _mm256_set1_ps(1.0f / w.row_sum[row]);
    const float* oa = w.out_acc.data() + row * dim;
    for (int64_t c = 0; c < dim; c += 8) store_bf16x8(o + c, _mm256_mul_ps(_mm256_loadu_ps(oa + c), inv));
  }
}

// The head sizes paged_attention dispatches to (0: any other).
template void attend_item_vnni<64>(const AttentionItem&, const AttentionArgs&, const uint16_t*,
                                   const uint16_t*, const uint16_t*, uint16_t*, int64_t, VnniScratch&);
template void attend_item_vnni<128>(const AttentionItem&, const AttentionArgs&, const uint16_t*,
                                    const uint16_t*, const uint16_t*, uint16_t*, int64_t, VnniScratch&);
template void attend_item_vnni<256>(const AttentionItem&, const AttentionArgs&, const uint16_t*,
                                    const uint16_t*, const uint16_t*, uint16_t*, int64_t, VnniScratch&);
template void attend_item_vnni<0>(const AttentionItem&, const AttentionArgs&, const uint16_t*,
                                  const uint16_t*, const uint16_t*, uint16_t*, int64_t, VnniScratch&);

}  // namespace pagedllm
#endif  // PAGEDLLM_ISA_AVX2
