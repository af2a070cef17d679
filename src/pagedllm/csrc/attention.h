// Paged attention: what attention.cpp (the op and the plain-layout kernel),
// attention_prefill.cpp and attention_prefill_avx2.cpp (multi-token items over the blocked
// layout, by instruction set) and attention_decode.cpp and attention_decode_avx2.cpp (decode
// items and the work scheduler of the blocked layout) share. Cache layouts: kv_layout.h.

#pragma once

#include <ATen/core/Tensor.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kv_layout.h"
#include "vec.h"

namespace pagedllm {

constexpr int64_t kTileRows = 48;  // query rows (tokens x group) per work item

// A work item: (request, KV head, tile of the request's new query tokens).
struct AttentionItem {
  int32_t request;
  int32_t kv_head;
  int32_t first_token;  // within the request's chunk
  int32_t end_token;
};

struct AttentionArgs {
  const int32_t* starts;
  const int32_t* lens;
  const int32_t* table;
  int64_t table_stride, q_stride0, q_stride1, o_stride0, o_stride1;
  int64_t num_blocks, block_size, block_shift, group, window;
  float scale, cap;
};

#if defined(PAGEDLLM_BLOCKED_KV)
// A thread's buffers for attend_item_vnni.
struct VnniScratch {
  std::vector<uint32_t> q_pairs;  // [rows][head_dim / 2] bf16 pairs
#if defined(PAGEDLLM_ISA_AVX2)
  std::vector<float> q_rows;  // [rows][head_dim]: q_pairs widened (the 8-lane path broadcasts floats)
#endif
  std::vector<float> scores;      // [rows][span]
  std::vector<uint16_t> probs;    // [rows][span] bf16
  std::vector<float> out_acc;     // [rows][head_dim]: the tiled path's running p.V
  int64_t lo[kTileRows], hi[kTileRows];
  float row_sum[kTileRows];
  float row_max[kTileRows];
  explicit VnniScratch(int64_t head_dim)
      : q_pairs(kTileRows * head_dim / 2),
#if defined(PAGEDLLM_ISA_AVX2)
        q_rows(kTileRows * head_dim),
#endif
        out_acc(kTileRows * head_dim) {}
};

// One work item with several query tokens over blocked-layout caches (attention_prefill.cpp;
// attention_prefill_avx2.cpp in the AVX2 build).
// kD: head_dim when known at compile time (64, 128 or 256), else 0 (read from runtime_head_dim).
template <int kD>
void attend_item_vnni(const AttentionItem& it, const AttentionArgs& a, const uint16_t* q_base,
                      const uint16_t* k_base, const uint16_t* v_base, uint16_t* o_base, int64_t runtime_head_dim,
                      VnniScratch& w);

// Every work item over blocked-layout caches, on all threads (attention_decode.cpp): decode
// items through the decode routine, the others through attend_item_vnni. kD as above.
template <int kD>
void paged_attention_vnni(at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                          const at::Tensor& value_cache, const AttentionArgs& args,
                          const std::vector<AttentionItem>& items);

// The item's query rows (tokens x the GQA group) as scaled bf16 pairs in w.q_pairs, and the
// range of positions [lo, hi] each row sees (causal, and within the window if any): the
// first step of attend_item_vnni in either build (attention_prefill.cpp,
// attention_prefill_avx2.cpp).
inline void prepare_rows(const AttentionItem& it, const AttentionArgs& a, const uint16_t* q_base, int64_t pairs,
                         VnniScratch& w) {
  const int64_t r = it.request, group = a.group;
  const int64_t first_pos = a.lens[r] - (a.starts[r + 1] - a.starts[r]);
  for (int64_t t = it.first_token; t < it.end_token; ++t) {
    const int64_t pos = first_pos + t;
    for (int64_t g = 0; g < group; ++g) {
      const int64_t row = (t - it.first_token) * group + g;
      const uint16_t* q = q_base + (a.starts[r] + t) * a.q_stride0 + (it.kv_head * group + g) * a.q_stride1;
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
}

namespace detail {

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

#if defined(PAGEDLLM_ISA_AVX2)
// Every row of a decode item: the AVX2 + FMA decode routine (attention_decode_avx2.cpp; the
// AVX512-BF16 one is internal to attention_decode.cpp, whose scheduler calls either), for
// head sizes 64, 128 and 256. Outputs to the item's output rows, or for a part of a split
// item unnormalised to partial: per query head of the group, [kD accumulators, running max,
// running sum]. next: the item after it in the thread's chunk, whose first blocks its last
// ones prefetch (nullptr: none).
template <int kD>
void attend_decode(const AttentionItem& it, const DecodeItem& d, const DecodeItem* next, const AttentionArgs& a,
                   const uint16_t* q_base, uint16_t* o_base, float* partial);
#endif

#if defined(PAGEDLLM_HAVE_AMX_BF16)
// The tile unit's half of the tiled prefill attention (attention_prefill_amx.cpp).
// amx_attention_enabled: tiles granted and not switched off (set_amx_attention, for tests and
// benchmarks). Between amx_attention_begin and amx_attention_end a thread holds the
// attention's tile configuration; the products below need it.
bool amx_attention_enabled();
bool set_amx_attention(bool enabled);  // returns the previous setting
void amx_attention_begin();
void amx_attention_end();
// scores[r][16 b + t] (row stride `stride`) = q_pairs row r . token t of blocks[b], for the
// row_tiles x 16 rows of q_pairs (rows past the item's are computed and ignored) and b < nb.
template <int kD>
void amx_chunk_scores(const uint32_t* q_pairs, int64_t row_tiles, const uint16_t* k_head, const int32_t* blocks,
                      int64_t nb, float* scores, int64_t stride);
// out_acc[r][d] (16 rows, kD apart) += probs[r][16 b + t] (row stride `stride`) x V of blocks[b]
// for b in [b_lo, b_hi].
template <int kD>
void amx_chunk_pv(const uint16_t* probs, int64_t stride, const uint16_t* v_head, const int32_t* blocks, int64_t b_lo,
                  int64_t b_hi, float* out_acc);
#endif

}  // namespace detail
#endif

}  // namespace pagedllm
