// The pagedllm operator library: every op's schema and the function that implements it, in
// one place.
//
// The sources define the ops' entry points (declared in ops.h); this file declares what
// torch.ops.pagedllm.* takes and returns and binds each op to its entry point. It is the only
// translation unit that includes <torch/library.h> (see ops.h). Schemas are part of the
// Python interface (ops/, attention/, model/ call them by name): change them together.

#include <torch/library.h>

#include <string>

#include "ops.h"
#include "vec.h"

// The op namespace is PAGEDLLM_OPS_NAMESPACE (ops.h); the indirection expands the name before
// TORCH_LIBRARY pastes it.
#define PAGEDLLM_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define PAGEDLLM_LIBRARY_IMPL(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)

namespace {

// The instruction set the kernels' vector paths were compiled for (vec.h's PAGEDLLM_ISA_*).
std::string instruction_set() {
#if defined(PAGEDLLM_ISA_AVX512_BF16)
  return "avx512_bf16";
#elif defined(PAGEDLLM_ISA_AVX2)
  return "avx2";
#else
  return "scalar";
#endif
}

}  // namespace

PAGEDLLM_LIBRARY(PAGEDLLM_OPS_NAMESPACE, m) {
  // Which vector paths this build has: "avx512_bf16", "avx2" or "scalar".
  m.def("instruction_set() -> str");

  // Paged attention and the KV-cache write (attention.cpp, cache_write.cpp).
  m.def(
      "paged_attention(Tensor(a!) out, Tensor query, Tensor key_cache, Tensor value_cache, Tensor block_table, "
      "Tensor query_start_loc, Tensor seq_lens, float scale, int window, float soft_cap, bool vnni) -> ()");
  m.def("set_attention_tiles(bool enabled) -> bool");  // prefill attention on the AMX tiles (on by default)
  m.def("reshape_and_cache(Tensor key, Tensor value, Tensor(a!) key_cache, Tensor(b!) value_cache, Tensor slot_mapping, bool vnni) -> ()");

  // Element-wise kernels (elementwise.cpp).
  m.def("rms_norm(Tensor(a!) out, Tensor x, Tensor weight, float eps) -> ()");
  m.def("fused_add_rms_norm(Tensor(a!) x, Tensor(b!) residual, Tensor weight, float eps) -> ()");
  m.def("silu_and_mul(Tensor(a!) out, Tensor x) -> ()");
  m.def("rotary_embedding(Tensor(a!) x, Tensor positions, Tensor cos_sin_cache, int head_dim, int rotary_dim) -> ()");

  // bf16 matmuls: the skinny one on plain weights and the packed-weight ones (gemm_bf16.cpp).
  m.def("gemv_bf16(Tensor(a!) out, Tensor x, Tensor weight) -> ()");
  m.def("gemv_bf16_max_rows() -> int");  // the most rows gemv_bf16 takes; 0 in a scalar build
  m.def("pack_weight_bf16(Tensor weight) -> Tensor");
  m.def("gemm_packed_bf16(Tensor(a!) out, Tensor x, Tensor packed) -> ()");
  m.def("embed_packed_bf16(Tensor(a!) out, Tensor packed, Tensor ids) -> ()");
  m.def("gemm_packed_bf16_kernel(Tensor(a!) out, Tensor x, Tensor packed, str kernel) -> ()");
  m.def("amx_tiles() -> bool");  // our tile kernels run here (gemm_bf16.cpp)
  m.def("unpack_weight_bf16(Tensor packed) -> Tensor");

  // 4-bit weights (quant_gemv.cpp; layout in quant_gemv.h).
  m.def("gemv_int4(Tensor(a!) out, Tensor x, Tensor packed) -> ()");
  m.def("gemv_int4_kernel(Tensor(a!) out, Tensor x, Tensor packed, str kernel) -> ()");
  m.def("int4_linear(Tensor x, Tensor packed, int n) -> Tensor");
  m.def("dequantize_int4_t(Tensor(a!) out, Tensor packed, int row_begin, int group_size=32) -> ()");
  m.def("gemv_int8(Tensor(a!) out, Tensor x, Tensor packed) -> ()");
  m.def("gemv_int8_kernel(Tensor(a!) out, Tensor x, Tensor packed, str kernel) -> ()");
  m.def("int8_linear(Tensor x, Tensor packed, int n) -> Tensor");
  m.def("dequantize_int8_t(Tensor(a!) out, Tensor packed, int row_begin) -> ()");

  // Token sampling (sampling.cpp).
  m.def("sample_tokens(Tensor(a!) out, Tensor logits, Tensor temperature, Tensor uniform) -> ()");

  // The whole decoder stack as one op (decoder_stack.cpp).
  m.def(
      "decoder_stack(Tensor(b!) hidden, Tensor positions, Tensor cos_sin_cache, Tensor[] weights, int[] weight_kinds, "
      "Tensor(a!)[] kv_caches, int[] layer_groups, int[] windows, Tensor[] block_tables, Tensor[] slot_mappings, "
      "Tensor query_start_loc, Tensor seq_lens, int num_heads, int num_kv_heads, int head_dim, "
      "int intermediate_size, float eps, float scale, bool vnni, int skinny_max_rows) -> Tensor");
  // Its constants, for Python to check at load, in this fixed order: [tensors_per_layer,
  // the most rows gemv_bf16 takes (0 in a scalar build), kind_plain, kind_packed_bf16, kind_int4,
  // kind_int8, kind_onednn_bf16].
  m.def("decoder_stack_info() -> int[]");
}

