// The KV-cache write (reshape_and_cache): each new token's K and V rows stored at its slot of
// the paged caches, in the plain layout or the blocked one (kv_layout.h). Slots < 0 (tokens
// that write nothing) are skipped.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

#include "kv_layout.h"
#include "ops.h"
#include "vec.h"

namespace pagedllm {
namespace {

// Write each token's K and V at its slot (block * block_size + offset) of the caches.
template <typename T>
void reshape_and_cache_kernel(const at::Tensor& key, const at::Tensor& value, at::Tensor& key_cache,
                              at::Tensor& value_cache, const at::Tensor& slot_mapping) {
  const int64_t num_tokens = slot_mapping.size(0);
  const int64_t num_kv_heads = key.size(1), head_dim = key.size(2);
  const int64_t num_slots = key_cache.size(1) * key_cache.size(2);
  const int64_t* slots = slot_mapping.data_ptr<int64_t>();
  const T* k = key.data_ptr<T>();
  const T* v = value.data_ptr<T>();
  T* kc = key_cache.data_ptr<T>();
  T* vc = value_cache.data_ptr<T>();
  const int64_t ks0 = key.stride(0), ks1 = key.stride(1), vs0 = value.stride(0), vs1 = value.stride(1);
  at::parallel_for(0, num_tokens, 8, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t slot = slots[t];
      if (slot < 0) continue;
      for (int64_t h = 0; h < num_kv_heads; ++h) {
        std::memcpy(kc + (h * num_slots + slot) * head_dim, k + t * ks0 + h * ks1, head_dim * sizeof(T));
        std::memcpy(vc + (h * num_slots + slot) * head_dim, v + t * vs0 + h * vs1, head_dim * sizeof(T));
      }
    }
  });
}

void reshape_and_cache_vnni(const at::Tensor& key, const at::Tensor& value, at::Tensor& key_cache,
                            at::Tensor& value_cache, const at::Tensor& slot_mapping) {
  const int64_t num_tokens = slot_mapping.size(0);
  const int64_t num_kv_heads = key.size(1), head_dim = key.size(2);
  const int64_t num_blocks = key_cache.size(1), block_elems = head_dim * kVnniBlock;
  const int64_t* slots = slot_mapping.data_ptr<int64_t>();
  const auto* k = reinterpret_cast<const uint16_t*>(key.data_ptr<at::BFloat16>());
  const auto* v = reinterpret_cast<const uint16_t*>(value.data_ptr<at::BFloat16>());
  auto* kc = reinterpret_cast<uint16_t*>(key_cache.data_ptr<at::BFloat16>());
  auto* vc = reinterpret_cast<uint16_t*>(value_cache.data_ptr<at::BFloat16>());
  const int64_t ks0 = key.stride(0), ks1 = key.stride(1), vs0 = value.stride(0), vs1 = value.stride(1);
  at::parallel_for(0, num_tokens, 8, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t slot = slots[t];
      if (slot < 0) continue;
      const int64_t block = slot / kVnniBlock, offset = slot % kVnniBlock;
      for (int64_t h = 0; h < num_kv_heads; ++h) {
        uint16_t* kb = kc + (h * num_blocks + block) * block_elems;
        uint16_t* vb = vc + (h * num_blocks + block) * block_elems;
        const uint16_t* ks = k + t * ks0 + h * ks1;
        const uint16_t* vs = v + t * vs0 + h * vs1;
        for (int64_t d = 0; d < head_dim; ++d) {
          kb[vnni_key_index(offset, d)] = ks[d];
          vb[vnni_value_index(offset, d, head_dim)] = vs[d];
        }
      }
    }
  });
}

}  // namespace

void reshape_and_cache(const at::Tensor& key, const at::Tensor& value, at::Tensor key_cache,
                       at::Tensor value_cache, const at::Tensor& slot_mapping, bool vnni) {
  check_cpu(key, "key");
  TORCH_CHECK(key.dim() == 3 && key.stride(2) == 1 && value.stride(2) == 1, "key/value must be [T, kv_heads, head_dim]");
  TORCH_CHECK(key_cache.is_contiguous() && value_cache.is_contiguous(), "caches must be contiguous");
  TORCH_CHECK(slot_mapping.scalar_type() == at::kLong && slot_mapping.is_contiguous(), "slot_mapping must be int64");
  TORCH_CHECK(key.scalar_type() == key_cache.scalar_type() && value.scalar_type() == value_cache.scalar_type(),
              "key/value and caches must share a dtype");
  TORCH_CHECK(key.size(0) >= slot_mapping.size(0), "fewer key rows than slots");
  if (vnni) {
    TORCH_CHECK(vnni_layout_supported(key_cache), "the blocked (vnni) cache layout does not apply to this cache");
    reshape_and_cache_vnni(key, value, key_cache, value_cache, slot_mapping);
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, key.scalar_type(), "reshape_and_cache", [&] {
    reshape_and_cache_kernel<scalar_t>(key, value, key_cache, value_cache, slot_mapping);
  });
}

}  // namespace pagedllm
