// The emulated CUDA device's scheduler (device.h): blocks one after another, the block's
// threads as fibers in the chosen order, barriers and warp collectives as rendezvous, shared
// memory private to the block and poisoned, launch checks and error reporting.

#include "device.h"

#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <vector>

#include <torch/headeronly/util/Half.h>

#include "fiber.h"

#if defined(__SANITIZE_ADDRESS__)
#define CUCONV_EMU_ASAN 1
#else
#define CUCONV_EMU_ASAN 0
#endif

namespace cuconv::emu {
namespace {

// Stack of each CUDA thread's fiber: kernels keep their accumulator tiles there. An
// AddressSanitizer build needs room for its redzones.
constexpr size_t kStackBytes = CUCONV_EMU_ASAN ? 512 * 1024 : 96 * 1024;
constexpr size_t kMaxLaneBytes = 64;  // largest per-lane operand of a warp collective (an mma's)
constexpr uint64_t kMaxGridX = (uint64_t{1} << 31) - 1;

enum class State { kRunnable, kAtBarrier, kAtCollective, kFaulted, kDone };

// A cp.async copy in flight: its data, taken when issued, and its group.
struct PendingCopy {
  unsigned char* dst;
  unsigned char data[16];
  int bytes;
  uint64_t group;  // the thread's group number, or kOpenGroup until committed
};
constexpr uint64_t kOpenGroup = ~uint64_t{0};

struct EmuThread {
  Fiber fiber;
  ThreadIndex index;
  State state = State::kDone;
  int warp = 0, lane = 0;
  std::vector<PendingCopy> copies;  // cp.async copies not yet landed
  uint64_t groups = 0;              // cp.async groups committed so far
};

// A warp's collective in progress: the operands posted so far and, once computed, the results.
struct WarpExchange {
  unsigned int mask = 0;
  Combine combine = nullptr;
  size_t in_bytes = 0, out_bytes = 0;
  alignas(16) unsigned char in[32 * kMaxLaneBytes];
  alignas(16) unsigned char out[32 * kMaxLaneBytes];
};

struct Device {
  DeviceConfig config;
  Stats stats;
  std::mutex launch_mutex;  // one emulated launch at a time (the device has one "stream")
  std::string last_error;
  std::map<const void*, size_t> max_dynamic_shared;  // per kernel, from set_max_dynamic_shared

