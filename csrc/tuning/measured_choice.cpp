// The measured kernel choice of measured_choice.h.

#include "measured_choice.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../ops.h"

namespace cuconv {
namespace {

// How a choice is checked after it is made (tuner.h): the winner's next kChecks calls are timed,
// and one that runs in under kDisturbed of the winner's measured time means the measuring was
// disturbed. Both are about noise, not about any CPU.
constexpr int kChecks = 4;
constexpr double kDisturbed = 0.8;

struct Choice {
  std::string winner;
  double winner_seconds = 0.0;  // the winner's best time when chosen (0: set, not measured)
  int checks_left = 0;          // later calls still timed
  std::vector<double> best;     // every candidate's best time, for a second measurement
  // A choice made inside another's measurement (the NCHW candidate of a channels_last layer
  // tunes its own kernels): that key, and the candidate that was running. Its checks come only
  // while that candidate is the other's winner: otherwise it is never called again.
  std::string outer_key, outer_candidate;
};

// The measurements running on this thread, innermost last: (key, the candidate running).
thread_local std::vector<std::pair<std::string, std::string>> measuring;

std::mutex table_mutex;
std::map<std::string, Choice>& table() {
  static std::map<std::string, Choice> choices;
  return choices;
}

}  // namespace

bool env_flag(const char* name, bool unset_value) {
  const char* setting = std::getenv(name);
  if (setting == nullptr || *setting == '\0') return unset_value;
  CUCONV_CHECK_VALUE(std::strcmp(setting, "0") == 0 || std::strcmp(setting, "1") == 0,
                     "cuconv: expected the environment variable ", name, " to be 0 or 1, but got '", setting, "'");
  return *setting == '1';
}

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

double seconds_to_run(const Candidate& candidate, const std::function<void()>& settle) {
  if (settle) settle();
  const auto start = std::chrono::steady_clock::now();
  candidate.run();
  if (settle) settle();
  return seconds_since(start);
}

constexpr size_t kNone = std::numeric_limits<size_t>::max();

// Runs every candidate but `skip` once, keeping each one's best time; returns the last one run
// (kNone when that one failed: what it left of the result is no one's). A candidate that fails
// (out of memory for its own buffers, a launch limit only it reaches) keeps an infinite time, so
// the others are chosen among; `failure` keeps the first error, for when every candidate fails.
size_t measure_round(const std::string& key, const std::vector<Candidate>& candidates, std::vector<double>& best,
                     size_t skip, const std::function<void()>& settle, std::exception_ptr& failure) {
  size_t last = skip;
  for (size_t c = 0; c < candidates.size(); ++c) {
    if (c == skip) continue;
    measuring.emplace_back(key, candidates[c].name);
    try {
      best[c] = std::min(best[c], seconds_to_run(candidates[c], settle));
      last = c;
    } catch (...) {
      if (!failure) failure = std::current_exception();
      last = kNone;
    }
    measuring.pop_back();
  }
  return last;
}

// The fastest candidate that ran; rethrows the first failure when none did.
size_t fastest_that_ran(const std::vector<double>& best, const std::exception_ptr& failure) {
  size_t winner = 0;
  for (size_t c = 1; c < best.size(); ++c) winner = best[c] < best[winner] ? c : winner;
  if (best[winner] == std::numeric_limits<double>::infinity() && failure) std::rethrow_exception(failure);
  return winner;
}

void log_choice(const char* what, const std::string& key, const std::vector<Candidate>& candidates,
                const std::vector<double>& best, size_t winner, double spent) {
  if (!env_flag("CUCONV_LOG", false)) return;
  std::string times;
  for (size_t c = 0; c < candidates.size(); ++c) {
    char entry[96];
    std::snprintf(entry, sizeof entry, "%s%s %.3f ms", c == 0 ? "" : ", ", candidates[c].name, best[c] * 1e3);
    times += entry;
  }
  std::fprintf(stderr, "cuconv: %s %s: %s -> %s (tuning took %.3f ms)\n", what, key.c_str(), times.c_str(),
               candidates[winner].name, spent * 1e3);
}

void record(const std::string& key, Choice choice) {
  std::lock_guard<std::mutex> lock(table_mutex);
  table()[key] = std::move(choice);
}

// The recorded winner has just run in `seconds`: clearly faster than when it was chosen (the
// first measurement was disturbed), or as fast on its last checked call (a second look: a burst
// of load over both first rounds of another candidate would otherwise go unseen, as the winner
// then runs as measured). Measures the others once more, keeps every candidate's best time over
// both measurements (so a disturbed second look changes nothing), and records the fastest for
// good (no more checks).
size_t measure_again(const std::string& key, const std::vector<Candidate>& candidates, Choice choice,
                     size_t recorded, double seconds, const char* why, const std::function<void()>& settle) {
  const auto start = std::chrono::steady_clock::now();
  std::vector<double> best = choice.best;
  if (best.size() != candidates.size()) best.assign(candidates.size(), std::numeric_limits<double>::infinity());
  best[recorded] = std::min(best[recorded], seconds);
  std::exception_ptr failure;
  const size_t last = measure_round(key, candidates, best, recorded, settle, failure);
  const size_t winner = fastest_that_ran(best, failure);
  if (winner != last) candidates[winner].run();  // the call returns the winner's result
  record(key, {candidates[winner].name, best[winner], 0, best, choice.outer_key, choice.outer_candidate});
  log_choice(why, key, candidates, best, winner, seconds_since(start) + seconds);
  return winner;
}

}  // namespace

