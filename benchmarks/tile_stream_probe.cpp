// How fast one core streams packed bf16 panels from memory through the AMX tiles, by row count
// and tile arrangement: the probe behind the AMX build's 16-column panels (benchmarks/README.md,
// "16-column panels on the tiles").
// Standalone (no torch), for a CPU with AMX-BF16 under Linux:
//
//   g++ -O2 -march=native benchmarks/tile_stream_probe.cpp -o /tmp/tile_stream_probe
//   taskset -c 0 /tmp/tile_stream_probe 16rows & taskset -c 1 /tmp/tile_stream_probe 16rows; wait
//
// Both cores at once is what a decode step does. Each run streams 8 copies of an LM-head-sized
// weight (24,576 columns x 576 k, 28 MB each, 226 MB in all: past this VM's share of its L3
// most of the time) and prints GB/s of weight read (best and mean of 8 timed passes).
// Arrangements (the x rows stay in L1; only the weight streams):
//   loads      tile loads of a 64-column panel, no products: the stream alone
//   vector     the same bytes through 512-bit vector loads
//   16rows     one 16-row x tile against a 64-column panel (tile rows 256 bytes apart; the
//              kernel below 17 rows before 16-column panels)
//   32rows     16rows, then rows 16-31 against the same panel from L2 (then the kernel at 17-63)
//   2x2        32 rows x 32 columns a k step, over 32-column panels: one pass, no L2 re-read
//   16rows2    16 rows against two adjacent 32-column panels at once (two streams)
//   16rows4    16 rows against four adjacent 16-column panels (four streams, each weight tile
//              one contiguous KB): the kernel up to 16 rows now
//   32rows4    32 rows x 2 16-column panels (2 x 2 tiles), then the next two: the kernel from
//              17 rows now
// Env HOT=1 re-reads one 64-column strip of 4 panels (in L2) instead: the tile work alone.

#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t bytes_per_row[16];
  uint8_t rows[16];
};
constexpr TileConfig kConfig = {1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

constexpr long kK = 576, kPairs = kK / 2, kXRowBytes = kK * 2;
alignas(64) float acc[32 * 64];
alignas(64) uint16_t x[32 * kK];

void prefetch(const char* p, long bytes) {
  for (long line = 0; line < bytes; line += 64) _mm_prefetch(p + line, _MM_HINT_T0);
}

// Each arrangement is spelled out as its own function, as the kernels spell theirs: a version
// sharing one 16-row and one 32-row function, the tiles' offsets and strides read from a
// table, measured 16rows4 12.3 against 16rows 11.2 and 32rows4 9.1 against 32rows 9.2 GB/s
// per core, where these functions, run right after (4 rounds each, the Xeon of
// benchmarks/README.md), measured 13.4 against 9.5 and 11.2 against 9.0: what such a probe
// reports depends on the code each arrangement gets.

// 16 rows x 64 columns of a panel whose k pair rows are 256 bytes apart.
template <bool kPrefetch>
void rows16_panel64(const char* xr, const char* b) {
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  for (long j = 0; j < kPairs; j += 16, b += 16 * 256, xr += 64) {
    if (kPrefetch) prefetch(b + 4096, 4096);
    _tile_loadd(4, xr, kXRowBytes);
    _tile_loadd(6, b, 256); _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(7, b + 64, 256); _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(6, b + 128, 256); _tile_dpbf16ps(2, 4, 6);
    _tile_loadd(7, b + 192, 256); _tile_dpbf16ps(3, 4, 7);
  }
  _tile_stored(0, acc, 256); _tile_stored(1, acc + 16, 256); _tile_stored(2, acc + 32, 256);
  _tile_stored(3, acc + 48, 256);
}

void loads_panel64(const char* b) {
  for (long j = 0; j < kPairs; j += 16, b += 16 * 256) {
    prefetch(b + 4096, 4096);
    _tile_loadd(4, x, kXRowBytes);
    _tile_loadd(6, b, 256); _tile_loadd(7, b + 64, 256); _tile_loadd(6, b + 128, 256); _tile_loadd(7, b + 192, 256);
  }
}

__m512i vector_panel64(const char* b, __m512i sink) {
  for (long j = 0; j < kPairs; j += 16, b += 16 * 256) {
    prefetch(b + 4096, 4096);
    for (long line = 0; line < 4096; line += 64) sink = _mm512_or_si512(sink, _mm512_load_si512(b + line));
  }
  return sink;
}

// 32 rows x 32 columns of a panel whose k pair rows are 128 bytes apart: 2 x 2 tiles.
void rows32_panel32(const char* b) {
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  const char* xr = reinterpret_cast<const char*>(x);
  for (long j = 0; j < kPairs; j += 16, b += 16 * 128, xr += 64) {
    prefetch(b + 4096, 2048);
    _tile_loadd(6, b, 128); _tile_loadd(7, b + 64, 128);
    _tile_loadd(4, xr, kXRowBytes); _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(5, xr + 16 * kXRowBytes, kXRowBytes); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, acc, 128); _tile_stored(1, acc + 16, 128); _tile_stored(2, acc + 512, 128);
  _tile_stored(3, acc + 528, 128);
}

// 16 rows against two 32-column panels (k pair rows 128 bytes apart) side by side.
void rows16_two_panels32(const char* b0, const char* b1) {
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  const char* xr = reinterpret_cast<const char*>(x);
  for (long j = 0; j < kPairs; j += 16, b0 += 16 * 128, b1 += 16 * 128, xr += 64) {
    prefetch(b0 + 2048, 2048); prefetch(b1 + 2048, 2048);
    _tile_loadd(4, xr, kXRowBytes);
    _tile_loadd(6, b0, 128); _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(7, b0 + 64, 128); _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(6, b1, 128); _tile_dpbf16ps(2, 4, 6);
    _tile_loadd(7, b1 + 64, 128); _tile_dpbf16ps(3, 4, 7);
  }
  _tile_stored(0, acc, 256); _tile_stored(1, acc + 16, 256); _tile_stored(2, acc + 32, 256);
  _tile_stored(3, acc + 48, 256);
}

// 16 rows against four 16-column panels (k pair rows 64 bytes apart) side by side.
void rows16_four_panels16(const char* b) {
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  const char* xr = reinterpret_cast<const char*>(x);
  constexpr long kPanelBytes = 16 * kK * 2;
  for (long j = 0; j < kPairs; j += 16, b += 16 * 64, xr += 64) {
    for (long s = 0; s < 4; ++s) prefetch(b + s * kPanelBytes + 2048, 1024);
    _tile_loadd(4, xr, kXRowBytes);
    _tile_loadd(6, b, 64); _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(7, b + kPanelBytes, 64); _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(6, b + 2 * kPanelBytes, 64); _tile_dpbf16ps(2, 4, 6);
    _tile_loadd(7, b + 3 * kPanelBytes, 64); _tile_dpbf16ps(3, 4, 7);
  }
  _tile_stored(0, acc, 256); _tile_stored(1, acc + 16, 256); _tile_stored(2, acc + 32, 256);
  _tile_stored(3, acc + 48, 256);
}

// 32 rows against two 16-column panels: 2 x 2 tiles.
void rows32_two_panels16(const char* b) {
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  const char* xr = reinterpret_cast<const char*>(x);
  constexpr long kPanelBytes = 16 * kK * 2;
  for (long j = 0; j < kPairs; j += 16, b += 16 * 64, xr += 64) {
    prefetch(b + 2048, 1024); prefetch(b + kPanelBytes + 2048, 1024);
    _tile_loadd(6, b, 64); _tile_loadd(7, b + kPanelBytes, 64);
    _tile_loadd(4, xr, kXRowBytes); _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(5, xr + 16 * kXRowBytes, kXRowBytes); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, acc, 128); _tile_stored(1, acc + 16, 128); _tile_stored(2, acc + 512, 128);
  _tile_stored(3, acc + 528, 128);
}

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

}  // namespace

