// Skinny matmuls on 4-bit group-quantized weights (decode); see quant_gemv.h for the layout.
//
// Each weight byte is read once per call (per 64 rows of x), front to back: the codes and
// scales of a super-block of 64 output rows are interleaved group by group, so that a thread
// reads one sequential stream (measured 5-15% faster for one row than separate streams for
// each block's codes and scales). Every 64-byte line of codes serves all rows of x in a tile.
// Per line: one load, then for each of the 4 k-pairs a shift and a ternary-logic mask / OR
// that turn the 16 lanes into bf16 pairs (16 + code), and one AVX512-BF16 dot product per row
// of x. The 16 + code form (instead of code - 8) costs nothing: its offset folds into the
// per-group term (zero - 24 * scale) * sum(x over the group), applied with the scale once per
// group.
//
// Rows of x run in tiles of up to 8 (blocks_for: 4 blocks of weight rows per pass for up to 4
// rows of x, 2 beyond), so the dot products are compute-bound from about 4 rows on: one core
// ran 6-6.5 G of them per second in cache (about 80% of its peak), twice torch's float32-FMA
// kernel at 8-16 rows; for many rows, dequantize + oneDNN's bf16 matmul takes over (int4.py).
//
// The AVX2 path (x86-64-v3 build) is in quant_gemv_avx2.cpp, the layout helpers both paths
// use in quant_gemv_impl.h.

#include "quant_gemv.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <vector>

#include "ops.h"
#include "quant_gemv_impl.h"
#include "vec.h"

namespace pagedllm {

using namespace int4_detail;

namespace {

#if defined(__AVX512BF16__)

// Rows m0..m0 + kM of x against kNB blocks of 16 output rows, over all of K.
//   xsum: [kM][groups] float sums of x over each group
template <int kM, int kNB, int kP>
void int4_tile(const Int4Tile& t, const Int4Groups& gr, const uint16_t* x, int64_t x_stride, const float* xsum,
               uint16_t* out, int64_t out_stride, __mmask16 last_mask) {
  const __m512i mask = _mm512_set1_epi32(0x00780078);   // mantissa bits 3..6 of both halves
  const __m512i magic = _mm512_set1_epi32(0x41804180);  // bf16 16.0 in both halves
  const __m512 minus24 = _mm512_set1_ps(-24.0f);
  const int64_t groups = gr.count;
  __m512 total[kM][kNB];
  for (int m = 0; m < kM; ++m)
    for (int b = 0; b < kNB; ++b) total[m][b] = _mm512_setzero_ps();

  for (int64_t g = 0; g < groups; ++g) {
    __m512 acc[kM][kNB][kP];
    for (int m = 0; m < kM; ++m)
      for (int b = 0; b < kNB; ++b)
        for (int p = 0; p < kP; ++p) acc[m][b][p] = _mm512_setzero_ps();
    const uint8_t* group_codes = t.codes + g * t.group_stride;
    // Four lines (32 values of k) at a time: G is a multiple of 32.
    for (int64_t o4 = 0; o4 < gr.lines; o4 += 4) {
      prefetch_ahead(t, gr, g * gr.lines + o4, kNB);
      const uint8_t* line = group_codes + t.line_offset(o4);
      const uint16_t* xg = x + g * gr.size + o4 * 8;
#pragma GCC unroll 4
      for (int o = 0; o < 4; ++o) {
        __m512i d[kNB];
        for (int b = 0; b < kNB; ++b) d[b] = _mm512_loadu_si512(line + b * t.block_stride + o * kOctetBytes);
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          __m512bh w[kNB];
          for (int b = 0; b < kNB; ++b) {
            __m512i s;
            switch (j) {
              case 0: s = _mm512_slli_epi32(d[b], 3); break;
              case 1: s = _mm512_srli_epi32(d[b], 1); break;
              case 2: s = _mm512_srli_epi32(d[b], 5); break;
              default: s = _mm512_srli_epi32(d[b], 9); break;
            }
            w[b] = (__m512bh)_mm512_ternarylogic_epi32(s, mask, magic, 0xEA);  // (s & mask) | magic
          }
          for (int m = 0; m < kM; ++m) {
            int32_t pair;
            __builtin_memcpy(&pair, xg + m * x_stride + o * 8 + 2 * j, sizeof(pair));
            const __m512bh xv = (__m512bh)_mm512_set1_epi32(pair);
            for (int b = 0; b < kNB; ++b) acc[m][b][j % kP] = _mm512_dpbf16_ps(acc[m][b][j % kP], xv, w[b]);
          }
        }
      }
    }
    for (int b = 0; b < kNB; ++b) {
      const __m512i pairs = _mm512_loadu_si512(t.sz + g * t.sz_group_stride + b * t.sz_block_stride);
      const __m512 scale = low_bf16_to_float(pairs);
      const __m512 zero = high_bf16_to_float(pairs);
      const __m512 offset = _mm512_fmadd_ps(scale, minus24, zero);  // sum (c - 8) x = A - 24 sum x
      for (int m = 0; m < kM; ++m) {
        __m512 a = acc[m][b][0];
        for (int p = 1; p < kP; ++p) a = _mm512_add_ps(a, acc[m][b][p]);
        total[m][b] = _mm512_fmadd_ps(a, scale, total[m][b]);
        total[m][b] = _mm512_fmadd_ps(offset, _mm512_set1_ps(xsum[m * groups + g]), total[m][b]);
      }
    }
  }
  for (int m = 0; m < kM; ++m)
    for (int b = 0; b < kNB; ++b) {
      const __m256i v = to_bf16x16(total[m][b]);
      uint16_t* dst = out + m * out_stride + b * kInt4BlockRows;
      if (b == kNB - 1)
        _mm256_mask_storeu_epi16(dst, last_mask, v);
      else
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), v);
    }
}