size_t run_tuned(const std::string& key, const std::vector<Candidate>& candidates,
                 const std::function<void()>& settle) {
  CUCONV_CHECK(!candidates.empty(), "cuconv: internal error: no candidate kernel for ", key);
  env_flag("CUCONV_LOG", false);  // (a bad value fails every call, not only those that measure)
  Choice recorded;
  {
    std::lock_guard<std::mutex> lock(table_mutex);
    const auto found = table().find(key);
    if (found != table().end()) {
      Choice& choice = found->second;
      // every conv call passes here: the times and the outer measurement are copied only while
      // still checked (measure_again keeps them)
      recorded = {choice.winner, choice.winner_seconds, choice.checks_left, {}, {}, {}};
      if (choice.checks_left > 0)
        recorded.best = choice.best, recorded.outer_key = choice.outer_key, recorded.outer_candidate = choice.outer_candidate;
      choice.checks_left = std::max(0, choice.checks_left - 1);
      if (measuring.empty()) choice.outer_key.clear();  // called on its own: reached, whatever the outer chose
    }
  }
  for (size_t c = 0; c < candidates.size(); ++c) {
    if (recorded.winner != candidates[c].name) continue;
    if (recorded.checks_left == 0) {
      candidates[c].run();
      return c;
    }
    const double seconds = seconds_to_run(candidates[c], settle);
    if (seconds < kDisturbed * recorded.winner_seconds)
      return measure_again(key, candidates, std::move(recorded), c, seconds,
                           "measured again (the first measurement was disturbed)", settle);
    if (recorded.checks_left == 1)
      return measure_again(key, candidates, std::move(recorded), c, seconds, "measured again (a second look)", settle);
    return c;
  }
  if (candidates.size() == 1) {
    candidates[0].run();
    return 0;
  }
  // Measured outside the lock: the candidates run on the thread pool, and another thread may
  // tune another shape meanwhile (two threads tuning one key both measure; either winner is right).
  const auto start = std::chrono::steady_clock::now();
  std::vector<double> best(candidates.size(), std::numeric_limits<double>::infinity());
  // Two rounds: the first also pays for cold caches, page faults and any choice a candidate
  // makes inside (the NCHW candidate of a channels_last layer tunes its own kernels).
  size_t last = 0;
  std::exception_ptr failure;
  for (int round = 0; round < 2; ++round)
    last = measure_round(key, candidates, best, candidates.size(), settle, failure);
  const size_t winner = fastest_that_ran(best, failure);
  if (winner != last) candidates[winner].run();  // the call returns the winner's result
  Choice choice{candidates[winner].name, best[winner], kChecks, best, {}, {}};
  if (!measuring.empty()) std::tie(choice.outer_key, choice.outer_candidate) = measuring.back();
  record(key, std::move(choice));
  log_choice("tuned", key, candidates, best, winner, seconds_since(start));
  return winner;
}

size_t run_recorded_or_first(const std::string& key, const std::vector<Candidate>& candidates) {
  CUCONV_CHECK(!candidates.empty(), "cuconv: internal error: no candidate kernel for ", key);
  std::string winner;
  {
    std::lock_guard<std::mutex> lock(table_mutex);
    const auto found = table().find(key);
    if (found != table().end()) winner = found->second.winner;
  }
  size_t chosen = 0;
  for (size_t c = 0; c < candidates.size(); ++c)
    if (winner == candidates[c].name) chosen = c;
  candidates[chosen].run();
  return chosen;
}

std::vector<std::pair<std::string, std::string>> tuning_table() {
  std::lock_guard<std::mutex> lock(table_mutex);
  std::vector<std::pair<std::string, std::string>> winners;
  for (const auto& [key, choice] : table()) winners.emplace_back(key, choice.winner);
  return winners;
}

void set_tuning(const std::string& key, const std::string& winner) { record(key, {winner, 0.0, 0, {}, {}, {}}); }

namespace {

// Whether `choice` is still reached: made on its own, or inside a candidate that won (and is
// itself reached). The table's lock held.
bool reached(const Choice& choice, int depth = 0) {
  if (choice.outer_key.empty()) return true;
  const auto outer = table().find(choice.outer_key);
  return depth < 8 && outer != table().end() && outer->second.winner == choice.outer_candidate &&
         reached(outer->second, depth + 1);
}

}  // namespace

int unsettled_choices() {
  std::lock_guard<std::mutex> lock(table_mutex);
  int count = 0;
  for (const auto& entry : table()) count += entry.second.checks_left > 0 && reached(entry.second);
  return count;
}

void clear_tuning() {
  std::lock_guard<std::mutex> lock(table_mutex);
  table().clear();
}

}  // namespace cuconv
