// How fast this machine's cores can read memory at all: the ceiling a memory-bound decode step
// (one row of x against every weight) can reach, whatever the engine. Threads stream a 1 GiB
// buffer on huge pages with 512-bit loads and no arithmetic, in several access patterns, the
// patterns alternated round by round so that a read rate moving minute to minute moves them
// alike; prints GB/s (median, best, worst over the rounds) per pattern.
// Standalone (no torch), for an x86-64 CPU with AVX-512 under Linux:
//
//   g++ -O2 -march=native -fopenmp benchmarks/read_ceiling.cpp -o /tmp/read_ceiling
//   /tmp/read_ceiling [rounds=7] [threads=2]
//
// Patterns: each thread reads its own contiguous share of the buffer
//   seq          front to back, 256 bytes a step
//   seq pf<D>    the same with a software prefetch D bytes ahead (T0 hint; nta: non-temporal)
//   <S> streams  the share cut into S parts read in turn, 256 bytes of each (S streams a thread)
// or all threads take turns through the buffer in chunks of C bytes (interleave <C>).

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

constexpr size_t kBytes = size_t(1) << 30;

// Reads [p, p + n) as kStreams sub-ranges in turn, 256 bytes of each at a time, prefetching
// kAhead bytes ahead in each (0: none).
template <int kStreams, int kAhead, bool kNonTemporal>
__attribute__((noinline)) __m512i read_share(const char* p, size_t n) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  const size_t part = n / kStreams;
  for (size_t off = 0; off < part; off += 256) {
    for (int s = 0; s < kStreams; ++s) {
      const char* q = p + s * part + off;
      if (kAhead > 0)
        for (int line = 0; line < 4; ++line)
          _mm_prefetch(q + kAhead + 64 * line, kNonTemporal ? _MM_HINT_NTA : _MM_HINT_T0);
      a0 = _mm512_xor_si512(a0, _mm512_load_si512(q));
      a1 = _mm512_xor_si512(a1, _mm512_load_si512(q + 64));
      a2 = _mm512_xor_si512(a2, _mm512_load_si512(q + 128));
      a3 = _mm512_xor_si512(a3, _mm512_load_si512(q + 192));
    }
  }
  return _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3));
}

using ReadFn = __m512i (*)(const char*, size_t);

struct Pattern {
  const char* name;
  ReadFn read;
  size_t interleave;  // 0: a contiguous share per thread; else chunks of this many bytes in turn
};

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 7;
  const int threads = argc > 2 ? std::atoi(argv[2]) : 2;
  char* buffer = static_cast<char*>(mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (buffer == MAP_FAILED) {
    std::perror("mmap");
    return 1;
  }
  madvise(buffer, kBytes, MADV_HUGEPAGE);
  std::memset(buffer, 1, kBytes);
  const std::vector<Pattern> patterns = {
      {"seq", &read_share<1, 0, false>, 0},
      {"seq pf512", &read_share<1, 512, false>, 0},
      {"seq pf1k", &read_share<1, 1024, false>, 0},
      {"seq pf4k", &read_share<1, 4096, false>, 0},
      {"seq nta1k", &read_share<1, 1024, true>, 0},
      {"2 streams", &read_share<2, 0, false>, 0},
      {"4 streams", &read_share<4, 0, false>, 0},
      {"8 streams", &read_share<8, 0, false>, 0},
      {"interleave 64k", &read_share<1, 0, false>, 65536},
      {"interleave 4k", &read_share<1, 0, false>, 4096},
  };
  std::vector<std::vector<double>> rates(patterns.size());
  volatile int64_t sink = 0;
  for (int r = 0; r < rounds; ++r) {
    for (size_t i = 0; i < patterns.size(); ++i) {
      const Pattern& pattern = patterns[i];
      const auto start = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
      {
        const int t = omp_get_thread_num();
        __m512i acc = _mm512_setzero_si512();
        if (pattern.interleave == 0) {
          acc = pattern.read(buffer + t * (kBytes / threads), kBytes / threads);
        } else {
          for (size_t c = t * pattern.interleave; c < kBytes; c += threads * pattern.interleave)
            acc = _mm512_xor_si512(acc, pattern.read(buffer + c, pattern.interleave));
        }
        sink += _mm512_reduce_add_epi64(acc);
      }
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      rates[i].push_back(kBytes / seconds / 1e9);
    }
  }
  std::printf("%d threads, %d rounds, 1 GiB each pass\n", threads, rounds);
  for (size_t i = 0; i < patterns.size(); ++i) {
    std::vector<double> v = rates[i];
    std::sort(v.begin(), v.end());
    std::printf("%-16s median %5.1f  best %5.1f  worst %5.1f GB/s\n", patterns[i].name, v[v.size() / 2], v.back(),
                v.front());
  }
  return 0;
}
