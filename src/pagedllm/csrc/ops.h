// The C++ entry point of every torch.ops.pagedllm op, one declaration each, for
// registration.cpp to bind to the schemas (the defining source is named with each group).
//
// The sources define these in namespace pagedllm (outside their anonymous namespaces) and
// include this header so that a definition and its declaration stay one function. Only
// registration.cpp includes <torch/library.h>: binding a function to an op instantiates the
// dispatcher's boxing templates, which costs each translation unit seconds to compile.

#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <vector>

#include "int8_gemv.h"   // gemv_int8, int8_linear, dequantize_int8_t (int8_gemv.cpp)
#include "quant_gemv.h"  // gemv_int4, int4_linear, dequantize_int4_t (quant_gemv.cpp)

// The op namespace: `pagedllm` for the build made for this CPU, another name (passed with -D by
// ops/cpu_kernels.py) for a build made for an older instruction set, so that a process can load
// both and tests compare them. Ops that call other ops look them up under this name.
#ifndef PAGEDLLM_OPS_NAMESPACE
#define PAGEDLLM_OPS_NAMESPACE pagedllm
#endif
#define PAGEDLLM_STRINGIFY_(x) #x
#define PAGEDLLM_STRINGIFY(x) PAGEDLLM_STRINGIFY_(x)
#define PAGEDLLM_OPS_NAMESPACE_NAME PAGEDLLM_STRINGIFY(PAGEDLLM_OPS_NAMESPACE)

namespace pagedllm {

// attention.cpp
void paged_attention(at::Tensor out, const at::Tensor& query, const at::Tensor& key_cache,
                     const at::Tensor& value_cache, const at::Tensor& block_table,
                     const at::Tensor& query_start_loc, const at::Tensor& seq_lens, double scale, int64_t window,
                     double soft_cap, bool vnni);
// Whether prefill attention may take the AMX tiles where the build and the OS have them (on by
// default; off forces the vector loops, for tests and benchmarks). Returns the previous
// setting; false, changing nothing, in builds without the tile kernels.
bool set_attention_tiles(bool enabled);

// cache_write.cpp
void reshape_and_cache(const at::Tensor& key, const at::Tensor& value, at::Tensor key_cache,
                       at::Tensor value_cache, const at::Tensor& slot_mapping, bool vnni);

// elementwise.cpp
void rms_norm(at::Tensor out, const at::Tensor& x, const at::Tensor& weight, double eps);
void fused_add_rms_norm(at::Tensor x, at::Tensor residual, const at::Tensor& weight, double eps);
void silu_and_mul(at::Tensor out, const at::Tensor& x);
void rotary_embedding(at::Tensor x, const at::Tensor& positions, const at::Tensor& cos_sin_cache,
                      int64_t head_dim, int64_t rotary_dim);

// gemm_bf16.cpp
void gemv_bf16(at::Tensor out, const at::Tensor& x, const at::Tensor& weight);
int64_t gemv_bf16_max_rows();
at::Tensor pack_weight_bf16(const at::Tensor& w);
void gemm_packed_bf16(at::Tensor out, const at::Tensor& x, const at::Tensor& packed);
void embed_packed_bf16(at::Tensor out, const at::Tensor& packed, const at::Tensor& ids);
void gemm_packed_bf16_kernel(at::Tensor out, const at::Tensor& x, const at::Tensor& packed,
                             c10::string_view kernel);
bool amx_tiles();
at::Tensor unpack_weight_bf16(const at::Tensor& packed);

// sampling.cpp
void sample_tokens(at::Tensor out, const at::Tensor& logits, const at::Tensor& temperature,
                   const at::Tensor& uniform);

// decoder_stack.cpp
at::Tensor decoder_stack(const at::Tensor& hidden_in, const at::Tensor& positions, const at::Tensor& cos_sin_cache,
                         c10::ArrayRef<at::Tensor> weights, c10::IntArrayRef weight_kinds,
                         c10::ArrayRef<at::Tensor> kv_caches, c10::IntArrayRef layer_groups,
                         c10::IntArrayRef windows, c10::ArrayRef<at::Tensor> block_tables,
                         c10::ArrayRef<at::Tensor> slot_mappings, const at::Tensor& query_start_loc,
                         const at::Tensor& seq_lens, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                         int64_t intermediate_size, double eps, double scale, bool vnni,
                         int64_t skinny_max_rows);
std::vector<int64_t> decoder_stack_info();

}  // namespace pagedllm
