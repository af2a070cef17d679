// A whole pre-norm SwiGLU decoder stack (the Llama family) in one op call.
//
// The Python layers spend ~2-3 us per op call in the interpreter and the dispatcher, and a
// decode step of a 30-layer model makes ~330 of them: for one sequence that is a third of the
// step (the weights stream in ~6 ms, the calls take ~2-3 ms). This op runs the same ops in the
// same order (so the results are bit-identical to the Python path) from one C++ loop: each
// kernel is reached through a dispatcher handle looked up once.
//
// Per layer:
//   h = rms_norm(x)                (first layer; later: x, residual = fused_add_rms_norm)
//   qkv = h @ Wqkv^T; rotate q, k in place; write k, v into the paged cache
//   a = paged_attention(q, cache)
//   x = a @ Wo^T; x, residual = fused_add_rms_norm(x, residual)
//   x = (silu(gate) * up)(x @ Wgate_up^T) @ Wdown^T
// and the final norm. Linear layers run the kernel the Python layer would: packed bf16 weights
// the packed matmul (gemm_bf16.cpp); plain bf16 weights up to `skinny_max_rows` rows (an argument:
// the platform's choice per CPU, as ops/linear.py gets it) the skinny kernel, otherwise at::linear; 4-bit weights (codes and
// scales in one uint8 tensor, quant_gemv.h) pagedllm::gemv_int4; 8-bit weights (int8_gemv.h)
// pagedllm::gemv_int8; bf16 weights packed for oneDNN (ops/onednn_linear.py) torch's
// mkldnn::_linear_pointwise.
//
// The constants the Python side must agree with (weights per layer, the most rows the skinny
// kernel takes, the weight-kind codes) are exported by pagedllm::decoder_stack_info() -> int[], in
// this fixed order (new entries only ever go at the end). Ops are looked up in this build's
// own namespace (ops.h), so the AVX2 build's stack calls the AVX2 kernels.
//   [0] tensors_per_layer  weights per layer in `weights` (the final norm follows the last layer)
//   [1] skinny_max_rows    the most rows gemv_bf16 takes (gemv_bf16_max_rows()); 0 when the
//                          build has no skinny kernel
//   [2] kind_plain         weight_kinds code of a plain weight [N, K]
//   [3] kind_packed_bf16   code of a bf16 weight packed by pack_weight_bf16
//   [4] kind_int4          code of a 4-bit weight in gemv_int4's layout
//   [5] kind_int8          code of an 8-bit weight in gemv_int8's layout
//   [6] kind_onednn_bf16   code of a bf16 weight packed by mkldnn::_reorder_linear_weight

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/linear.h>

#include <ATen/core/List.h>
#include <ATen/core/stack.h>

#include <optional>
#include <string>
#include <vector>

#include "ops.h"

