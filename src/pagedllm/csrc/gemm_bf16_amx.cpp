// The Intel AMX kernel of gemm_packed_bf16: the packed panels of gemm_bf16.cpp multiplied on the
// tile unit (tdpbf16ps), compiled only where the build targets AMX-BF16 (-march=native on such
// a CPU) and used only once Linux has granted this process the tile state.
//
// Why tiles: from a few dozen rows on, the vdpbf16ps register tiles of gemm_bf16_avx512.cpp are
// bound by arithmetic while the tile unit does 16 x 16 x 32 products per instruction. oneDNN
// reaches the tiles too, but on weights as loaded it reorders them on every call, which at
// 16-256 rows costs more than the product itself; the packed panels are already the tile
// unit's B operand layout. In this build a panel is 16 columns wide (gemm_bf16_impl.h), so 16 k
// pairs of it, one weight tile, are one contiguous KB, and a block takes up to 4 adjacent
// panels: 4 streams through memory, each tile load one contiguous read. A block streamed 64-
// column panels (tile rows 256 bytes apart) 13-21% slower per core at 16 and 32 rows
// (benchmarks/README.md, "16-column panels on the tiles").
//
// Up to 16 rows in a block (tile_block): tiles 0-3 accumulate 16 rows x 4 panels (16 x 16
// float32 each), 4 and 5 take turns holding 16 rows of x (32 k), 6 and 7 the panels' tiles.
// From 17 rows (tile_block_2x2): 32 rows x 2 panels, 0-3 accumulating, 4-5 x, 6-7 weights; a
// block's panel pairs are distinct memory, so each is streamed once. Later row blocks of the
// same panels (from 33 rows) find them in L2.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "gemm_bf16_impl.h"
#include "vec.h"

#if defined(PAGEDLLM_HAVE_AMX_BF16)

