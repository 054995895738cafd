// bfloat16 bits to and from a register of floats, written once for every vector ISA: included
// by simd_avx512.cpp and simd_avx2.cpp after their `#pragma GCC target`, and by depthwise.cpp
// for the portable build, inside their anonymous namespaces, before the tile headers that use
// them (direct_tile.h, depthwise_tile.h). As those: no #include here.
//
// Isa provides plain GCC vector types of one register: Floats (kLanes floats), Ints (as many
// int32) and Shorts (as many int16, the bfloat16 bits); and widen_shorts(Shorts) -> Ints (sign
// extension) and narrow_ints(Ints) -> Shorts (for lanes within int16's range), each the ISA's one
// conversion instruction where it has one.

// Float sums rounded to bfloat16 (their bits): to nearest with ties to even, NaN as 0x7fc0 (torch's
// rounding of float to bfloat16, bit for bit), one register's lanes at a time.
template <class Isa>
inline typename Isa::Shorts round_to_bfloat16(typename Isa::Floats sums) {
  using Ints = typename Isa::Ints;  // (signed: the shifts' sign bits never reach the 16 bits kept)
  const Ints bits = (Ints)sums;
  const Ints is_nan = (bits & 0x7fffffff) > 0x7f800000;  // all ones where NaN
  const Ints rounded = (bits + 0x7fff + ((bits >> 16) & 1)) >> 16;
  return Isa::narrow_ints((rounded & ~is_nan) | (0x7fc0 & is_nan));  // (each lane in [-32768, 32767])
}

// bfloat16 bits widened to their floats (exact: a bfloat16 is a float's top half; the sign
// extension of each 16-bit lane is shifted out).
template <class Isa>
inline typename Isa::Floats widen_bfloat16(typename Isa::Shorts halves) {
  return (typename Isa::Floats)(Isa::widen_shorts(halves) << 16);
}
