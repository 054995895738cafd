// The bias gradient's column sums over blocks of rows (bias_gradient.cpp, add_rows_by_rows),
// included by simd_avx512.cpp and simd_avx2.cpp after their `#pragma GCC target`, inside their
// anonymous namespaces; Isa only names the file's instantiation.
//
// For rows of kColumnSumsWidth floats, `stride` apart, `blocks` blocks of kColumnSumsRows rows:
//
//   sums[j] += (double)(x[0][j] + x[1][j] + ... + x[7][j])   (each block's rows, added in order)
//
// the same operations, in the same order, as add_rows' portable loop, so the same bits. The
// loads go row by row, in address order: the portable loop, vectorised along the columns, reads
// column vectors down the block (each a row apart), an order the hardware prefetchers lose. The
// block's sums stay in registers; an empty asm that takes and gives each after every add keeps
// the compiler from regrouping the adds by column again. Vectors of 8 floats on both ISAs: with
// AVX-512's 16 the kernel read no faster than the portable loop (9.7 against 8.4 ms, one thread,
// 128 x 64 x 56 x 56, cause not found), with 8 at 2.2x its speed (benchmarks/NOTES.md,
// forty-first session).

template <class Isa>
void column_sums(const float* x, int64_t blocks, int64_t stride, double* sums) {
  typedef float V __attribute__((vector_size(32)));
  constexpr int L = 8, NV = kColumnSumsWidth / L;
  for (int64_t b = 0; b < blocks; ++b) {
    const float* row = x + b * kColumnSumsRows * stride;
    V s[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) __builtin_memcpy(&s[v], row + v * L, sizeof(V));
    for (int64_t i = 1; i < kColumnSumsRows; ++i) {
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        V t;
        __builtin_memcpy(&t, row + i * stride + v * L, sizeof(V));
        s[v] += t;
        __asm__ volatile("" : "+v"(s[v]));
      }
    }
    float block[kColumnSumsWidth];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) __builtin_memcpy(block + v * L, &s[v], sizeof(V));
    for (int j = 0; j < kColumnSumsWidth; ++j) sums[j] += static_cast<double>(block[j]);
  }
}