using TileFn = void (*)(const Int4Tile&, const Int4Groups&, const uint16_t*, int64_t, const float*, uint16_t*,
                        int64_t, __mmask16);

// Blocks per pass for a tile of kM rows: enough independent accumulators to hide the dot
// products' latency, few enough to stay in the 32 vector registers.
// (Measured in cache on one core: 4 blocks for up to 4 rows, 2 beyond, ran 5.6-6.5 G dot
// products/s against 4.7-4.9 with half as many.) Past 16 accumulators they would spill.
constexpr int kWholeSuperBlockRows = 4;  // the most rows of x whose tiles take all 4 blocks
constexpr int blocks_for(int m) { return m <= kWholeSuperBlockRows ? kInt4SuperBlocks : 2; }

// Rows of x per tile for a weight's group size. Tiles of 5-8 rows take 2 of a super-block's 4
// blocks per pass, which suits groups of 32. With groups of 64 and 128 those half passes made a
// call up to 2.5x slower from memory at 5-8 rows (less with more rows; AMD EPYC Zen 4,
// benchmarks/README.md, "4-bit tiles by group size"), so such weights take tiles that cover the
// whole super-block, at the cost of unpacking each line of codes once per 4 rows of x instead
// of once per 8.
inline int tile_rows_for(const Int4Groups& gr) {
  return gr.size == kInt4GroupSize ? kMaxTileRows : kWholeSuperBlockRows;
}

template <int kM, int kNB>
constexpr TileFn tile_fn() {
  return &int4_tile<kM, kNB, (kM * kNB >= 8 ? 1 : 2)>;
}

// [rows of x - 1][blocks - 1]: the tile for 1..8 rows and 1..4 blocks (4 only where chosen).
template <int kM>
constexpr std::array<TileFn, 4> tiles_for_rows() {
  return {tile_fn<kM, 1>(), tile_fn<kM, std::min(2, blocks_for(kM))>(), tile_fn<kM, std::min(3, blocks_for(kM))>(),
          tile_fn<kM, std::min(4, blocks_for(kM))>()};
}