  // The running block.
  std::vector<std::unique_ptr<EmuThread>> threads;  // grown to the largest block, reused
  std::vector<WarpExchange> warps;
  int block_threads = 0;
  EmuThread* running = nullptr;
  void (*body)(void*) = nullptr;
  void* body_context = nullptr;
  uint64_t generation = 0;  // of the running block, for the shared slots
  std::string fault;        // what went wrong in the running block
  // Shared memory of the running block: dynamic part first, then the static variables.
  std::vector<unsigned char> arena;
  size_t dynamic_bytes = 0, static_used = 0;
  std::vector<void*> separate_allocations;  // ASan builds: one allocation per variable, exact size
};

Device& device() {
  static Device d;
  return d;
}

std::string describe(dim3 d) {
  std::ostringstream s;
  s << "(" << d.x << ", " << d.y << ", " << d.z << ")";
  return s.str();
}

// A fault seen on a fiber: recorded, and the thread stops (it is never resumed; the block is
// abandoned when the scheduler sees the fault).
[[noreturn]] void fault_on_fiber(const std::string& message) {
  Device& d = device();
  if (d.fault.empty()) d.fault = message;
  d.running->state = State::kFaulted;
  d.running->fiber.yield();
  std::abort();  // not reached: a faulted thread is never resumed
}

void thread_entry(void* argument) {
  (void)argument;
  Device& d = device();
  d.body(d.body_context);
}

std::vector<int> schedule_order(int count, uint64_t block_number) {
  const DeviceConfig& config = device().config;
  std::vector<int> order(count);
  std::iota(order.begin(), order.end(), 0);
  if (config.schedule == Schedule::kReverse) std::reverse(order.begin(), order.end());
  if (config.schedule == Schedule::kRandom) {
    std::mt19937_64 rng(config.seed * 0x9E3779B97F4A7C15ull + block_number);
    std::shuffle(order.begin(), order.end(), rng);
  }
  return order;
}

void free_separate_allocations(Device& d) {
  for (void* p : d.separate_allocations) std::free(p);
  d.separate_allocations.clear();
}

// Releases the warps whose collectives are complete (computing them); returns whether any was.
bool complete_collectives(Device& d) {
  bool released = false;
  const int warps = (d.block_threads + 31) / 32;
  for (int w = 0; w < warps; ++w) {
    WarpExchange& x = d.warps[w];
    bool any = false, complete = true;
    for (int lane = 0; lane < 32 && w * 32 + lane < d.block_threads; ++lane) {
      const EmuThread& t = *d.threads[w * 32 + lane];
      if (t.state == State::kAtCollective) any = true;
    }
    if (!any) continue;
    for (int lane = 0; lane < 32; ++lane) {
      if (!(x.mask >> lane & 1u)) continue;
      const int id = w * 32 + lane;
      if (id >= d.block_threads || d.threads[id]->state == State::kDone) {
        d.fault = "warp " + std::to_string(w) + ": a warp collective's mask names lane " + std::to_string(lane) +
                  ", which has exited or does not exist";
        return false;
      }
      if (d.threads[id]->state != State::kAtCollective) complete = false;
    }
    if (!complete) continue;
    x.combine(x.in, x.out, x.mask);
    ++d.stats.collectives;
    for (int lane = 0; lane < 32; ++lane)
      if (x.mask >> lane & 1u) d.threads[w * 32 + lane]->state = State::kRunnable;
    x.mask = 0;
    x.combine = nullptr;
    released = true;
  }
  return released;
}

// Runs one block to completion; false (with d.fault set) if it faulted.
bool run_block(Device& d, const LaunchConfig& config, dim3 block_idx, uint64_t block_number) {
  ++d.generation;
  free_separate_allocations(d);
  d.static_used = 0;
  std::fill_n(d.arena.begin(), d.dynamic_bytes, static_cast<unsigned char>(0xFF));
  for (WarpExchange& x : d.warps) x.mask = 0, x.combine = nullptr;
  const dim3 b = config.block;
  for (int id = 0; id < d.block_threads; ++id) {
    EmuThread& t = *d.threads[id];
    t.index = {dim3(id % b.x, id / b.x % b.y, id / (b.x * b.y)), block_idx, b, config.grid};
    t.warp = id / 32;
    t.lane = id % 32;
    t.state = State::kRunnable;
    t.copies.clear();
    t.groups = 0;
    t.fiber.start(&thread_entry, nullptr, kStackBytes);
  }
  int live = d.block_threads, exited = 0;
  const std::vector<int> order = schedule_order(d.block_threads, block_number);
  while (live > 0) {
    for (int id : order) {
      EmuThread& t = *d.threads[id];
      if (t.state != State::kRunnable) continue;
      d.running = &t;
      t.fiber.resume();
      d.running = nullptr;
      if (t.fiber.finished()) {
        t.state = State::kDone;
        --live;
        ++exited;
      }
      if (!d.fault.empty()) return false;
    }
    if (live == 0) break;
    if (complete_collectives(d)) continue;
    if (!d.fault.empty()) return false;
    int at_barrier = 0, at_collective = 0;
    for (int id = 0; id < d.block_threads; ++id) {
      at_barrier += d.threads[id]->state == State::kAtBarrier;
      at_collective += d.threads[id]->state == State::kAtCollective;
    }
    if (at_barrier == live) {
      if (exited > 0) {
        d.fault = "__syncthreads() reached by " + std::to_string(live) + " threads after " + std::to_string(exited) +
                  " threads of the block had exited";
        return false;
      }
      for (int id = 0; id < d.block_threads; ++id) d.threads[id]->state = State::kRunnable;
      ++d.stats.barriers;
      continue;
    }
    d.fault = "deadlock: " + std::to_string(at_barrier) + " threads wait at __syncthreads() and " +
              std::to_string(at_collective) + " at warp collectives that cannot complete (" + std::to_string(live) +
              " live threads)";
    return false;
  }
  ++d.stats.blocks;
  d.stats.threads += d.block_threads;
  return true;
}

std::string check_launch(const Device& d, const LaunchConfig& c) {
  const uint64_t threads = uint64_t{c.block.x} * c.block.y * c.block.z;
  if (threads == 0 || threads > 1024 || c.block.x > 1024 || c.block.y > 1024 || c.block.z > 64)
    return "invalid configuration argument: block " + describe(c.block) + " (at most 1024 threads, z <= 64)";
  const unsigned int yz = static_cast<unsigned int>(d.config.max_grid_yz);
  if (c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 || c.grid.x > kMaxGridX || c.grid.y > yz || c.grid.z > yz)
    return "invalid configuration argument: grid " + describe(c.grid) + " (x < 2^31, y and z <= " + std::to_string(yz) +
           ")";
  auto limit = d.max_dynamic_shared.find(c.kernel);
  const size_t allowed = limit == d.max_dynamic_shared.end() ? d.config.shared_per_block : limit->second;
  if (c.dynamic_shared > allowed)
    return "invalid argument: " + std::to_string(c.dynamic_shared) + " bytes of dynamic shared memory, " +
           std::to_string(allowed) + " allowed for this kernel" +
           (limit == d.max_dynamic_shared.end() ? " (no cudaFuncAttributeMaxDynamicSharedMemorySize opt-in)" : "");
  return "";
}

}  // namespace

ThreadIndex& current_thread() { return device().running->index; }
DeviceConfig& device_config() { return device().config; }
Stats& stats() { return device().stats; }

void syncthreads() {
  Device& d = device();
  d.running->state = State::kAtBarrier;
  d.running->fiber.yield();
}

void* shared_allocate(SharedSlot& slot, size_t bytes, size_t alignment) {
  Device& d = device();
  if (slot.generation == d.generation) return slot.address;
  size_t offset = (d.dynamic_bytes + d.static_used + alignment - 1) / alignment * alignment;
  const size_t used = offset - d.dynamic_bytes + bytes;
  if (used > d.config.shared_per_block)
    fault_on_fiber("the kernel's static __shared__ variables take " + std::to_string(used) + " bytes, more than " +
                   std::to_string(d.config.shared_per_block) + " (uses too much shared data)");
  if (d.dynamic_bytes + used > d.config.shared_per_block_optin)
    fault_on_fiber("static and dynamic shared memory together exceed " + std::to_string(d.config.shared_per_block_optin) +
                   " bytes");
  d.static_used = used;
  void* address = d.arena.data() + offset;
  if (CUCONV_EMU_ASAN) {  // its own allocation of exactly its size: an overrun is reported
    address = std::aligned_alloc(alignment, (bytes + alignment - 1) / alignment * alignment);
    d.separate_allocations.push_back(address);
  }
  std::memset(address, 0xFF, bytes);
  slot.generation = d.generation;
  slot.address = address;
  return address;
}

void* dynamic_shared() { return device().arena.data(); }

void warp_collective(unsigned int mask, const void* in, size_t in_bytes, void* out, size_t out_bytes,
                     Combine combine) {
  Device& d = device();
  EmuThread& t = *d.running;
  if (!(mask >> t.lane & 1u))
    fault_on_fiber("lane " + std::to_string(t.lane) + " of warp " + std::to_string(t.warp) +
                   " calls a warp collective whose mask does not include it");
  if (in_bytes > kMaxLaneBytes || out_bytes > kMaxLaneBytes) fault_on_fiber("warp collective operand too large");
  WarpExchange& x = d.warps[t.warp];
  if (x.combine == nullptr) {
    x.mask = mask;
    x.combine = combine;
    x.in_bytes = in_bytes;
    x.out_bytes = out_bytes;
  } else if (x.combine != combine || x.mask != mask || x.in_bytes != in_bytes || x.out_bytes != out_bytes) {
    fault_on_fiber("lanes of warp " + std::to_string(t.warp) + " call different warp collectives (or masks) at once");
  }
  std::memcpy(x.in + t.lane * in_bytes, in, in_bytes);
  t.state = State::kAtCollective;
  t.fiber.yield();
  std::memcpy(out, x.out + t.lane * out_bytes, out_bytes);
}

// --- matrix instructions -------------------------------------------------------------------

namespace {

float half_bits_to_float(uint16_t bits, MmaType type) {
  if (type == MmaType::kBF16) {
    const uint32_t wide = static_cast<uint32_t>(bits) << 16;
    float value;
    std::memcpy(&value, &wide, 4);
    return value;
  }
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

float tf32_bits_to_float(uint32_t bits) {
  bits &= 0xffffe000u;  // the tensor core reads 10 mantissa bits
  float value;
  std::memcpy(&value, &bits, 4);
  return value;
}

struct MmaIn {
  uint32_t a[4], b[2];
  float c[4];
};

template <MmaType kType>
void mma_combine(const void* inputs, void* outputs, unsigned int) {
  const MmaIn* in = static_cast<const MmaIn*>(inputs);
  float (*out)[4] = static_cast<float (*)[4]>(outputs);
  constexpr int K = kType == MmaType::kTF32 ? 8 : 16;
  float A[16][16], B[16][8], C[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    const MmaIn& f = in[lane];
    if constexpr (kType == MmaType::kTF32) {
      A[g][t] = tf32_bits_to_float(f.a[0]);
      A[g + 8][t] = tf32_bits_to_float(f.a[1]);
      A[g][t + 4] = tf32_bits_to_float(f.a[2]);
      A[g + 8][t + 4] = tf32_bits_to_float(f.a[3]);
      B[t][g] = tf32_bits_to_float(f.b[0]);
      B[t + 4][g] = tf32_bits_to_float(f.b[1]);
    } else {
      const int rows[4] = {g, g + 8, g, g + 8}, cols[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
      for (int r = 0; r < 4; ++r) {
        A[rows[r]][cols[r]] = half_bits_to_float(static_cast<uint16_t>(f.a[r] & 0xffffu), kType);
        A[rows[r]][cols[r] + 1] = half_bits_to_float(static_cast<uint16_t>(f.a[r] >> 16), kType);
      }
      for (int r = 0; r < 2; ++r) {
        B[2 * t + 8 * r][g] = half_bits_to_float(static_cast<uint16_t>(f.b[r] & 0xffffu), kType);
        B[2 * t + 8 * r + 1][g] = half_bits_to_float(static_cast<uint16_t>(f.b[r] >> 16), kType);
      }
    }
    C[g][2 * t] = f.c[0];
    C[g][2 * t + 1] = f.c[1];
    C[g + 8][2 * t] = f.c[2];
    C[g + 8][2 * t + 1] = f.c[3];
  }
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int e = 0; e < 4; ++e) {
      float acc = C[rows[e]][cols[e]];
      for (int k = 0; k < K; ++k) acc += A[rows[e]][k] * B[k][cols[e]];
      out[lane][e] = acc;
    }
  }
}

struct LdmatrixIn {
  const unsigned char* row;
  int count;
  bool trans;
};

void ldmatrix_combine(const void* inputs, void* outputs, unsigned int) {
  const LdmatrixIn* in = static_cast<const LdmatrixIn*>(inputs);
  uint32_t (*out)[4] = static_cast<uint32_t (*)[4]>(outputs);
  for (int j = 0; j < in[0].count; ++j) {
    uint16_t m[8][8];  // matrix j, rows from lanes 8j .. 8j+7
    for (int r = 0; r < 8; ++r) std::memcpy(m[r], in[8 * j + r].row, 16);
    for (int lane = 0; lane < 32; ++lane) {
      const int row = lane / 4, col = 2 * (lane % 4);
      const uint16_t lo = in[0].trans ? m[col][row] : m[row][col];
      const uint16_t hi = in[0].trans ? m[col + 1][row] : m[row][col + 1];
      out[lane][j] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
    }
  }
}

}  // namespace

void mma(MmaType type, float (&d)[4], const uint32_t* a, const uint32_t* b, const float (&c)[4]) {
  MmaIn in;
  std::memcpy(in.a, a, sizeof(in.a));
  std::memcpy(in.b, b, sizeof(in.b));
  std::memcpy(in.c, c, sizeof(in.c));
  const Combine combine = type == MmaType::kTF32 ? &mma_combine<MmaType::kTF32>
                          : type == MmaType::kBF16 ? &mma_combine<MmaType::kBF16>
                                                   : &mma_combine<MmaType::kF16>;
  warp_collective(0xffffffffu, &in, sizeof(in), d, sizeof(d), combine);
}

void ldmatrix(int count, bool trans, uint32_t* regs, const void* row) {
  if (reinterpret_cast<uintptr_t>(row) % 16 != 0) fault_on_fiber("ldmatrix: a row address is not 16-byte aligned");
  const LdmatrixIn in{static_cast<const unsigned char*>(row), count, trans};
  uint32_t out[4];
  warp_collective(0xffffffffu, &in, sizeof(in), out, sizeof(out), &ldmatrix_combine);
  std::memcpy(regs, out, sizeof(uint32_t) * count);
}

void cp_async(void* dst, const void* src, int bytes, int src_bytes) {
  if (bytes != 4 && bytes != 8 && bytes != 16) fault_on_fiber("cp.async: the size must be 4, 8 or 16 bytes");
  if (reinterpret_cast<uintptr_t>(dst) % bytes != 0 || (src_bytes > 0 && reinterpret_cast<uintptr_t>(src) % bytes != 0))
    fault_on_fiber("cp.async: an address is not aligned to the copy's size");
  PendingCopy copy{static_cast<unsigned char*>(dst), {}, bytes, kOpenGroup};
  std::memcpy(copy.data, src, static_cast<size_t>(std::min(src_bytes, bytes)));
  device().running->copies.push_back(copy);
}

void cp_async_commit() {
  EmuThread& t = *device().running;
  for (PendingCopy& copy : t.copies)
    if (copy.group == kOpenGroup) copy.group = t.groups;
  ++t.groups;
}

void cp_async_wait(int newest_pending) {
  EmuThread& t = *device().running;
  const uint64_t keep_from = t.groups >= static_cast<uint64_t>(newest_pending) ? t.groups - newest_pending : 0;
  auto landed = [&](const PendingCopy& copy) { return copy.group != kOpenGroup && copy.group < keep_from; };
  for (const PendingCopy& copy : t.copies)
    if (landed(copy)) std::memcpy(copy.dst, copy.data, static_cast<size_t>(copy.bytes));
  t.copies.erase(std::remove_if(t.copies.begin(), t.copies.end(), landed), t.copies.end());
}

void run_grid(const LaunchConfig& config, void (*body)(void*), void* context) {
  Device& d = device();
  std::lock_guard<std::mutex> lock(d.launch_mutex);
  ++d.stats.launches;
  const std::string invalid = check_launch(d, config);
  if (!invalid.empty()) {
    d.last_error = invalid;
    return;
  }
  d.block_threads = static_cast<int>(config.block.x * config.block.y * config.block.z);
  while (static_cast<int>(d.threads.size()) < d.block_threads) d.threads.push_back(std::make_unique<EmuThread>());
  d.warps.resize((d.block_threads + 31) / 32);
  d.dynamic_bytes = config.dynamic_shared;
  d.arena.resize(std::max(d.arena.size(), d.config.shared_per_block_optin + 64));
  d.body = body;
  d.body_context = context;
  d.fault.clear();
  uint64_t block_number = 0;
  for (unsigned int z = 0; z < config.grid.z; ++z)
    for (unsigned int y = 0; y < config.grid.y; ++y)
      for (unsigned int x = 0; x < config.grid.x; ++x, ++block_number) {
        if (!run_block(d, config, dim3(x, y, z), block_number)) {
          d.last_error = "unspecified launch failure (emulated: block " + describe(dim3(x, y, z)) + ", " + d.fault + ")";
          free_separate_allocations(d);
          return;
        }
      }
  free_separate_allocations(d);
}

std::string take_last_error() {
  std::string error;
  std::swap(error, device().last_error);
  return error;
}

void set_max_dynamic_shared(const void* kernel, size_t bytes) {
  Device& d = device();
  if (bytes > d.config.shared_per_block_optin) {
    d.last_error = "invalid argument: cudaFuncAttributeMaxDynamicSharedMemorySize " + std::to_string(bytes) +
                   " exceeds the device's " + std::to_string(d.config.shared_per_block_optin);
    return;
  }
  d.max_dynamic_shared[kernel] = bytes;
}

}  // namespace cuconv::emu
