// Paged attention over the blocked bf16 layout (kv_layout.h): work items of several query
// tokens (prefill chunks, with or without cached context), as attend_item_vnni. Decode items
// and the scheduling of every work item are in attention_decode.cpp, the op in attention.cpp.
// This file: the AVX512-BF16 version; the AVX2 + FMA one is in attention_prefill_avx2.cpp (by
// the build's PAGEDLLM_ISA_*). Both start with prepare_rows (attention.h).

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

namespace pagedllm {

#if defined(PAGEDLLM_ISA_AVX512_BF16)
// ---------------------------------------------------------------------------------------
// Work items of several query tokens over the blocked layout (kv_layout.h): scores for 16
// keys per `vdpbf16ps` chain, 8 rows at a time, then softmax, then p.V with dims in lanes
// (the AVX2 port, attention_prefill_avx2.cpp: 8 keys per FMA chain, 4 rows at a time). Queries
// and probabilities are rounded to bf16 (as the torch reference backend does before its
// matmuls); accumulation is float32.
// ---------------------------------------------------------------------------------------

// With the head size known: keys in chunks of kChunkBlocks blocks, each chunk's scores and
// probabilities small enough to stay in the core's caches, and an online softmax (running max
// and sum per row, earlier p.V rescaled when the max grows) instead of a score row as long as
// the whole context. Within a chunk, 8 rows x 2 key blocks share loads for the scores, and
// 6 rows share each loaded value vector for p.V (64 dims per pass).
constexpr int64_t kChunkBlocks = 16;  // 256 keys

// exp(x) for softmax probabilities that are rounded to bf16 (8 significant bits) right after:
// nearest-integer range reduction to 2^f, |f| <= 1/2, a degree-4 Taylor polynomial (relative
// error < 5e-5, far below bf16's 4e-3) and scalef for the power of two. About half the work
// of fast_exp16, which matters here: one exponential per score.
inline __m512 softmax_exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(kExpLowest));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f));
  const __m512 whole = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, whole);
  __m512 p = _mm512_set1_ps(9.618129107628477e-3f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550410866482158e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402265069591007e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931471805599453e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, whole);
}

// kN query rows' scores against blocks[0, nb) (kN a compile-time constant so that the
// accumulators live in registers): 2 key blocks per pass, each loaded key vector and each
// broadcast query pair feeding several dot products.
template <int kN>
inline void chunk_scores(const uint32_t* q_pairs, int64_t pairs, const uint16_t* k_head, const int32_t* blocks,
                         int64_t nb, int64_t block_elems, float* scores, int64_t stride) {
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    const uint16_t* kb0 = k_head + static_cast<int64_t>(blocks[b]) * block_elems;
    const uint16_t* kb1 = k_head + static_cast<int64_t>(blocks[b + 1]) * block_elems;
    __m512 acc0[kN], acc1[kN];
    for (int i = 0; i < kN; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
    for (int64_t p = 0; p < pairs; ++p) {
      const __m512bh k0 = (__m512bh)_mm512_loadu_si512(kb0 + p * 32);
      const __m512bh k1 = (__m512bh)_mm512_loadu_si512(kb1 + p * 32);
      for (int i = 0; i < kN; ++i) {
        const __m512bh qv = (__m512bh)_mm512_set1_epi32(static_cast<int>(q_pairs[i * pairs + p]));
        acc0[i] = _mm512_dpbf16_ps(acc0[i], qv, k0);
        acc1[i] = _mm512_dpbf16_ps(acc1[i], qv, k1);
      }
    }
    for (int i = 0; i < kN; ++i) {
      _mm512_storeu_ps(scores + i * stride + b * kVnniBlock, acc0[i]);
      _mm512_storeu_ps(scores + i * stride + (b + 1) * kVnniBlock, acc1[i]);
    }
  }
  for (; b < nb; ++b) {
    const uint16_t* kb = k_head + static_cast<int64_t>(blocks[b]) * block_elems;
    __m512 acc[kN];
    for (int i = 0; i < kN; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t p = 0; p < pairs; ++p) {
      const __m512bh kv = (__m512bh)_mm512_loadu_si512(kb + p * 32);
      for (int i = 0; i < kN; ++i) {
        const __m512bh qv = (__m512bh)_mm512_set1_epi32(static_cast<int>(q_pairs[i * pairs + p]));
        acc[i] = _mm512_dpbf16_ps(acc[i], qv, kv);
      }
    }
    for (int i = 0; i < kN; ++i) _mm512_storeu_ps(scores + i * stride + b * kVnniBlock, acc[i]);
  }
}