const std::array<std::array<TileFn, 4>, kMaxTileRows> kTiles = {
    tiles_for_rows<1>(), tiles_for_rows<2>(), tiles_for_rows<3>(), tiles_for_rows<4>(),
    tiles_for_rows<5>(), tiles_for_rows<6>(), tiles_for_rows<7>(), tiles_for_rows<8>()};

#endif  // __AVX512BF16__

}  // namespace

bool gemv_int4_supported(const at::Tensor& x, const at::Tensor& packed, int64_t n) {
#if defined(__AVX512BF16__) || defined(PAGEDLLM_ISA_AVX2)
  return x.scalar_type() == at::kBFloat16 && x.dim() == 2 && x.size(0) <= kInt4GemvMaxRows && x.stride(1) == 1 &&
         x.size(1) % kInt4GroupSize == 0 && x.size(1) > 0 && n > 0 && x.device().is_cpu() &&
         packed.scalar_type() == at::kByte && packed.is_contiguous() && packed.device().is_cpu() &&
         int4_group_size(n, x.size(1), packed.numel()) != 0;
#else
  (void)x, (void)packed, (void)n;
  return false;
#endif
}

namespace {

void check_gemv_int4(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed) {
  TORCH_CHECK(out.scalar_type() == at::kBFloat16 && out.dim() == 2 && out.device().is_cpu() && out.stride(1) == 1 &&
                  x.dim() == 2 && out.size(0) == x.size(0),
              "gemv_int4: out must be a bf16 CPU tensor [M, N] with unit stride along N");
  TORCH_CHECK(gemv_int4_supported(x, packed, out.size(1)),
              "gemv_int4 takes bf16 x [M <= 65536, K % 32 == 0] and a weight packed for it (see quant_gemv.h)");
}

// The group geometry of a checked gemv_int4 call.
Int4Groups groups_of(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed) {
  return int4_groups(x.size(1), int4_group_size(out.size(1), x.size(1), packed.numel()));
}

#if defined(__AVX512BF16__)
// The vdpbf16ps kernel (arguments checked, at least one row).
void gemv_int4_vector(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed, const Int4Groups& gr) {
  const int64_t rows = x.size(0), n_len = out.size(1);
  const int64_t groups = gr.count, blocks = (n_len + kInt4BlockRows - 1) / kInt4BlockRows;
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const auto* codes = packed.data_ptr<uint8_t>();
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t x_stride = x.stride(0), out_stride = out.stride(0);

  // Sums of x over each group of k, for the offset term.
  constexpr int64_t kStackSums = 1024;
  float stack_sums[kStackSums];
  std::vector<float> heap_sums(rows * groups > kStackSums ? rows * groups : 0);
  float* xs = rows * groups > kStackSums ? heap_sums.data() : stack_sums;
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t g = 0; g < groups; ++g) {
      __m512 sum = _mm512_setzero_ps();
      for (int64_t i = 0; i < gr.size; i += 32) {
        const __m512i v = _mm512_loadu_si512(xp + m * x_stride + g * gr.size + i);
        sum = _mm512_add_ps(sum, _mm512_add_ps(low_bf16_to_float(v), high_bf16_to_float(v)));
      }
      xs[m * groups + g] = _mm512_reduce_add_ps(sum);
    }
  const int tail = static_cast<int>(n_len - (blocks - 1) * kInt4BlockRows);
  const __mmask16 tail_mask = static_cast<__mmask16>((1u << tail) - 1);

