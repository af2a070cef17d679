// Paged attention (paged_attention): every request's new query tokens over its context, read
// in place through the block table (no gather copy, no padding, no dense mask), for both
// cache layouts (kv_layout.h).
//
// This file: the op (argument checks, work items, dispatch), the kernel for the plain layout
// (any dtype) and, for the blocked bf16 layout, the routine for work items of several query
// tokens (prefill). Decode items over the blocked layout, and the scheduling of all of its
// work items, are in attention_decode.cpp.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "attention.h"
#include "kv_layout.h"
#include "ops.h"
#include "vec.h"

namespace pagedllm {
namespace {

// ---------------------------------------------------------------------------------------
// Plain layout, any dtype.
//
// A work item is (request, KV head, tile of query tokens); its query rows are the tile's
// tokens x the GQA group sharing the KV head. Few rows (decode): one dot product per
// (row, key). Many rows (prefill): keys are transposed 16 at a time to [head_dim][16] so a
// row's 16 scores accumulate in one vector register and the transpose is shared by all rows.
// kD is the head size when known at compile time (0: read at run time).
// ---------------------------------------------------------------------------------------

constexpr int64_t kKeyChunk = 16;
constexpr int64_t kDirectRows = 8;  // up to this many rows: direct dot products

struct AttentionScratch {
  std::vector<float> q_rows, acc, keys_t, kv_row, scores;
  int64_t lo[kTileRows], hi[kTileRows];
  float row_sum[kTileRows];
  explicit AttentionScratch(int64_t head_dim)
      : q_rows(kTileRows * head_dim), acc(kTileRows * head_dim), keys_t(head_dim * kKeyChunk), kv_row(head_dim) {}
};

template <int kD>
inline float dot_product(const float* a, const float* b, int64_t n) {
  const int64_t d_len = kD > 0 ? kD : n;
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t d = 0; d < d_len; ++d) acc += a[d] * b[d];
  return acc;
}

template <int kD>
inline void axpy(float* y, float a, const float* x, int64_t n) {
  const int64_t d_len = kD > 0 ? kD : n;
#pragma omp simd
  for (int64_t d = 0; d < d_len; ++d) y[d] += a * x[d];
}

template <typename T, int kD>
void attend_item(const AttentionItem& it, const AttentionArgs& a, const T* q_base, const T* k_base,
                 const T* v_base, T* o_base, int64_t runtime_head_dim, AttentionScratch& w) {
  const int64_t head_dim = kD > 0 ? kD : runtime_head_dim;
  const int64_t r = it.request, kv_head = it.kv_head, group = a.group, block_size = a.block_size;
  const int64_t q_len = a.starts[r + 1] - a.starts[r];
  const int64_t first_pos = a.lens[r] - q_len;  // position of the chunk's first token
  const int64_t rows = (it.end_token - it.first_token) * group;
  const int32_t* req_table = a.table + r * a.table_stride;
  const T* k_head = k_base + kv_head * a.num_blocks * block_size * head_dim;
  const T* v_head = v_base + kv_head * a.num_blocks * block_size * head_dim;
  // block_size is a power of two: shifts, not 64-bit divisions (~40 cycles each), per key.
  const int64_t shift = a.block_shift, offset_mask = block_size - 1;
  auto key_row = [&](const T* head, int64_t j) {
    return head + ((static_cast<int64_t>(req_table[j >> shift]) << shift) + (j & offset_mask)) * head_dim;
  };

  for (int64_t t = it.first_token; t < it.end_token; ++t) {
    const int64_t pos = first_pos + t;
    for (int64_t g = 0; g < group; ++g) {
      const int64_t row = (t - it.first_token) * group + g;
      const T* q = q_base + (a.starts[r] + t) * a.q_stride0 + (kv_head * group + g) * a.q_stride1;
      float* dst = w.q_rows.data() + row * head_dim;
      for (int64_t d = 0; d < head_dim; ++d) dst[d] = to_float(q[d]) * a.scale;
      w.hi[row] = pos;
      w.lo[row] = a.window > 0 ? std::max<int64_t>(0, pos - a.window + 1) : 0;
    }
  }
  const int64_t key_lo = w.lo[0], key_hi = w.hi[rows - 1];
  const int64_t span = key_hi - key_lo + 1;
  if (static_cast<int64_t>(w.scores.size()) < rows * span) w.scores.resize(rows * span);
  float* scores = w.scores.data();

  if (rows <= kDirectRows) {
    for (int64_t j = key_lo; j <= key_hi; ++j) {
      load_row(key_row(k_head, j), w.kv_row.data(), head_dim);
      for (int64_t row = 0; row < rows; ++row) {
        scores[row * span + (j - key_lo)] =
            dot_product<kD>(w.q_rows.data() + row * head_dim, w.kv_row.data(), head_dim);
      }
    }
  } else {
    float* keys_t = w.keys_t.data();
    for (int64_t j0 = key_lo; j0 <= key_hi; j0 += kKeyChunk) {
      const int64_t n = std::min(kKeyChunk, key_hi - j0 + 1);
      for (int64_t c = 0; c < kKeyChunk; ++c) {
        if (c < n) {
          const T* k = key_row(k_head, j0 + c);
          for (int64_t d = 0; d < head_dim; ++d) keys_t[d * kKeyChunk + c] = to_float(k[d]);
        } else {
          for (int64_t d = 0; d < head_dim; ++d) keys_t[d * kKeyChunk + c] = 0.0f;
        }
      }
      for (int64_t row = 0; row < rows; ++row) {
        float s[kKeyChunk] = {0};
        const float* q = w.q_rows.data() + row * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) {
          const float qd = q[d];
          const float* kd = keys_t + d * kKeyChunk;
#pragma omp simd
          for (int64_t c = 0; c < kKeyChunk; ++c) s[c] += qd * kd[c];
        }
        float* dst = scores + row * span + (j0 - key_lo);
        for (int64_t c = 0; c < n; ++c) dst[c] = s[c];
      }
    }
  }

