// gemv_int8 on the Intel AMX tiles, for batches (more than kInt8AmxMinRows rows of x): the codes
// of each super-block of the int8 weight (64 output rows) are converted into a bf16 panel of
// the packed bf16 layout in a per-thread buffer (L1/L2), which every row of x then multiplies
// on the tiles (gemm_bf16_amx.cpp's amx_panel_product); each output is scaled by its row's
// scale once at the end. Compiled where the build targets AMX-BF16.
//
// Why: the vector kernel of int8_gemv.cpp runs out of arithmetic from a dozen rows on, and the
// alternative (dequantize the whole weight, then oneDNN) writes and reads the weight in bf16 in
// memory on every call. Here the weight crosses memory once, in int8. The products are the
// vector kernel's: codes are exact in bf16 (|code| <= 127), products exact in float32, sums in
// float32 (in the tile unit's order), the scale applied once, one rounding to bf16.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "gemm_bf16_impl.h"
#include "int8_gemv_impl.h"
#include "vec.h"

#if defined(PAGEDLLM_HAVE_AMX_BF16)

namespace pagedllm {
namespace int8_detail {
namespace {

constexpr int64_t kPanelColumns = kInt8BlockRows * kInt8SuperBlocks;  // 64, as a bf16 panel

// panel[j][16b + r] = bf16 pair (code[r][2j], code[r][2j + 1]) of the super-block's block b
// (a pair's 32 bytes of codes, rows 0-7 then 8-15 with the two values of each side by side,
// become the 64 bytes of panel row j for that block's 16 columns); scales[16b + r] = its scale.
void codes_to_panel(const uint8_t* packed, int64_t first_block, int64_t blocks_here, int64_t all_blocks,
                    int64_t groups, uint32_t* panel, float* scales) {
  const int64_t width = blocks_here * kInt8BlockRows;
  for (int64_t b = 0; b < blocks_here; ++b) {
    const Int8Tile t = locate(packed, first_block + b, all_blocks, groups);
    std::memcpy(scales + b * kInt8BlockRows, t.scales, kScaleBytes);
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t o = 0; o < 4; ++o) {
        const uint8_t* line = t.codes + g * t.group_stride + o * t.line_stride;
        for (int64_t p = 0; p < 4; ++p) {
          const uint8_t* pair = line + p * kPairBytes;
          const __m512 low =
              _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pair))));
          const __m512 high =
              _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pair + 16))));
          const int64_t j = g * 16 + o * 4 + p;
          _mm512_storeu_si512(panel + j * width + b * kInt8BlockRows, (__m512i)_mm512_cvtne2ps_pbh(high, low));
        }
      }
  }
}

}  // namespace

bool gemv_int8_amx(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed) {
  const int64_t n_len = out.size(1), k_len = x.size(1);
  if (n_len % kInt8BlockRows != 0 || !detail::amx_tiles_granted()) return false;
  const detail::AmxRowsOfX rows_of_x(x);
  const int64_t rows = x.size(0), pairs = k_len / 2, groups = k_len / kInt8GroupSize;
  const int64_t blocks = n_len / kInt8BlockRows;
  const int64_t super_blocks = (blocks + kInt8SuperBlocks - 1) / kInt8SuperBlocks;
  const auto* codes = packed.data_ptr<uint8_t>();
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t out_stride = out.stride(0);
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), super_blocks));
  at::parallel_for(0, super_blocks, (super_blocks + threads - 1) / threads, [&](int64_t begin, int64_t end) {
    // One panel per thread, reused: 64 columns x K bf16 (72 KB for K = 576).
    thread_local std::vector<uint32_t> panel;
    panel.resize(kPanelColumns * pairs);
    float scales[kPanelColumns];
    detail::amx_begin_thread();
    for (int64_t s = begin; s < end; ++s) {
      const int64_t first = s * kInt8SuperBlocks, here = std::min(kInt8SuperBlocks, blocks - first);
      codes_to_panel(codes, first, here, blocks, groups, panel.data(), scales);
      detail::amx_panel_product(rows_of_x, 0, rows, panel.data(), here * kInt8BlockRows * 4, here,
                                op + first * kInt8BlockRows, out_stride, scales);
    }
    detail::amx_end_thread();
  });
  return true;
}

}  // namespace int8_detail
}  // namespace pagedllm

#endif  // PAGEDLLM_HAVE_AMX_BF16