namespace pagedllm {
namespace detail {
namespace {

// Linux keeps the 8 KB tile data state off until a process asks for it (arch_prctl
// ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA); without it the first tile instruction faults.
constexpr long kArchRequestPermission = 0x1023;
constexpr long kFeatureTileData = 18;

bool tile_permission() {
  static const bool granted = syscall(SYS_arch_prctl, kArchRequestPermission, kFeatureTileData) == 0;
  return granted;
}

// Tiles 0-7 16 rows of 64 bytes, 8-15 unused.
constexpr AmxTileConfig kTileConfig = {1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

void configure_tiles() { _tile_loadconfig(&kTileConfig); }

constexpr int64_t kTileRows = 16;
constexpr int64_t kPairsPerTile = 16;  // k pairs per A/B tile (32 k)
constexpr int64_t kGroupPanels = 4;    // 16-column panels a block takes at once

// Software prefetch per panel stream: each k step reads 1 KB of every panel in the block, and
// fetches the KB two steps ahead into L1.
constexpr int64_t kStepBytes = kPairsPerTile * kVec * 4;  // one weight tile: 16 k pairs x 16 columns
constexpr int64_t kPrefetchSteps = 2;

inline void prefetch_ahead(const char* b) {
  for (int64_t line = 0; line < kStepBytes; line += 64)
    _mm_prefetch(b + kPrefetchSteps * kStepBytes + line, _MM_HINT_T0);
}

// acc[16 x kNV*16] (rows 64 floats apart) = x[16 rows, all k] @ kNV adjacent panels, the first
// at `b`, `panel_bytes` apart. kPrefetch for a block that streams its panels from memory.
template <int kNV, bool kPrefetch>
inline void tile_block(const uint16_t* x, int64_t x_row_bytes, const char* b, int64_t panel_bytes, int64_t pairs,
                       float* acc) {
  _tile_zero(0);
  if constexpr (kNV > 1) _tile_zero(1);
  if constexpr (kNV > 2) _tile_zero(2);
  if constexpr (kNV > 3) _tile_zero(3);
  // x tiles alternate between 4 and 5 and weight tiles between 6 and 7, so that a load never
  // waits on the product issued just before it (tiles are not renamed). The tile intrinsics
  // take tile numbers as literals, hence a macro.
#define PAGEDLLM_AMX_STEP(A)                                    \
  do {                                                          \
    if constexpr (kPrefetch) {                                  \
      prefetch_ahead(b);                                        \
      if constexpr (kNV > 1) prefetch_ahead(b + panel_bytes);   \
      if constexpr (kNV > 2) prefetch_ahead(b + 2 * panel_bytes); \
      if constexpr (kNV > 3) prefetch_ahead(b + 3 * panel_bytes); \
    }                                                           \
    _tile_loadd(A, x + 2 * j, x_row_bytes);                     \
    _tile_loadd(6, b, 64);                                      \
    _tile_dpbf16ps(0, A, 6);                                    \
    if constexpr (kNV > 1) {                                    \
      _tile_loadd(7, b + panel_bytes, 64);                      \
      _tile_dpbf16ps(1, A, 7);                                  \
    }                                                           \
    if constexpr (kNV > 2) {                                    \
      _tile_loadd(6, b + 2 * panel_bytes, 64);                  \
      _tile_dpbf16ps(2, A, 6);                                  \
    }                                                           \
    if constexpr (kNV > 3) {                                    \
      _tile_loadd(7, b + 3 * panel_bytes, 64);                  \
      _tile_dpbf16ps(3, A, 7);                                  \
    }                                                           \
    j += kPairsPerTile;                                         \
    b += kStepBytes;                                            \
  } while (0)
  int64_t j = 0;
  while (j + 2 * kPairsPerTile <= pairs) {
    PAGEDLLM_AMX_STEP(4);
    PAGEDLLM_AMX_STEP(5);
  }
  if (j < pairs) PAGEDLLM_AMX_STEP(4);
#undef PAGEDLLM_AMX_STEP
  constexpr int64_t acc_row_bytes = 4 * kVec * 4;  // acc rows are 64 floats apart
  _tile_stored(0, acc, acc_row_bytes);
  if constexpr (kNV > 1) _tile_stored(1, acc + kVec, acc_row_bytes);
  if constexpr (kNV > 2) _tile_stored(2, acc + 2 * kVec, acc_row_bytes);
  if constexpr (kNV > 3) _tile_stored(3, acc + 3 * kVec, acc_row_bytes);
}

// acc[32 x kNT*16] (rows 32 floats apart) = x[kMT*16 rows] @ kNT adjacent panels (at `b`,
// `panel_bytes` apart): 2 x 2 tiles, each x tile and each weight tile used twice, which halves
// the tile loads per product against tile_block. kPrefetch for a block that streams its panels
// from memory (the first row block of a group).
template <int kMT, int kNT, bool kPrefetch>
inline void tile_block_2x2(const uint16_t* x, int64_t x_row_bytes, const char* b, int64_t panel_bytes,
                           int64_t pairs, float* acc) {
  _tile_zero(0);
  if constexpr (kNT > 1) _tile_zero(1);
  if constexpr (kMT > 1) _tile_zero(2);
  if constexpr (kMT > 1 && kNT > 1) _tile_zero(3);
  const char* xb = reinterpret_cast<const char*>(x);
  for (int64_t j = 0; j < pairs; j += kPairsPerTile, b += kStepBytes, xb += 64) {
    if constexpr (kPrefetch) {
      prefetch_ahead(b);
      if constexpr (kNT > 1) prefetch_ahead(b + panel_bytes);
    }
    _tile_loadd(6, b, 64);
    if constexpr (kNT > 1) _tile_loadd(7, b + panel_bytes, 64);
    _tile_loadd(4, xb, x_row_bytes);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (kNT > 1) _tile_dpbf16ps(1, 4, 7);
    if constexpr (kMT > 1) {
      _tile_loadd(5, xb + kTileRows * x_row_bytes, x_row_bytes);
      _tile_dpbf16ps(2, 5, 6);
      if constexpr (kNT > 1) _tile_dpbf16ps(3, 5, 7);
    }
  }
  constexpr int64_t acc_row_bytes = 2 * kVec * 4;
  _tile_stored(0, acc, acc_row_bytes);
  if constexpr (kNT > 1) _tile_stored(1, acc + kVec, acc_row_bytes);
  if constexpr (kMT > 1) _tile_stored(2, acc + kTileRows * 2 * kVec, acc_row_bytes);
  if constexpr (kMT > 1 && kNT > 1) _tile_stored(3, acc + kTileRows * 2 * kVec + kVec, acc_row_bytes);
}

// out[r, 16c + i] = bf16(acc[r * acc_stride + 16c + i]) for r < rows, c < slices.
inline void store_rows(const float* acc, int64_t acc_stride, int64_t rows, int64_t slices, uint16_t* out,
                       int64_t out_stride) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < slices; ++c)
      store_bf16x16(out + r * out_stride + c * kVec, _mm512_load_ps(acc + r * acc_stride + c * kVec));
}

}  // namespace

AmxRowsOfX::AmxRowsOfX(const at::Tensor& x)
    : data(reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>())),
      stride(x.stride(0)),
      rows(x.size(0)),
      k_len(x.size(1)),
      full_rows(rows / kBlockRows * kBlockRows) {
  const int64_t tail_rows = rows - full_rows;
  if (tail_rows == 0) return;
  // One buffer per calling thread, grown but never shrunk, rather than a fresh zeroed 32-row
  // allocation per call (512 KB for the 1B down projection; no measurable time either way).
  // Only the rows the kernels read are written: 16 when one x tile covers the tail, else 32.
  thread_local std::vector<uint16_t> buffer;
  const int64_t padded_rows = tail_rows > kTileRows ? kBlockRows : kTileRows;
  if (static_cast<int64_t>(buffer.size()) < kBlockRows * k_len) buffer.resize(kBlockRows * k_len);
  for (int64_t m = 0; m < tail_rows; ++m)
    std::memcpy(buffer.data() + m * k_len, data + (full_rows + m) * stride, k_len * sizeof(uint16_t));
  std::memset(buffer.data() + tail_rows * k_len, 0, (padded_rows - tail_rows) * k_len * sizeof(uint16_t));
  tail = buffer.data();
}