// kN rows' p.V over blocks[b_lo, b_hi], added to their running outputs `out_acc` ([kN][kD]),
// kPassVecs x 16 dims per pass over the blocks: kN x kPassVecs accumulators in registers, each
// loaded value vector feeding kN dot products whatever the head size.
constexpr int kPassVecs = 4;

template <int kD, int kN>
inline void chunk_pv(const uint16_t* probs, int64_t stride, const uint16_t* v_head, const int32_t* blocks,
                     int64_t b_lo, int64_t b_hi, int64_t block_elems, float* out_acc) {
  static_assert(kD % (16 * kPassVecs) == 0, "head size must be a multiple of 64");
  for (int c0 = 0; c0 < kD / 16; c0 += kPassVecs) {
    __m512 acc[kN][kPassVecs];
    for (int i = 0; i < kN; ++i)
      for (int c = 0; c < kPassVecs; ++c) acc[i][c] = _mm512_loadu_ps(out_acc + i * kD + (c0 + c) * 16);
    for (int64_t b = b_lo; b <= b_hi; ++b) {
      const uint16_t* vb = v_head + static_cast<int64_t>(blocks[b]) * block_elems;
      for (int64_t tp = 0; tp < kVnniBlock / 2; ++tp) {
        // The rows' probability pairs stay in registers; each value vector is loaded once.
        __m512bh pv[kN];
        for (int i = 0; i < kN; ++i) {
          const uint32_t* pp = reinterpret_cast<const uint32_t*>(probs + i * stride);
          pv[i] = (__m512bh)_mm512_set1_epi32(static_cast<int>(pp[b * (kVnniBlock / 2) + tp]));
        }
        for (int c = 0; c < kPassVecs; ++c) {
          const __m512bh vv = (__m512bh)_mm512_loadu_si512(vb + tp * kD * 2 + (c0 + c) * 32);
          for (int i = 0; i < kN; ++i) acc[i][c] = _mm512_dpbf16_ps(acc[i][c], pv[i], vv);
        }
      }
    }
    for (int i = 0; i < kN; ++i)
      for (int c = 0; c < kPassVecs; ++c) _mm512_storeu_ps(out_acc + i * kD + (c0 + c) * 16, acc[i][c]);
  }
}

