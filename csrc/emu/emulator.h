// The emulator's controls, for its Python bindings (emu/bindings_emu.cpp):
// the emulated device, the global buffers kernels may touch, and what ran.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

namespace tforge::emu {

struct DeviceConfig {
  int sms = 132;  // an H100 SXM: the host code sizes grids and split-K from it
  int cc_major = 9, cc_minor = 0;
};
void configure(const DeviceConfig& c);
DeviceConfig device_config();

// Global memory a kernel may read or write: [base, base + bytes). Any other address a kernel
// touches (outside its own stack and shared memory) is reported as out of bounds.
void register_buffer(uintptr_t base, size_t bytes, const std::string& label);
void clear_buffers();

// Launches per kernel (the name before any template arguments) since the last reset.
std::map<std::string, int64_t> launch_counts();
void reset_launch_counts();

// Fibers switched and shared-memory bytes checked since start (for the docs' cost figures).
std::map<std::string, int64_t> counters();

}  // namespace tforge::emu
