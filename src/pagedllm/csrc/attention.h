// Paged attention: what attention.cpp (the op and the plain-layout kernel),
// attention_prefill.cpp (multi-token items over the blocked layout) and attention_decode.cpp
// (decode items and the work scheduler of the blocked layout) share. Cache layouts: kv_layout.h.

#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "kv_layout.h"

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

// One work item with several query tokens over blocked-layout caches (attention_prefill.cpp).
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
#endif

}  // namespace pagedllm
