// Whether a one-row decode matmul on packed bf16 panels streams faster with software prefetch or
// on the hardware prefetcher alone: the probe behind benchmarks/README.md, "One row without it on
// small panels too". Standalone (no torch), for a CPU with AVX512-BF16:
//
//   g++ -O2 -march=native -fopenmp benchmarks/panel_prefetch_probe.cpp -o /tmp/panel_prefetch_probe
//   /tmp/panel_prefetch_probe [distance_bytes, default 1024] [smollm2|1b, default smollm2]
//
// One pass reads what a decode step reads: for SmolLM2-135M 30 layers of qkv, o, gate_up and
// down (120 matmuls, 212 MB), for the Llama-3.2-1B shape 16 layers (64 matmuls, 1946 MB), in one
// huge-page arena in execution order as the engine places them, then the LM head (SmolLM2's
// vocabulary), every matmul split in two halves over two OpenMP threads as gemm_packed_bf16
// splits it. Each variant's pass starts with cold caches (a 64 MB buffer is read
// in between); the variants take turns (20 passes each, 8 for the 1B), and the medians of GB/s
// (with the spread left after dropping a fifth of the passes at each end) are printed separately
// for the layers and the head.
//   raw read       the same bytes through plain 512-bit loads: the ceiling
//   no prefetch    the kernel's one-row inner loop (4 x vdpbf16ps a k pair on a 64-column panel)
//   next panel T0  the same, fetching each thread's next panel one k-pair row a step (the
//                  kernel's behaviour at one row on panels of K < 2048 before this probe)
//   dist T0..NTA   the same, fetching `distance` bytes ahead in the current stream instead, with
//                  each prefetch hint

#include <immintrin.h>
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kPanel = 64;          // output columns per panel, as in the vector build
constexpr int64_t kPanelRowBytes = 256;  // one k pair of a panel: 64 columns x 2 bf16

struct Matrix {
  const char* data;
  int64_t n, pairs;  // output columns, K / 2
  int64_t bytes() const { return n * pairs * 4; }
};

enum class Variant { kRawRead, kNoPrefetch, kNextPanel, kDistT0, kDistT1, kDistT2, kDistNta };
constexpr Variant kVariants[] = {Variant::kRawRead, Variant::kNoPrefetch, Variant::kNextPanel, Variant::kDistT0,
                                 Variant::kDistT1,  Variant::kDistT2,     Variant::kDistNta};
constexpr const char* kNames[] = {"raw read", "no prefetch", "next panel T0", "dist T0",
                                  "dist T1",  "dist T2",     "dist NTA"};

volatile float g_sink;