PAGEDLLM_LIBRARY_IMPL(PAGEDLLM_OPS_NAMESPACE, CPU, m) {
  m.impl("paged_attention", &pagedllm::paged_attention);
  m.impl("reshape_and_cache", &pagedllm::reshape_and_cache);

  m.impl("rms_norm", &pagedllm::rms_norm);
  m.impl("fused_add_rms_norm", &pagedllm::fused_add_rms_norm);
  m.impl("silu_and_mul", &pagedllm::silu_and_mul);
  m.impl("rotary_embedding", &pagedllm::rotary_embedding);

  m.impl("gemv_bf16", &pagedllm::gemv_bf16);
  m.impl("pack_weight_bf16", &pagedllm::pack_weight_bf16);
  m.impl("gemm_packed_bf16", &pagedllm::gemm_packed_bf16);
  m.impl("embed_packed_bf16", &pagedllm::embed_packed_bf16);
  m.impl("gemm_packed_bf16_kernel", &pagedllm::gemm_packed_bf16_kernel);
  m.impl("unpack_weight_bf16", &pagedllm::unpack_weight_bf16);

  m.impl("gemv_int4", &pagedllm::gemv_int4);
  m.impl("gemv_int4_kernel", &pagedllm::gemv_int4_kernel);
  m.impl("int4_linear", &pagedllm::int4_linear);
  m.impl("dequantize_int4_t", &pagedllm::dequantize_int4_t);
  m.impl("gemv_int8", &pagedllm::gemv_int8);
  m.impl("gemv_int8_kernel", &pagedllm::gemv_int8_kernel);
  m.impl("int8_linear", &pagedllm::int8_linear);
  m.impl("dequantize_int8_t", &pagedllm::dequantize_int8_t);

  m.impl("sample_tokens", &pagedllm::sample_tokens);

  m.impl("decoder_stack", &pagedllm::decoder_stack);
}

// Weights packed for oneDNN (ops/onednn_linear.py) are MkldnnCPU tensors, which make that the
// dispatch key of a decoder stack holding them; the stack itself is the same CPU code.
PAGEDLLM_LIBRARY_IMPL(PAGEDLLM_OPS_NAMESPACE, MkldnnCPU, m) { m.impl("decoder_stack", &pagedllm::decoder_stack); }

// No tensor arguments, so no backend to dispatch on: one kernel for every key.
PAGEDLLM_LIBRARY_IMPL(PAGEDLLM_OPS_NAMESPACE, CompositeExplicitAutograd, m) {
  m.impl("instruction_set", &instruction_set);
  m.impl("gemv_bf16_max_rows", &pagedllm::gemv_bf16_max_rows);
  m.impl("amx_tiles", &pagedllm::amx_tiles);
  m.impl("set_attention_tiles", &pagedllm::set_attention_tiles);
  m.impl("decoder_stack_info", &pagedllm::decoder_stack_info);
}
