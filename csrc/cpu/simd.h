#pragma once
// Whether cuconv's x86 vector code is compiled: the register tiles in simd_avx512.cpp and
// simd_avx2.cpp (`#pragma GCC target` regions) and the per-ISA clones of the pooling
// kernels (`target_clones` on templates). Both need GCC on x86-64: Clang ignores the
// pragma and rejects target_clones on templates, and other compilers know neither.
// Elsewhere the portable kernels run.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CUCONV_X86_SIMD 1
#else
#define CUCONV_X86_SIMD 0
#endif
