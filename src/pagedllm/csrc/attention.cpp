// Paged attention (paged_attention): every request's new query tokens over its context, read
// in place through the block table (no gather copy, no padding, no dense mask), for both
// cache layouts (kv_layout.h).
//
// This file: the op (argument checks, work items, dispatch) and the kernel for the plain
// layout (any dtype). Over the blocked bf16 layout, work items of several query tokens
// (prefill) are in attention_prefill.cpp; decode items, and the scheduling of all of its work
// items, in attention_decode.cpp; their AVX2 builds in the *_avx2.cpp files beside them.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
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
              "the blocked (vnni) cache layout needs bf16, block_size 16, head_dim % 32 == 0 and an AVX512-BF16 "
              "or AVX2 build");
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
#if defined(PAGEDLLM_BLOCKED_KV)
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

bool set_attention_tiles(bool enabled) {
#if defined(PAGEDLLM_HAVE_AMX_BF16)
  return detail::set_amx_attention(enabled);
#else
  (void)enabled;
  return false;
#endif
}

}  // namespace pagedllm