namespace pagedllm {
namespace {

constexpr int64_t kTensorsPerLayer = 6;  // input norm, qkv, o, post-attention norm, gate_up, down

using TensorList = c10::ArrayRef<at::Tensor>;

// An op of this library by its short name (its namespace depends on the build, ops.h).
template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  const std::string full = std::string(PAGEDLLM_OPS_NAMESPACE_NAME "::") + name;
  return c10::Dispatcher::singleton().findSchemaOrThrow(full.c_str(), "").typed<Signature>();
}

struct Kernels {
  c10::TypedOperatorHandle<void(at::Tensor, const at::Tensor&, const at::Tensor&, double)> rms_norm =
      op_handle<void(at::Tensor, const at::Tensor&, const at::Tensor&, double)>("rms_norm");
  c10::TypedOperatorHandle<void(at::Tensor, at::Tensor, const at::Tensor&, double)> fused_add_rms_norm =
      op_handle<void(at::Tensor, at::Tensor, const at::Tensor&, double)>("fused_add_rms_norm");
  c10::TypedOperatorHandle<void(at::Tensor, const at::Tensor&)> silu_and_mul =
      op_handle<void(at::Tensor, const at::Tensor&)>("silu_and_mul");
  c10::TypedOperatorHandle<void(at::Tensor, const at::Tensor&, const at::Tensor&, int64_t, int64_t)> rotary =
      op_handle<void(at::Tensor, const at::Tensor&, const at::Tensor&, int64_t, int64_t)>(
          "rotary_embedding");
  c10::TypedOperatorHandle<void(const at::Tensor&, const at::Tensor&, at::Tensor, at::Tensor, const at::Tensor&,
                                bool)>
      reshape_and_cache =
          op_handle<void(const at::Tensor&, const at::Tensor&, at::Tensor, at::Tensor, const at::Tensor&, bool)>(
              "reshape_and_cache");
  c10::TypedOperatorHandle<void(at::Tensor, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                const at::Tensor&, const at::Tensor&, const at::Tensor&, double, int64_t, double,
                                bool)>
      paged_attention =
          op_handle<void(at::Tensor, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                         const at::Tensor&, const at::Tensor&, double, int64_t, double, bool)>(
              "paged_attention");
  c10::TypedOperatorHandle<void(at::Tensor, const at::Tensor&, const at::Tensor&)> gemv_bf16 =
      op_handle<void(at::Tensor, const at::Tensor&, const at::Tensor&)>("gemv_bf16");
};

const Kernels& kernels() {
  static const Kernels k;
  return k;
}

// Kernels from other translation units; looked up on first use only.
const c10::TypedOperatorHandle<void(at::Tensor, const at::Tensor&, const at::Tensor&)>& gemv_int4_handle() {
  static const auto handle =
      op_handle<void(at::Tensor, const at::Tensor&, const at::Tensor&)>("gemv_int4");
  return handle;
}

const c10::TypedOperatorHandle<void(at::Tensor, const at::Tensor&, const at::Tensor&)>& gemv_int8_handle() {
  static const auto handle =
      op_handle<void(at::Tensor, const at::Tensor&, const at::Tensor&)>("gemv_int8");
  return handle;
}

const c10::TypedOperatorHandle<void(at::Tensor, const at::Tensor&, const at::Tensor&)>& gemm_packed_handle() {
  static const auto handle =
      op_handle<void(at::Tensor, const at::Tensor&, const at::Tensor&)>("gemm_packed_bf16");
  return handle;
}

// torch's oneDNN matmul on a weight it packed (mkldnn::_linear_pointwise, no bias, no
// post-op), called boxed: its C++ argument types have moved between torch versions, its schema
// has not.
at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& weight) {
  static const c10::OperatorHandle handle =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  torch::jit::Stack stack;
  stack.reserve(6);
  stack.emplace_back(x);
  stack.emplace_back(weight);
  stack.emplace_back();  // no bias
  stack.emplace_back(std::string("none"));
  stack.emplace_back(c10::List<std::optional<at::Scalar>>());
  stack.emplace_back();  // no algorithm
  handle.callBoxed(&stack);
  return stack[0].toTensor();
}

// How a linear layer's weight is stored (cpu_decoder_stack.py passes one code per weight;
// exported by decoder_stack_info).
enum WeightKind : int64_t { kPlain = 0, kPackedBf16 = 1, kInt4 = 2, kInt8 = 3, kOneDnnBf16 = 4 };

// x [M, K] @ W^T -> [M, out_features], written into `out` (a buffer the layers share) where the
// kernel writes into a given tensor, else a new tensor; the caller uses the one returned.
// Plain bf16 weights take gemv_bf16 up to `skinny_max_rows` rows (the platform's choice, the
// same that the Python layers make: ops/linear.py), oneDNN above.
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, int64_t kind, const at::Tensor& out,
                  int64_t skinny_max_rows) {
  if (kind == kPackedBf16) {
    gemm_packed_handle().call(out, x, weight);
    return out;
  }
  if (kind == kOneDnnBf16) return onednn_linear(x.is_contiguous() ? x : x.contiguous(), weight);
  if (kind == kInt4 || kind == kInt8) {
    (kind == kInt4 ? gemv_int4_handle() : gemv_int8_handle()).call(out, x, weight);
    return out;
  }
  if (gemv_bf16_max_rows() > 0 && x.scalar_type() == at::kBFloat16 && weight.scalar_type() == at::kBFloat16 &&
      x.size(0) <= skinny_max_rows && x.size(1) % 32 == 0 && x.stride(1) == 1 && weight.is_contiguous()) {
    kernels().gemv_bf16.call(out, x, weight);
    return out;
  }
  return at::linear(x, weight);
}

// The views of a [T, q + 2 kv] projection output that rotary, the cache write and attention take.
struct QkvViews {
  at::Tensor rotated, q, key, value;
  QkvViews(const at::Tensor& qkv, int64_t tokens, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim) {
    const int64_t q_size = num_heads * head_dim, kv_size = num_kv_heads * head_dim;
    rotated = qkv.narrow(1, 0, q_size + kv_size);
    q = qkv.narrow(1, 0, q_size).view({tokens, num_heads, head_dim});
    key = qkv.narrow(1, q_size, kv_size).view({tokens, num_kv_heads, head_dim});
    value = qkv.narrow(1, q_size + kv_size, kv_size).view({tokens, num_kv_heads, head_dim});
  }
};

}  // namespace