bool amx_tiles_granted() { return tile_permission(); }

void amx_begin_thread() { configure_tiles(); }

void amx_end_thread() { _tile_release(); }

namespace {

// out[m, 16c + i] (m in [m_begin, m_end), c < count <= 4) = x[m] @ column i of panel c of a
// group of adjacent 16-column panels (the first at `group`, `panel_bytes` apart), rounded once
// to bf16. m_begin % 32 == 0.
void amx_panel_product(const AmxRowsOfX& x, int64_t m_begin, int64_t m_end, const char* group, int64_t panel_bytes,
                       int64_t count, uint16_t* out, int64_t out_stride) {
  alignas(64) float acc[kBlockRows * kGroupPanels * kVec];
  const int64_t pairs = x.k_len / 2;
  for (int64_t m = m_begin; m < m_end; m += kBlockRows) {
    const bool full = m < x.full_rows;
    const uint16_t* xr = full ? x.data + m * x.stride : x.tail;
    const int64_t x_row_bytes = (full ? x.stride : x.k_len) * 2;
    const int64_t valid = std::min(kBlockRows, x.rows - m);
    uint16_t* o = out + m * out_stride;
    const bool streams = m == m_begin;  // later row blocks find the group in L2
    if (valid <= kTileRows) {  // one x tile against all panels of the group
      const auto block = [&](auto prefetch) {
        constexpr bool kPrefetch = decltype(prefetch)::value;
        switch (count) {
          case 4: tile_block<4, kPrefetch>(xr, x_row_bytes, group, panel_bytes, pairs, acc); break;
          case 3: tile_block<3, kPrefetch>(xr, x_row_bytes, group, panel_bytes, pairs, acc); break;
          case 2: tile_block<2, kPrefetch>(xr, x_row_bytes, group, panel_bytes, pairs, acc); break;
          default: tile_block<1, kPrefetch>(xr, x_row_bytes, group, panel_bytes, pairs, acc); break;
        }
      };
      if (streams)
        block(std::true_type{});
      else
        block(std::false_type{});
      store_rows(acc, kGroupPanels * kVec, valid, count, o, out_stride);
      continue;
    }
    // 32 rows of x (in L1) against the group's panels two at a time, each pair its own memory.
    for (int64_t c = 0; c < count; c += 2) {
      const char* pair = group + c * panel_bytes;
      const auto block = [&](auto prefetch) {
        constexpr bool kPrefetch = decltype(prefetch)::value;
        if (count - c >= 2)
          tile_block_2x2<2, 2, kPrefetch>(xr, x_row_bytes, pair, panel_bytes, pairs, acc);
        else
          tile_block_2x2<2, 1, kPrefetch>(xr, x_row_bytes, pair, panel_bytes, pairs, acc);
      };
      if (streams)
        block(std::true_type{});
      else
        block(std::false_type{});
      store_rows(acc, 2 * kVec, valid, std::min<int64_t>(2, count - c), o + c * kVec, out_stride);
    }
  }
}

}  // namespace

bool gemm_packed_bf16_amx(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed) {
  static_assert(kPanel == kVec, "the tile kernel reads 16-column panels (gemm_bf16_impl.h)");
  if (!tile_permission()) return false;
  const AmxRowsOfX rows_of_x(x);
  const int64_t rows = x.size(0), n_len = packed.size(0), pairs = x.size(1) / 2;
  const char* wp = reinterpret_cast<const char*>(packed.data_ptr<at::BFloat16>());
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t out_stride = out.stride(0);
  const int64_t panels = n_len / kVec, panel_bytes = pairs * kVec * 4;
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), panels));
  const int64_t grain = (panels + threads - 1) / threads;
  at::parallel_for(0, panels, grain, [&](int64_t begin, int64_t end) {
    configure_tiles();
    for (int64_t m0 = 0; m0 < rows; m0 += kRowChunk) {
      const int64_t chunk_end = std::min(rows, m0 + kRowChunk);
      for (int64_t p = begin; p < end; p += kGroupPanels) {
        const int64_t count = std::min(kGroupPanels, end - p);
        amx_panel_product(rows_of_x, m0, chunk_end, wp + p * panel_bytes, panel_bytes, count, op + p * kVec,
                          out_stride);
      }
    }
    _tile_release();
  });
  return true;
}

}  // namespace detail
}  // namespace pagedllm

#endif  // PAGEDLLM_HAVE_AMX_BF16