  // Softmax per row over its visible keys; invisible keys get probability 0.
  for (int64_t row = 0; row < rows; ++row) {
    float* s = scores + row * span;
    const int64_t lo = w.lo[row] - key_lo, hi = w.hi[row] - key_lo;  // visible: [lo, hi]
    if (a.cap > 0.0f) {
      for (int64_t j = lo; j <= hi; ++j) s[j] = a.cap * std::tanh(s[j] / a.cap);
    }
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t j = lo; j <= hi; ++j) m = std::max(m, s[j]);
    const float sum = exp_shifted_sum(s + lo, hi - lo + 1, m);
    for (int64_t j = 0; j < lo; ++j) s[j] = 0.0f;
    for (int64_t j = hi + 1; j < span; ++j) s[j] = 0.0f;
    w.row_sum[row] = sum;
  }

  // Probability-weighted values.
  float* acc = w.acc.data();
  std::fill(acc, acc + rows * head_dim, 0.0f);
  for (int64_t j = key_lo; j <= key_hi; ++j) {
    load_row(key_row(v_head, j), w.kv_row.data(), head_dim);
    const int64_t column = j - key_lo;
    for (int64_t row = 0; row < rows; ++row) {
      const float p = scores[row * span + column];
      if (p != 0.0f) axpy<kD>(acc + row * head_dim, p, w.kv_row.data(), head_dim);
    }
  }

  for (int64_t t = it.first_token; t < it.end_token; ++t) {
    for (int64_t g = 0; g < group; ++g) {
      const int64_t row = (t - it.first_token) * group + g;
      const float inv = 1.0f / w.row_sum[row];
      T* o = o_base + (a.starts[r] + t) * a.o_stride0 + (kv_head * group + g) * a.o_stride1;
      const float* src = acc + row * head_dim;
      for (int64_t d = 0; d < head_dim; ++d) o[d] = static_cast<T>(src[d] * inv);
    }
  }
}

template <typename T, int kD>
void paged_attention_kernel(at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                            const at::Tensor& value_cache, const AttentionArgs& args,
                            const std::vector<AttentionItem>& items) {
  const int64_t head_dim = query.size(2);
  const int64_t num_items = static_cast<int64_t>(items.size());
  const T* q_base = query.data_ptr<T>();
  const T* k_base = key_cache.data_ptr<T>();
  const T* v_base = value_cache.data_ptr<T>();
  T* o_base = out.data_ptr<T>();
  const int threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), num_items));
#pragma omp parallel num_threads(threads)
  {
    AttentionScratch scratch(head_dim);
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < num_items; ++i) {
      attend_item<T, kD>(items[i], args, q_base, k_base, v_base, o_base, head_dim, scratch);
    }
  }
}

}  // namespace