template <int kD>
void attend_item_vnni_tiled(const AttentionItem& it, const AttentionArgs& a, const uint16_t* q_base,
                            const uint16_t* k_base, const uint16_t* v_base, uint16_t* o_base, VnniScratch& w) {
  constexpr int64_t pairs = kD / 2, block_elems = kD * kVnniBlock;
  constexpr int64_t kPvRows = 24 / kPassVecs;  // 6 rows x 4 vectors of accumulators
  constexpr int64_t kChunk = kChunkBlocks * kVnniBlock;
  const int64_t r = it.request, kv_head = it.kv_head, group = a.group;
  const int64_t rows = (it.end_token - it.first_token) * group;
  const int32_t* req_table = a.table + r * a.table_stride;
  const uint16_t* k_head = k_base + kv_head * a.num_blocks * block_elems;
  const uint16_t* v_head = v_base + kv_head * a.num_blocks * block_elems;

  prepare_rows(it, a, q_base, pairs, w);
  for (int64_t row = 0; row < rows; ++row) {
    w.row_max[row] = -std::numeric_limits<float>::infinity();
    w.row_sum[row] = 0.0f;
  }
#if defined(PAGEDLLM_HAVE_AMX_BF16)
  // The tiles take 16 rows at a time: the rows past the item's in its last 16 are computed
  // (from whatever q_pairs, probs and out_acc hold there) and never read.
  const bool tiles = detail::amx_attention_enabled();
  const int64_t row_tiles = (rows + 15) / 16, buffer_rows = tiles ? row_tiles * 16 : rows;
  if (tiles) detail::amx_attention_begin();
#else
  const int64_t buffer_rows = rows;
#endif
  if (static_cast<int64_t>(w.scores.size()) < buffer_rows * kChunk) {
    w.scores.resize(buffer_rows * kChunk);
    w.probs.resize(buffer_rows * kChunk);
  }
  std::fill(w.out_acc.begin(), w.out_acc.begin() + buffer_rows * kD, 0.0f);
  int64_t min_lo = w.lo[0];
  for (int64_t row = 1; row < rows; ++row) min_lo = std::min(min_lo, w.lo[row]);
  const int64_t first_block = min_lo / kVnniBlock, last_block = w.hi[rows - 1] / kVnniBlock;

  for (int64_t chunk = first_block; chunk <= last_block; chunk += kChunkBlocks) {
    const int64_t nb = std::min<int64_t>(kChunkBlocks, last_block - chunk + 1);
    const int64_t base = chunk * kVnniBlock, span = nb * kVnniBlock;

    // Scores of this chunk, 8 rows at a time (16 on the tiles).
#if defined(PAGEDLLM_HAVE_AMX_BF16)
    if (tiles)
      detail::amx_chunk_scores<kD>(w.q_pairs.data(), row_tiles, k_head, req_table + chunk, nb, w.scores.data(), kChunk);
    else
#endif
    for (int64_t r0 = 0; r0 < rows; r0 += 8) {
      const uint32_t* qp = w.q_pairs.data() + r0 * pairs;
      float* dst = w.scores.data() + r0 * kChunk;
      const int32_t* blocks = req_table + chunk;
      switch (std::min<int64_t>(8, rows - r0)) {
        case 8: chunk_scores<8>(qp, pairs, k_head, blocks, nb, block_elems, dst, kChunk); break;
        case 7: chunk_scores<7>(qp, pairs, k_head, blocks, nb, block_elems, dst, kChunk); break;
        case 6: chunk_scores<6>(qp, pairs, k_head, blocks, nb, block_elems, dst, kChunk); break;
        case 5: chunk_scores<5>(qp, pairs, k_head, blocks, nb, block_elems, dst, kChunk); break;
        case 4: chunk_scores<4>(qp, pairs, k_head, blocks, nb, block_elems, dst, kChunk); break;
        case 3: chunk_scores<3>(qp, pairs, k_head, blocks, nb, block_elems, dst, kChunk); break;
        case 2: chunk_scores<2>(qp, pairs, k_head, blocks, nb, block_elems, dst, kChunk); break;
        default: chunk_scores<1>(qp, pairs, k_head, blocks, nb, block_elems, dst, kChunk); break;
      }
    }

    // Online softmax: each row's visible keys in this chunk update its running max and sum;
    // its earlier p.V is rescaled when the max grows. Probabilities to bf16, 0 elsewhere.
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
      // The chunk's visible keys as a lane mask per 16 scores: [lo, hi] of [0, span).
      auto visible = [lo, hi](int64_t j) -> __mmask16 {
        const int64_t from = std::max<int64_t>(lo - j, 0), to = std::min<int64_t>(hi - j, 15);
        if (to < from) return 0;
        return static_cast<__mmask16>(((1u << (to + 1)) - 1) & ~((1u << from) - 1));
      };
      const int64_t j0 = lo & ~int64_t{15}, j1 = (hi | 15) + 1;
      __m512 vmax = _mm512_set1_ps(w.row_max[row]);
      for (int64_t j = j0; j < j1; j += 16) {
        vmax = _mm512_mask_max_ps(vmax, visible(j), vmax, _mm512_loadu_ps(s + j));
      }
      const float m = _mm512_reduce_max_ps(vmax);
      if (m > w.row_max[row]) {
        const float rescale = fast_exp(w.row_max[row] - m);  // 0-ish for the first chunk: nothing yet
        w.row_sum[row] *= rescale;
        float* oa = w.out_acc.data() + row * kD;
        const __m512 f = _mm512_set1_ps(rescale);
        for (int64_t c = 0; c < kD; c += 16) _mm512_storeu_ps(oa + c, _mm512_mul_ps(_mm512_loadu_ps(oa + c), f));
        w.row_max[row] = m;
      }
      // One pass: exponentials of the visible scores, their sum, bf16 probabilities (0 for
      // the keys this row does not see).
      const __m512 shift = _mm512_set1_ps(m);
      __m512 total = _mm512_setzero_ps();
      std::fill(pr, pr + j0, uint16_t{0});
      for (int64_t j = j0; j < j1; j += 16) {
        const __m512 e = _mm512_maskz_mov_ps(visible(j), softmax_exp16(_mm512_sub_ps(_mm512_loadu_ps(s + j), shift)));
        total = _mm512_add_ps(total, e);
        store_bf16x16(pr + j, e);
      }
      std::fill(pr + j1, pr + span, uint16_t{0});
      w.row_sum[row] += _mm512_reduce_add_ps(total);
    }

    // p.V of this chunk, added to the running outputs.
#if defined(PAGEDLLM_HAVE_AMX_BF16)
    const int64_t pv_rows = tiles ? 16 : kPvRows;
#else
    const int64_t pv_rows = kPvRows;
#endif
    for (int64_t r0 = 0; r0 < rows; r0 += pv_rows) {
      const int64_t nr = std::min<int64_t>(pv_rows, rows - r0);
      int64_t lo = w.lo[r0], hi = w.hi[r0];
      for (int64_t i = 1; i < nr; ++i) {
        lo = std::min(lo, w.lo[r0 + i]);
        hi = std::max(hi, w.hi[r0 + i]);
      }
      lo = std::max(lo, base) - base;
      hi = std::min(hi, base + span - 1) - base;
      if (hi < lo) continue;
      const uint16_t* pr = w.probs.data() + r0 * kChunk;
      float* oa = w.out_acc.data() + r0 * kD;
      const int32_t* blocks = req_table + chunk;
      const int64_t b_lo = lo / kVnniBlock, b_hi = hi / kVnniBlock;
#if defined(PAGEDLLM_HAVE_AMX_BF16)
      if (tiles) {
        detail::amx_chunk_pv<kD>(pr, kChunk, v_head, blocks, b_lo, b_hi, oa);
        continue;
      }
#endif
      switch (nr) {
        case 6: if constexpr (kPvRows >= 6) chunk_pv<kD, 6>(pr, kChunk, v_head, blocks, b_lo, b_hi, block_elems, oa); break;
        case 5: if constexpr (kPvRows >= 5) chunk_pv<kD, 5>(pr, kChunk, v_head, blocks, b_lo, b_hi, block_elems, oa); break;
        case 4: if constexpr (kPvRows >= 4) chunk_pv<kD, 4>(pr, kChunk, v_head, blocks, b_lo, b_hi, block_elems, oa); break;
        case 3: if constexpr (kPvRows >= 3) chunk_pv<kD, 3>(pr, kChunk, v_head, blocks, b_lo, b_hi, block_elems, oa); break;
        case 2: if constexpr (kPvRows >= 2) chunk_pv<kD, 2>(pr, kChunk, v_head, blocks, b_lo, b_hi, block_elems, oa); break;
        default: chunk_pv<kD, 1>(pr, kChunk, v_head, blocks, b_lo, b_hi, block_elems, oa); break;
      }
    }
  }

