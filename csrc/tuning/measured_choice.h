#pragma once
// Which kernel runs a convolution pass, chosen by measurement on the machine itself (no constant
// tuned to one CPU or GPU model decides it). Shared by the CPU kernels (cpu/tuner.h names their
// candidates) and the CUDA ones (cuda/conv2d.cu); each compiled module keeps a table of its own.
//
// The first time a shape is seen (a key names the pass, the geometry, the dtype and whatever
// else the speed depends on: thread count and instruction set, or the GPU), every candidate
// that can run it is timed on the call's own tensors and the fastest is remembered for the rest
// of the process:
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
// at 3x the direct kernel's time on a CPU). A choice is measured again exactly once.
//
// A candidate that fails while measured (out of memory for its own buffers, a launch limit only
// it reaches) gets an infinite time and the others are chosen among; the call fails only when
// every candidate does, with the first error.
//
// So a call that tunes costs at most two calls per candidate and one more, one later call one
// more per candidate (bounded: no repeats until the times settle); each returns the winner's
// result, and every call after the checks (the winner alone) repeats it bitwise. Candidates
// compute the same values (the tests check every path), up to float rounding.

#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace cuconv {

struct Candidate {
  const char* name;           // recorded in the table (and the CPU's disk cache) by this name
  std::function<void()> run;  // computes the call's result in full
};

// Runs the candidate recorded for `key`, or measures them all first (above); returns the
// index of the one whose result the call holds. CUCONV_LOG=1 prints each decision to stderr,
// with the candidates' times. `settle`, where given, runs before each timed
// run and after it: the CUDA kernels wait there for their stream, so that a time is the
// kernels' own, not that of their launch or of work queued before them.
size_t run_tuned(const std::string& key, const std::vector<Candidate>& candidates,
                 const std::function<void()>& settle = {});

// Without measuring or checking (a CUDA graph being captured cannot wait for its stream): runs
// the winner recorded for `key` where there is one, else candidates[0]; returns its index.
size_t run_recorded_or_first(const std::string& key, const std::vector<Candidate>& candidates);

// The table: key -> winner's name; a set entry is used as if measured (an unknown name makes
// that key tune again).
std::vector<std::pair<std::string, std::string>> tuning_table();
void set_tuning(const std::string& key, const std::string& winner);
void clear_tuning();

// How many choices are still being checked (their winner's next calls timed, a second look
// to come): a benchmark of steady speed runs its shapes until none is.
int unsettled_choices();

// An environment switch: unset or empty -> `unset_value`, "0" / "1" -> false / true, anything
// else an error naming the variable.
bool env_flag(const char* name, bool unset_value);

}  // namespace cuconv