#if defined(__AVX512BF16__)
// ---------------------------------------------------------------------------------------
// Work items of several query tokens over the blocked layout (kv_layout.h): scores for 16
// keys per `vdpbf16ps` chain, 8 rows at a time, then softmax, then p.V with dims in lanes.
// Queries and probabilities are rounded to bf16 (as the torch reference backend does before
// its matmuls); accumulation is float32.
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
  const int64_t q_len = a.starts[r + 1] - a.starts[r];
  const int64_t first_pos = a.lens[r] - q_len;
  const int64_t rows = (it.end_token - it.first_token) * group;
  const int32_t* req_table = a.table + r * a.table_stride;
  const uint16_t* k_head = k_base + kv_head * a.num_blocks * block_elems;
  const uint16_t* v_head = v_base + kv_head * a.num_blocks * block_elems;

  for (int64_t t = it.first_token; t < it.end_token; ++t) {
    const int64_t pos = first_pos + t;
    for (int64_t g = 0; g < group; ++g) {
      const int64_t row = (t - it.first_token) * group + g;
      const uint16_t* q = q_base + (a.starts[r] + t) * a.q_stride0 + (kv_head * group + g) * a.q_stride1;
      uint32_t* dst = w.q_pairs.data() + row * pairs;
      for (int64_t p = 0; p < pairs; ++p) {
        const float x0 = bf16_to_float(q[2 * p]) * a.scale;
        const float x1 = bf16_to_float(q[2 * p + 1]) * a.scale;
        dst[p] = static_cast<uint32_t>(bf16_bits(x0)) | (static_cast<uint32_t>(bf16_bits(x1)) << 16);
      }
      w.hi[row] = pos;
      w.lo[row] = a.window > 0 ? std::max<int64_t>(0, pos - a.window + 1) : 0;
      w.row_max[row] = -std::numeric_limits<float>::infinity();
      w.row_sum[row] = 0.0f;
    }
  }
  if (static_cast<int64_t>(w.scores.size()) < rows * kChunk) {
    w.scores.resize(rows * kChunk);
    w.probs.resize(rows * kChunk);
  }
  std::fill(w.out_acc.begin(), w.out_acc.begin() + rows * kD, 0.0f);
  int64_t min_lo = w.lo[0];
  for (int64_t row = 1; row < rows; ++row) min_lo = std::min(min_lo, w.lo[row]);
  const int64_t first_block = min_lo / kVnniBlock, last_block = w.hi[rows - 1] / kVnniBlock;

  for (int64_t chunk = first_block; chunk <= last_block; chunk += kChunkBlocks) {
    const int64_t nb = std::min<int64_t>(kChunkBlocks, last_block - chunk + 1);
    const int64_t base = chunk * kVnniBlock, span = nb * kVnniBlock;

    // Scores of this chunk, 8 rows at a time.
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
      float* oa = w.out_acc.data() + r0 * kD;
      const int32_t* blocks = req_table + chunk;
      const int64_t b_lo = lo / kVnniBlock, b_hi = hi / kVnniBlock;
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
  const int64_t q_len = a.starts[r + 1] - a.starts[r];
  const int64_t first_pos = a.lens[r] - q_len;
  const int64_t rows = (it.end_token - it.first_token) * group;
  const int32_t* req_table = a.table + r * a.table_stride;
  const uint16_t* k_head = k_base + kv_head * a.num_blocks * block_elems;
  const uint16_t* v_head = v_base + kv_head * a.num_blocks * block_elems;

  for (int64_t t = it.first_token; t < it.end_token; ++t) {
    const int64_t pos = first_pos + t;
    for (int64_t g = 0; g < group; ++g) {
      const int64_t row = (t - it.first_token) * group + g;
      const uint16_t* q = q_base + (a.starts[r] + t) * a.q_stride0 + (kv_head * group + g) * a.q_stride1;
      uint32_t* dst = w.q_pairs.data() + row * pairs;
      for (int64_t p = 0; p < pairs; ++p) {
        const float x0 = bf16_to_float(q[2 * p]) * a.scale;
        const float x1 = bf16_to_float(q[2 * p + 1]) * a.scale;
        dst[p] = static_cast<uint32_t>(bf16_bits(x0)) | (static_cast<uint32_t>(bf16_bits(x1)) << 16);
      }
      w.hi[row] = pos;
      w.lo[row] = a.window > 0 ? std::max<int64_t>(0, pos - a.window + 1) : 0;
    }
  }
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
#endif

void paged_attention(
    at::Tensor out,
    const at::Tensor& query,
    const at::Tensor& key_cache,
    const at::Tensor& value_cache,
    const at::Tensor& block_table,
    const at::Tensor& query_start_loc,
    const at::Tensor& seq_lens,
    double scale,
    int64_t window,
    double soft_cap,
    bool vnni) {
  check_cpu(query, "query");
  TORCH_CHECK(!vnni || vnni_layout_supported(key_cache),
              "the blocked (vnni) cache layout needs bf16, block_size 16, head_dim % 32 == 0 and AVX512-BF16");
  TORCH_CHECK(query.dim() == 3 && query.stride(2) == 1, "query must be [T, heads, head_dim] with unit stride");
  TORCH_CHECK(out.sizes() == query.sizes() && out.stride(2) == 1, "out must match query's shape");
  TORCH_CHECK(key_cache.dim() == 4 && key_cache.is_contiguous() && value_cache.is_contiguous(),
              "key/value caches must be contiguous [kv_heads, blocks, block_size, head_dim]");
  TORCH_CHECK(key_cache.size(3) == query.size(2), "head_dim of query and cache differ");
  TORCH_CHECK(query.size(1) % key_cache.size(0) == 0, "num_heads must be a multiple of num_kv_heads");
  TORCH_CHECK(block_table.scalar_type() == at::kInt && query_start_loc.scalar_type() == at::kInt &&
                  seq_lens.scalar_type() == at::kInt,
              "block_table, query_start_loc and seq_lens must be int32");
  TORCH_CHECK(block_table.stride(1) == 1 && query_start_loc.is_contiguous() && seq_lens.is_contiguous(),
              "index tensors must be contiguous");
  TORCH_CHECK(query.scalar_type() == key_cache.scalar_type() && out.scalar_type() == query.scalar_type(),
              "query, cache and out must share a dtype");
  AttentionArgs args{};
  args.starts = query_start_loc.data_ptr<int32_t>();
  args.lens = seq_lens.data_ptr<int32_t>();
  args.table = block_table.data_ptr<int32_t>();
  args.table_stride = block_table.stride(0);
  args.q_stride0 = query.stride(0);
  args.q_stride1 = query.stride(1);
  args.o_stride0 = out.stride(0);
  args.o_stride1 = out.stride(1);
  args.num_blocks = key_cache.size(1);
  args.block_size = key_cache.size(2);
  TORCH_CHECK(args.block_size > 0 && (args.block_size & (args.block_size - 1)) == 0,
              "block_size must be a power of two");
  args.block_shift = 0;
  while ((int64_t{1} << args.block_shift) < args.block_size) ++args.block_shift;
  args.group = query.size(1) / key_cache.size(0);
  args.window = window;
  args.scale = static_cast<float>(scale);
  args.cap = static_cast<float>(soft_cap);

  const int64_t num_kv_heads = key_cache.size(0);
  const int64_t tokens_per_tile = std::max<int64_t>(1, kTileRows / args.group);
  std::vector<AttentionItem> items;
  for (int64_t r = 0; r < seq_lens.size(0); ++r) {
    const int32_t q_len = args.starts[r + 1] - args.starts[r];
    for (int32_t t0 = 0; t0 < q_len; t0 += static_cast<int32_t>(tokens_per_tile)) {
      const int32_t t1 = std::min<int32_t>(q_len, t0 + static_cast<int32_t>(tokens_per_tile));
      for (int32_t h = 0; h < num_kv_heads; ++h) items.push_back({static_cast<int32_t>(r), h, t0, t1});
    }
  }
  const int64_t head_dim = query.size(2);
#if defined(__AVX512BF16__)
  if (vnni) {
    if (head_dim == 64) {
      paged_attention_vnni<64>(out, query, key_cache, value_cache, args, items);
    } else if (head_dim == 128) {
      paged_attention_vnni<128>(out, query, key_cache, value_cache, args, items);
    } else if (head_dim == 256) {
      paged_attention_vnni<256>(out, query, key_cache, value_cache, args, items);
    } else {
      paged_attention_vnni<0>(out, query, key_cache, value_cache, args, items);
    }
    return;
  }
#endif
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, query.scalar_type(), "paged_attention", [&] {
    switch (head_dim) {
      case 64:
        paged_attention_kernel<scalar_t, 64>(out, query, key_cache, value_cache, args, items);
        break;
      case 128:
        paged_attention_kernel<scalar_t, 128>(out, query, key_cache, value_cache, args, items);
        break;
      case 256:
        paged_attention_kernel<scalar_t, 256>(out, query, key_cache, value_cache, args, items);
        break;
      default:
        paged_attention_kernel<scalar_t, 0>(out, query, key_cache, value_cache, args, items);
    }
  });
}

}  // namespace pagedllm