at::Tensor decoder_stack(const at::Tensor& hidden_in, const at::Tensor& positions, const at::Tensor& cos_sin_cache,
                         TensorList weights, c10::IntArrayRef weight_kinds, TensorList kv_caches,
                         c10::IntArrayRef layer_groups, c10::IntArrayRef windows, TensorList block_tables,
                         TensorList slot_mappings, const at::Tensor& query_start_loc, const at::Tensor& seq_lens,
                         int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, int64_t intermediate_size,
                         double eps, double scale, bool vnni, int64_t skinny_max_rows) {
  const int64_t num_layers = static_cast<int64_t>(kv_caches.size());
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == num_layers * kTensorsPerLayer + 1,
              "decoder_stack: expected 6 weights per layer plus the final norm");
  TORCH_CHECK(weight_kinds.size() == weights.size(), "decoder_stack: one kind per weight");
  TORCH_CHECK(static_cast<int64_t>(layer_groups.size()) == num_layers &&
                  static_cast<int64_t>(windows.size()) == num_layers,
              "decoder_stack: one KV-cache group and window per layer");
  TORCH_CHECK(hidden_in.dim() == 2 && hidden_in.is_contiguous(), "decoder_stack: hidden must be [T, hidden]");
  const Kernels& k = kernels();
  const int64_t tokens = hidden_in.size(0);
  const int64_t q_size = num_heads * head_dim, kv_size = num_kv_heads * head_dim;
  const int64_t rotary_dim = cos_sin_cache.size(1);

  // Every layer writes the same shapes, so the outputs and the views into them are made once per
  // call rather than ~25 times a layer (benchmarks/README.md, "Buffers made once per decoder
  // stack call"). x (the normed input, then the o and down projections' outputs) is one
  // buffer: each kernel reads another buffer than it writes.
  const auto options = hidden_in.options();
  const at::Tensor x_buffer = at::empty_like(hidden_in);
  const at::Tensor qkv_buffer = at::empty({tokens, q_size + 2 * kv_size}, options);
  const at::Tensor attn = at::empty({tokens, num_heads, head_dim}, options);
  const at::Tensor attn_rows = attn.view({tokens, q_size});
  const at::Tensor gate_up_buffer = at::empty({tokens, 2 * intermediate_size}, options);
  const at::Tensor act = at::empty({tokens, intermediate_size}, options);
  const QkvViews buffer_views(qkv_buffer, tokens, num_heads, num_kv_heads, head_dim);

  // The residual stream starts as the embedding output itself, as in the Python layers.
  at::Tensor residual = hidden_in;
  at::Tensor x = x_buffer;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    const int64_t w0 = layer * kTensorsPerLayer;
    if (layer == 0) {
      k.rms_norm.call(x, hidden_in, weights[w0], eps);
    } else {
      k.fused_add_rms_norm.call(x, residual, weights[w0], eps);
    }
    const at::Tensor qkv = linear(x, weights[w0 + 1], weight_kinds[w0 + 1], qkv_buffer, skinny_max_rows);
    // A kernel without an output argument (oneDNN, at::linear) returned its own tensor, which
    // needs views of its own; otherwise the buffer's are taken by reference, not copied.
    std::optional<QkvViews> own_views;
    const QkvViews& views = qkv.is_same(qkv_buffer)
                                ? buffer_views
                                : own_views.emplace(qkv, tokens, num_heads, num_kv_heads, head_dim);
    k.rotary.call(views.rotated, positions, cos_sin_cache, head_dim, rotary_dim);
    const at::Tensor& cache = kv_caches[layer];
    const int64_t group = layer_groups[layer];
    at::Tensor key_cache = cache.select(0, 0), value_cache = cache.select(0, 1);
    k.reshape_and_cache.call(views.key, views.value, key_cache, value_cache, slot_mappings[group], vnni);
    k.paged_attention.call(attn, views.q, key_cache, value_cache, block_tables[group], query_start_loc, seq_lens,
                           scale, windows[layer], 0.0, vnni);
    x = linear(attn_rows, weights[w0 + 2], weight_kinds[w0 + 2], x_buffer, skinny_max_rows);
    k.fused_add_rms_norm.call(x, residual, weights[w0 + 3], eps);
    const at::Tensor gate_up = linear(x, weights[w0 + 4], weight_kinds[w0 + 4], gate_up_buffer, skinny_max_rows);
    k.silu_and_mul.call(act, gate_up);
    x = linear(act, weights[w0 + 5], weight_kinds[w0 + 5], x_buffer, skinny_max_rows);
  }
  k.fused_add_rms_norm.call(x, residual, weights[num_layers * kTensorsPerLayer], eps);
  return x;
}

// [tensors_per_layer, skinny_max_rows, kind_plain, kind_packed_bf16, kind_int4, kind_int8]: see
// the file header. The order is part of the op's interface.
std::vector<int64_t> decoder_stack_info() {
  return {kTensorsPerLayer, gemv_bf16_max_rows(), kPlain, kPackedBf16, kInt4, kInt8, kOneDnnBf16};
}

}  // namespace pagedllm