  const int tile_rows = tile_rows_for(gr);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    // Rows of x in chunks that stay in L2 while this thread's weight blocks pass over them
    // (each block is read from memory once per chunk, and from L1 once per tile of rows).
    for (int64_t m0 = 0; m0 < rows; m0 += kRowChunk) {
      const int64_t m1 = std::min(rows, m0 + kRowChunk);
      const int nb_max = blocks_for(static_cast<int>(std::min<int64_t>(m1 - m0, tile_rows)));
      for (int64_t b = begin; b < end;) {
        // A pass stays within one super-block (its blocks share one group stride).
        const int64_t super_end = (b / kInt4SuperBlocks + 1) * kInt4SuperBlocks;
        const int nb = static_cast<int>(std::min({static_cast<int64_t>(nb_max), end - b, super_end - b}));
        for (int64_t m = m0; m < m1; m += tile_rows) {
          const int mt = static_cast<int>(std::min<int64_t>(tile_rows, m1 - m));
          const int nbt = std::min(nb, blocks_for(mt));
          // A short last tile of rows may take fewer blocks per pass than the full one.
          for (int done = 0; done < nb; done += nbt) {
            const int cnt = std::min(nbt, nb - done);
            const int64_t blk = b + done;
            kTiles[mt - 1][cnt - 1](locate(codes, blk, blocks, gr), gr, xp + m * x_stride, x_stride, xs + m * groups,
                                    op + m * out_stride + blk * kInt4BlockRows, out_stride,
                                    blk + cnt == blocks ? tail_mask : static_cast<__mmask16>(0xFFFF));
          }
        }
        b += nb;
      }
    }
  });
}
#endif

// The one vector kernel of this build (arguments checked, at least one row).
void gemv_int4_vector_path(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed,
                           const Int4Groups& gr) {
#if defined(__AVX512BF16__)
  gemv_int4_vector(out, x, packed, gr);
#elif defined(PAGEDLLM_ISA_AVX2)
  gemv_int4_avx2(out, x, packed, gr);
#else
  (void)out, (void)x, (void)packed, (void)gr;
#endif
}

}  // namespace

void gemv_int4(at::Tensor out, const at::Tensor& x, const at::Tensor& packed) {
  check_gemv_int4(out, x, packed);
  if (x.size(0) == 0) return;
  const Int4Groups gr = groups_of(out, x, packed);
#if defined(PAGEDLLM_HAVE_AMX_BF16)
  // (The tile kernel takes groups of 32 only.)
  if (x.size(0) > kInt4AmxMinRows && gr.size == kInt4GroupSize && gemv_int4_amx(out, x, packed)) return;
#endif
  gemv_int4_vector_path(out, x, packed, gr);
}

// gemv_int4 through one kernel whatever the row count: "vector" (vdpbf16ps or AVX2 FMA on the
// codes) or "amx" (codes converted a group at a time into bf16 tiles; an error where the build
// or the OS does not have them, or N % 16 != 0). For tests and benchmarks.
void gemv_int4_kernel(at::Tensor out, const at::Tensor& x, const at::Tensor& packed, c10::string_view kernel) {
  TORCH_CHECK(kernel == "vector" || kernel == "amx", "gemv_int4_kernel: kernel must be 'vector' or 'amx', got '",
              kernel, "'");
  check_gemv_int4(out, x, packed);
  if (x.size(0) == 0) return;
  const Int4Groups gr = groups_of(out, x, packed);
  if (kernel == "amx") {
#if defined(PAGEDLLM_HAVE_AMX_BF16)
    if (gr.size == kInt4GroupSize && gemv_int4_amx(out, x, packed)) return;
#endif
    TORCH_CHECK(false,
                "gemv_int4_kernel: no AMX tile kernel in this build, no tile state granted by the OS, N % 16 != 0 "
                "or a group size other than 32");
  }
  gemv_int4_vector_path(out, x, packed, gr);
}

at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& packed, int64_t n) {
  const at::Tensor xc = x.dim() == 2 && x.stride(1) != 1 ? x.contiguous() : x;
  at::Tensor out = at::empty({xc.size(0), n}, xc.options());
  gemv_int4(out, xc, packed);
  return out;
}

