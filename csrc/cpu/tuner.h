#pragma once
// Which CPU kernel runs a convolution pass, chosen by measurement on the machine itself
// (no constant tuned to one CPU model decides it).
//
// The first time a shape is seen (a key names the pass, the geometry, the thread count and
// the instruction set), every candidate that can run it is timed on the call's own tensors
// and the fastest is remembered for the rest of the process:
//
//   round 1, 2: run each candidate once, keep its best time (the first round also pays for
//               cold caches and for choices made inside a candidate);
//   then, unless the last candidate run was the fastest, run the fastest once more.
//
// A burst of load from elsewhere (another process, a neighbour on a shared VM) during those
// rounds can make the fastest candidate look slow. So the choice is checked: the winner's next
// few calls are timed, and if one runs clearly faster than the winner did while being measured,
// the measuring was disturbed: that call runs the other candidates once more and keeps the
// fastest over both measurements, for good. Where the winner ran as measured, the last checked
// call does the same (a second look, a few calls later: a burst over both rounds of a losing
// candidate leaves the winner's time as it was, and once made LeNet's second layer run the GEMM
// at 3x the direct kernel's time). A choice is measured again exactly once.
//
// So a call that tunes costs at most two calls per candidate and one more, one later call one
// more per candidate (bounded: no repeats until the times settle); each returns the winner's
// result, and every call after the checks (the winner alone) repeats it bitwise. Candidates
// compute the same values (the tests check every path), up to float rounding.
//
// CUCONV_CPU_TUNE=0 turns measuring off (conv2d.cpp's static rules decide; for runs that must
// not depend on timing). CUCONV_LOG=1 prints each decision, with the candidates' times and the
// tuning's cost, to stderr. The table is exposed as cuconv._C.cpu_tuning() / cpu_tuning_set(),
// and cuconv/tuning.py keeps it on disk (CUCONV_TUNE_CACHE) keyed by CPU model and version.

#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace cuconv {

// The names a choice records, one per kernel family (the candidates of conv2d.cpp). All of them
// together, kernel_names(), also name the disk cache's section (cuconv/tuning.py): choices made
// by a build with other candidates never tried the new ones, so they are measured again.
enum class KernelName {
  kDirect, kGemm, kWinograd, kPixel, kNhwc, kNchw, kNhwcWinograd, kByGroup, kFloat32, kDirectByGroup,
  kDirectStreamed, kCount
};
const char* kernel_name(KernelName name);
std::string kernel_names();  // space-separated

struct Candidate {
  const char* name;           // recorded in the table (and the disk cache) by this name
  std::function<void()> run;  // computes the call's result in full
};

// False when CUCONV_CPU_TUNE=0 (any value but 0 or 1 is an error).
bool tuning_enabled();

// Runs the candidate recorded for `key`, or measures them all first (above); returns the
// index of the one whose result the call holds.
size_t run_tuned(const std::string& key, const std::vector<Candidate>& candidates);

// The table: key -> winner's name; a set entry is used as if measured (an unknown name makes
// that key tune again).
std::vector<std::pair<std::string, std::string>> tuning_table();
void set_tuning(const std::string& key, const std::string& winner);
void clear_tuning();

// How many choices are still being checked (their winner's next calls timed, a second look
// to come): a benchmark of steady speed runs its shapes until none is.
int unsettled_choices();

}  // namespace cuconv
