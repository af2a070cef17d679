// Paged attention over the blocked bf16 layout (kv_layout.h), continued from attention.cpp:
// the decode routine (one query token per work item, all of its GQA group in one pass over
// the blocks, with an online softmax) and paged_attention_vnni, which schedules every work
// item of a call over the threads: decodes in chunks that prefetch across items, long decodes
// split into block ranges when there are too few for the threads, and items of several tokens
// handed to attend_item_vnni (attention_prefill.cpp). The decode routine has an AVX512-BF16
// version (here) and an AVX2 + FMA one (attention_decode_avx2.cpp), by the build's
// PAGEDLLM_ISA_*; the scheduler is shared, and so are the decode item and its prefetch
// distance (attention.h).

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
using detail::DecodeItem;
using detail::kDecodeAhead;
using detail::prefetch_line;

namespace {

// Decode items (DecodeItem, the prefetch distance and the section's notes: attention.h).
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

#else  // PAGEDLLM_ISA_AVX2: the decode routine is in attention_decode_avx2.cpp
using detail::attend_decode;
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