void dequantize_int4_t(at::Tensor out, const at::Tensor& packed, int64_t row_begin, int64_t group_size) {
  TORCH_CHECK(out.dim() == 2 && out.device().is_cpu() && out.stride(1) == 1 &&
                  (out.scalar_type() == at::kBFloat16 || out.scalar_type() == at::kFloat),
              "dequantize_int4_t: out must be a bf16 or float32 CPU tensor [K, rows] with unit stride along rows");
  TORCH_CHECK(row_begin >= 0 && row_begin % kInt4BlockRows == 0,
              "dequantize_int4_t: row_begin must be a multiple of 16");
  const int64_t k_len = out.size(0), n_rows = out.size(1);
  TORCH_CHECK(int4_takes_group_size(group_size, k_len),
              "dequantize_int4_t: the group size must be 32, 64 or 128 and divide K; got ", group_size, " for K = ",
              k_len);
  const int64_t block_bytes = int4_packed_bytes(kInt4BlockRows, k_len, group_size);
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.is_contiguous() && packed.numel() % block_bytes == 0 &&
                  row_begin + n_rows <= packed.numel() / block_bytes * kInt4BlockRows,
              "dequantize_int4_t: packed is not gemv_int4's layout for these rows (see quant_gemv.h)");
  const Int4Groups gr = int4_groups(k_len, group_size);
  const int64_t all_blocks = packed.numel() / block_bytes;
#if defined(__AVX512BF16__)
  if (n_rows == 0) return;
  const int64_t first = row_begin / kInt4BlockRows, blocks = (n_rows + kInt4BlockRows - 1) / kInt4BlockRows;
  const auto* codes = packed.data_ptr<uint8_t>();
  const bool bf16 = out.scalar_type() == at::kBFloat16;
  char* base = static_cast<char*>(out.data_ptr());
  const int64_t row_bytes = out.stride(0) * (bf16 ? 2 : 4);
  // Parallel over lines (8 values of k), each line's blocks in turn: every thread writes its
  // own rows of `out` front to back. (Block by block instead, each store landed in another row
  // of out, rows a power-of-two-ish stride apart: several times slower, from L1 set conflicts.)
  at::parallel_for(0, gr.count * gr.lines, 1, [&](int64_t begin, int64_t end) {
    const __m512i nibble = _mm512_set1_epi32(15);
    const __m512 eight = _mm512_set1_ps(8.0f);
    for (int64_t line_index = begin; line_index < end; ++line_index) {
      const int64_t g = line_index / gr.lines, o = line_index % gr.lines;
      for (int64_t b = 0; b < blocks; ++b) {
        const int valid = static_cast<int>(std::min<int64_t>(kInt4BlockRows, n_rows - b * kInt4BlockRows));
        const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1);
        const Int4Tile t = locate(codes, first + b, all_blocks, gr);
        const __m512i pairs = _mm512_loadu_si512(t.sz + g * t.sz_group_stride);
        const __m512 scale = low_bf16_to_float(pairs);
        const __m512 zero = high_bf16_to_float(pairs);
        const __m512i d = _mm512_loadu_si512(t.codes + g * t.group_stride + t.line_offset(o));
        for (int r = 0; r < 8; ++r) {  // k = G g + 8o + r: bits 4 * (r / 2) + 16 * (r % 2)
          const __m512i c = _mm512_and_si512(_mm512_srli_epi32(d, 4 * (r / 2) + 16 * (r % 2)), nibble);
          const __m512 w = _mm512_fmadd_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(c), eight), scale, zero);
          char* dst = base + (line_index * 8 + r) * row_bytes;
          if (bf16) {
            auto* p = reinterpret_cast<uint16_t*>(dst) + b * kInt4BlockRows;
            _mm256_mask_storeu_epi16(p, mask, to_bf16x16(w));
          } else {
            _mm512_mask_storeu_ps(reinterpret_cast<float*>(dst) + b * kInt4BlockRows, mask, w);
          }
        }
      }
    }
  });
#elif defined(PAGEDLLM_ISA_AVX2)
  dequantize_int4_t_avx2(out, packed, row_begin, all_blocks, gr);
#else
  (void)packed, (void)row_begin, (void)gr, (void)all_blocks;
  TORCH_CHECK(false, "dequantize_int4_t: built without AVX512-BF16 or AVX2");
#endif
}

}  // namespace pagedllm