#if defined(PAGEDLLM_HAVE_AMX_BF16)
  if (tiles) detail::amx_attention_end();
#endif
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t t = it.first_token + row / group, g = row % group;
    uint16_t* o = o_base + (a.starts[r] + t) * a.o_stride0 + (kv_head * group + g) * a.o_stride1;
    const __m512 inv = _mm512_set1_ps(1.0f / w.row_sum[row]);
    const float* oa = w.out_acc.data() + row * kD;
    for (int64_t c = 0; c < kD; c += 16) store_bf16x16(o + c, _mm512_mul_ps(_mm512_loadu_ps(oa + c), inv));
  }
}

template <int kD>
void attend_item_vnni(const AttentionItem& it, const AttentionArgs& a, const uint16_t* q_base,
                      const uint16_t* k_base, const uint16_t* v_base, uint16_t* o_base, int64_t runtime_head_dim,
                      VnniScratch& w) {
  if constexpr (kD > 0) {
    attend_item_vnni_tiled<kD>(it, a, q_base, k_base, v_base, o_base, w);
    return;
  }
  const int64_t head_dim = kD > 0 ? kD : runtime_head_dim;
  const int64_t pairs = head_dim / 2, block_elems = head_dim * kVnniBlock;
  const int64_t r = it.request, kv_head = it.kv_head, group = a.group;
  const int64_t rows = (it.end_token - it.first_token) * group;
  const int32_t* req_table = a.table + r * a.table_stride;
  const uint16_t* k_head = k_base + kv_head * a.num_blocks * block_elems;
  const uint16_t* v_head = v_base + kv_head * a.num_blocks * block_elems;

  prepare_rows(it, a, q_base, pairs, w);
  const int64_t first_block = w.lo[0] / kVnniBlock, last_block = w.hi[rows - 1] / kVnniBlock;
  const int64_t num_blocks = last_block - first_block + 1, span = num_blocks * kVnniBlock;
  const int64_t base = first_block * kVnniBlock;
  if (static_cast<int64_t>(w.scores.size()) < rows * span) {
    w.scores.resize(rows * span);
    w.probs.resize(rows * span);
  }

  // Scores: 8 rows x 2 key blocks at a time, so each broadcast query pair and each loaded key
  // vector feeds several dot products (10 loads per 16 of them, not 9 per 8).
  for (int64_t r0 = 0; r0 < rows; r0 += 8) {
    const int64_t nr = std::min<int64_t>(8, rows - r0);
    int64_t b = 0;
    for (; b + 2 <= num_blocks; b += 2) {
      const uint16_t* kb0 = k_head + static_cast<int64_t>(req_table[first_block + b]) * block_elems;
      const uint16_t* kb1 = k_head + static_cast<int64_t>(req_table[first_block + b + 1]) * block_elems;
      __m512 acc0[8], acc1[8];
      for (int64_t i = 0; i < 8; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
      for (int64_t p = 0; p < pairs; ++p) {
        const __m512bh k0 = (__m512bh)_mm512_loadu_si512(kb0 + p * 32);
        const __m512bh k1 = (__m512bh)_mm512_loadu_si512(kb1 + p * 32);
        for (int64_t i = 0; i < nr; ++i) {
          const __m512bh qv = (__m512bh)_mm512_set1_epi32(static_cast<int>(w.q_pairs[(r0 + i) * pairs + p]));
          acc0[i] = _mm512_dpbf16_ps(acc0[i], qv, k0);
          acc1[i] = _mm512_dpbf16_ps(acc1[i], qv, k1);
        }
      }
      for (int64_t i = 0; i < nr; ++i) {
        float* dst = w.scores.data() + (r0 + i) * span + b * kVnniBlock;
        _mm512_storeu_ps(dst, acc0[i]);
        _mm512_storeu_ps(dst + kVnniBlock, acc1[i]);
      }
    }
    for (; b < num_blocks; ++b) {
      const uint16_t* kb = k_head + static_cast<int64_t>(req_table[first_block + b]) * block_elems;
      __m512 acc[8];
      for (int64_t i = 0; i < 8; ++i) acc[i] = _mm512_setzero_ps();
      for (int64_t p = 0; p < pairs; ++p) {
        const __m512bh kv = (__m512bh)_mm512_loadu_si512(kb + p * 32);
        for (int64_t i = 0; i < nr; ++i) {
          const __m512bh qv = (__m512bh)_mm512_set1_epi32(static_cast<int>(w.q_pairs[(r0 + i) * pairs + p]));
          acc[i] = _mm512_dpbf16_ps(acc[i], qv, kv);
        }
      }
      for (int64_t i = 0; i < nr; ++i) _mm512_storeu_ps(w.scores.data() + (r0 + i) * span + b * kVnniBlock, acc[i]);
    }
  }

  // Softmax over each row's visible keys; probabilities to bf16, 0 elsewhere.
  for (int64_t row = 0; row < rows; ++row) {
    float* s = w.scores.data() + row * span;
    const int64_t lo = w.lo[row] - base, hi = w.hi[row] - base;
    if (a.cap > 0.0f) {
      for (int64_t j = lo; j <= hi; ++j) s[j] = a.cap * std::tanh(s[j] / a.cap);
    }
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t j = lo; j <= hi; ++j) m = std::max(m, s[j]);
    w.row_sum[row] = exp_shifted_sum(s + lo, hi - lo + 1, m);
    for (int64_t j = 0; j < lo; ++j) s[j] = 0.0f;
    for (int64_t j = hi + 1; j < span; ++j) s[j] = 0.0f;
    uint16_t* pr = w.probs.data() + row * span;
    for (int64_t j = 0; j < span; j += 16) {
      store_bf16x16(pr + j, _mm512_loadu_ps(s + j));
    }
  }

  // Outputs: 16 dims per vector, token pairs reduced by each dot product.
  for (int64_t row = 0; row < rows; ++row) {
    const uint32_t* pp = reinterpret_cast<const uint32_t*>(w.probs.data() + row * span);
    const int64_t t = it.first_token + row / group, g = row % group;
    uint16_t* o = o_base + (a.starts[r] + t) * a.o_stride0 + (kv_head * group + g) * a.o_stride1;
    const __m512 inv = _mm512_set1_ps(1.0f / w.row_sum[row]);
    for (int64_t c = 0; c < head_dim; c += 16) {
      __m512 acc = _mm512_setzero_ps();
      for (int64_t b = 0; b < num_blocks; ++b) {
        const uint16_t* vb = v_head + static_cast<int64_t>(req_table[first_block + b]) * block_elems + c * 2;
        const uint32_t* pb = pp + b * (kVnniBlock / 2);
        for (int64_t tp = 0; tp < kVnniBlock / 2; ++tp) {
          if (pb[tp] == 0) continue;  // both probabilities 0 (outside the window or past the end)
          const __m512bh pv = (__m512bh)_mm512_set1_epi32(static_cast<int>(pb[tp]));
          acc = _mm512_dpbf16_ps(acc, pv, (__m512bh)_mm512_loadu_si512(vb + tp * head_dim * 2));
        }
      }
      store_bf16x16(o + c, _mm512_mul_ps(acc, inv));
    }
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
#endif  // PAGEDLLM_ISA_AVX512_BF16

}  // namespace pagedllm