__attribute__((noinline)) float read_range(const char* p, int64_t bytes) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t i = 0; i + 256 <= bytes; i += 256) {
    a0 = _mm512_add_ps(a0, _mm512_load_ps(reinterpret_cast<const float*>(p + i)));
    a1 = _mm512_add_ps(a1, _mm512_load_ps(reinterpret_cast<const float*>(p + i + 64)));
    a2 = _mm512_add_ps(a2, _mm512_load_ps(reinterpret_cast<const float*>(p + i + 128)));
    a3 = _mm512_add_ps(a3, _mm512_load_ps(reinterpret_cast<const float*>(p + i + 192)));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

// One row of x against one whole 64-column panel; `next` is the thread's next panel (or null).
template <Variant kVariant>
__attribute__((noinline)) void panel_one_row(const uint16_t* x, const char* panel, int64_t pairs, float* out,
                                             const char* next, int64_t distance) {
  __m512 acc[4];
  for (auto& a : acc) a = _mm512_setzero_ps();
  const char* w = panel;
  for (int64_t j = 0; j < pairs; ++j, w += kPanelRowBytes) {
    if constexpr (kVariant == Variant::kNextPanel) {
      if (next != nullptr)
        for (int l = 0; l < kPanelRowBytes; l += 64) _mm_prefetch(next + j * kPanelRowBytes + l, _MM_HINT_T0);
    } else if constexpr (kVariant != Variant::kNoPrefetch) {
      constexpr auto hint = kVariant == Variant::kDistT0   ? _MM_HINT_T0
                            : kVariant == Variant::kDistT1 ? _MM_HINT_T1
                            : kVariant == Variant::kDistT2 ? _MM_HINT_T2
                                                           : _MM_HINT_NTA;
      for (int l = 0; l < kPanelRowBytes; l += 64) _mm_prefetch(w + distance + l, hint);
    }
    const __m512bh xb = (__m512bh)_mm512_set1_epi32(*reinterpret_cast<const int32_t*>(x + 2 * j));
    for (int v = 0; v < 4; ++v)
      acc[v] = _mm512_dpbf16_ps(acc[v], xb, (__m512bh)_mm512_loadu_si512(w + v * 64));
  }
  for (int v = 0; v < 4; ++v) _mm512_storeu_ps(out + v * 16, acc[v]);
}

template <Variant kVariant>
void matmul(const Matrix& m, const uint16_t* x, float* out, int64_t distance) {
  const int64_t panels = m.n / kPanel, panel_bytes = m.pairs * kPanelRowBytes;
#pragma omp parallel num_threads(2)
  {
    const int t = omp_get_thread_num();
    if constexpr (kVariant == Variant::kRawRead) {
      const int64_t half = m.bytes() / 2;
      g_sink = read_range(m.data + t * half, half);
    } else {
      const int64_t begin = t == 0 ? 0 : panels / 2, end = t == 0 ? panels / 2 : panels;
      for (int64_t p = begin; p < end; ++p) {
        const char* next = p + 1 < end ? m.data + (p + 1) * panel_bytes : nullptr;
        panel_one_row<kVariant>(x, m.data + p * panel_bytes, m.pairs, out + p * kPanel, next, distance);
      }
    }
  }
}

void run(Variant v, const Matrix& m, const uint16_t* x, float* out, int64_t distance) {
  switch (v) {
    case Variant::kRawRead: return matmul<Variant::kRawRead>(m, x, out, distance);
    case Variant::kNoPrefetch: return matmul<Variant::kNoPrefetch>(m, x, out, distance);
    case Variant::kNextPanel: return matmul<Variant::kNextPanel>(m, x, out, distance);
    case Variant::kDistT0: return matmul<Variant::kDistT0>(m, x, out, distance);
    case Variant::kDistT1: return matmul<Variant::kDistT1>(m, x, out, distance);
    case Variant::kDistT2: return matmul<Variant::kDistT2>(m, x, out, distance);
    case Variant::kDistNta: return matmul<Variant::kDistNta>(m, x, out, distance);
  }
}

double median_gbps(std::vector<double>& v, int64_t at) {
  std::sort(v.begin(), v.end());
  return v[at];
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t distance = argc > 1 ? atol(argv[1]) : 1024;
  const bool one_b = argc > 2 && strcmp(argv[2], "1b") == 0;
  // [N, K] per layer: qkv (SmolLM2's 960 columns rounded to whole panels), o, gate_up, down.
  const int64_t smollm2_shapes[4][2] = {{1024, 576}, {576, 576}, {3072, 576}, {576, 1536}};
  const int64_t one_b_shapes[4][2] = {{3072, 2048}, {2048, 2048}, {16384, 2048}, {2048, 8192}};
  const auto& layer_shapes = one_b ? one_b_shapes : smollm2_shapes;
  const int num_layers = one_b ? 16 : 30;
  const Matrix head_shape{nullptr, 49152, (one_b ? 2048 : 576) / 2};
  int64_t layers_bytes = 0;
  for (const auto& s : layer_shapes) layers_bytes += num_layers * s[0] * s[1] * 2;
  const int64_t arena_bytes = ((layers_bytes + head_shape.bytes() + distance) / (2 << 20) + 2) * (2 << 20);
  char* arena = static_cast<char*>(aligned_alloc(2 << 20, arena_bytes));
  madvise(arena, arena_bytes, MADV_HUGEPAGE);
  for (int64_t i = 0; i < arena_bytes; ++i) arena[i] = static_cast<char>(i * 7);

  std::vector<Matrix> layers;
  int64_t offset = 0;
  for (int layer = 0; layer < num_layers; ++layer)
    for (const auto& s : layer_shapes) {
      layers.push_back({arena + offset, s[0], s[1] / 2});
      offset += s[0] * s[1] * 2;
    }
  const Matrix head{arena + offset, head_shape.n, head_shape.pairs};
  std::vector<uint16_t> x(8192, 0x3f80);  // bf16 1.0
  std::vector<float> out(head.n);
  std::vector<char> evict(64 << 20, 1);
  const int kPasses = one_b ? 8 : 20;

  constexpr int kVariantCount = sizeof(kVariants) / sizeof(kVariants[0]);
  std::vector<double> layer_rate[kVariantCount], head_rate[kVariantCount];
  for (int pass = 0; pass < kPasses; ++pass) {
    for (int k = 0; k < kVariantCount; ++k) {
      float touched = 0;
      for (size_t i = 0; i < evict.size(); i += 64) touched += evict[i];
      g_sink = touched;
      const auto t0 = std::chrono::steady_clock::now();
      for (const Matrix& m : layers) run(kVariants[k], m, x.data(), out.data(), distance);
      const auto t1 = std::chrono::steady_clock::now();
      run(kVariants[k], head, x.data(), out.data(), distance);
      const auto t2 = std::chrono::steady_clock::now();
      layer_rate[k].push_back(layers_bytes / std::chrono::duration<double>(t1 - t0).count() / 1e9);
      head_rate[k].push_back(head.bytes() / std::chrono::duration<double>(t2 - t1).count() / 1e9);
    }
  }
  printf("%s: GB/s, median [lowest .. highest after dropping a fifth at each end] of %d passes; distance %ld "
         "bytes\n",
         one_b ? "1B" : "SmolLM2", kPasses, static_cast<long>(distance));
  for (int k = 0; k < kVariantCount; ++k) {
    auto& l = layer_rate[k];
    auto& h = head_rate[k];
    const double lm = median_gbps(l, kPasses / 2), hm = median_gbps(h, kPasses / 2);
    const int low = kPasses / 5, high = kPasses - 1 - kPasses / 5;
    printf("%-14s layers %5.1f [%5.1f .. %5.1f]   head %5.1f [%5.1f .. %5.1f]\n", kNames[k], lm, l[low], l[high], hm,
           h[low], h[high]);
  }
  return 0;
}