int main(int argc, char** argv) {
  const char* const kModes[] = {"loads", "vector", "16rows", "32rows", "2x2", "16rows2", "16rows4", "32rows4"};
  constexpr int kNumModes = sizeof(kModes) / sizeof(kModes[0]);
  const std::string name = argc > 1 ? argv[1] : "";
  int mode = -1;
  for (int i = 0; i < kNumModes; ++i)
    if (name == kModes[i]) mode = i;
  if (mode < 0) {
    std::fprintf(stderr, "usage: %s loads|vector|16rows|32rows|2x2|16rows2|16rows4|32rows4 (env HOT=1: from L2)\n", argv[0]);
    return 2;
  }
  if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) != 0) {
    std::fprintf(stderr, "Linux did not grant the AMX tile state\n");
    return 1;
  }
  _tile_loadconfig(&kConfig);
  const bool hot = std::getenv("HOT") != nullptr;
  const long columns = hot ? 256 : 24576, copies = hot ? 1 : 8, passes = hot ? 4000 : 16;
  const size_t bytes = columns * kK * 2;
  char* weights = static_cast<char*>(std::aligned_alloc(4096, bytes * copies));
  std::memset(weights, 1, bytes * copies);
  std::memset(x, 0, sizeof x);
  __m512i sink = _mm512_setzero_si512();
  double best = 1e30, total = 0;
  long timed = 0;
  for (long pass = 0; pass < passes; ++pass) {
    const char* w = weights + (pass % copies) * bytes;
    const double start = now();
    const char* xr = reinterpret_cast<const char*>(x);
    for (long p = 0; p < columns / 64; ++p) {
      const char* panel64 = w + p * 64 * kK * 2;  // as 64-column panels, or as two 32-column ones
      switch (mode) {
        case 0: loads_panel64(panel64); break;
        case 1: sink = vector_panel64(panel64, sink); break;
        case 2: rows16_panel64<true>(xr, panel64); break;
        case 3:
          rows16_panel64<true>(xr, panel64);
          rows16_panel64<false>(xr + 16 * kXRowBytes, panel64);
          break;
        case 4:
          rows32_panel32(panel64);
          rows32_panel32(panel64 + 32 * kK * 2);
          break;
        case 5: rows16_two_panels32(panel64, panel64 + 32 * kK * 2); break;
        case 6: rows16_four_panels16(panel64); break;
        default:
          rows32_two_panels16(panel64);
          rows32_two_panels16(panel64 + 32 * kK * 2);
          break;
      }
    }
    const double elapsed = now() - start;
    if (pass >= copies) best = elapsed < best ? elapsed : best, total += elapsed, ++timed;
  }
  _mm512_store_si512(acc, sink);
  _tile_release();
  std::printf("%s%s: best %.1f GB/s, mean %.1f GB/s\n", kModes[mode], hot ? " (hot)" : "", bytes / best / 1e9,
              bytes * timed / total / 1e9);
  return 0;
}
