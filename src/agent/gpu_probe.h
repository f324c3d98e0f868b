// What GPUs a node has: real ones through NVML (loaded at run time with dlopen, so the binary
// runs on machines without the NVIDIA driver), or the ones an operator declares with --gpus
// (how a fleet is tested on machines without GPUs: workloads still run, with
// CUDA_VISIBLE_DEVICES set to their declared devices).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace aicloud {

struct GpuInfo {
  int index = 0;
  std::string model;     // "H100-80GB", normalised from NVML's "NVIDIA H100 80GB HBM3"
  int64_t memory_mb = 0;
  std::string uuid;      // NVML's "GPU-..." or "declared-<node>-<index>"
};

// NVML's devices, or nullopt with *why set when NVML is absent or fails.
std::optional<std::vector<GpuInfo>> probe_nvml(std::string* why);

// "8xH100-80GB" (count x model; memory from the model name when it says so). Throws
// std::invalid_argument with a message that shows the expected form.
std::vector<GpuInfo> parse_gpu_spec(const std::string& spec, const std::string& node_name);

// "NVIDIA H100 80GB HBM3" -> "H100-80GB-HBM3"
std::string normalize_gpu_model(const std::string& nvml_name);

}  // namespace aicloud
