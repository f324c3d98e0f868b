#include "agent/gpu_probe.h"

#include <dlfcn.h>

#include <regex>
#include <stdexcept>

namespace aicloud {

std::string normalize_gpu_model(const std::string& nvml_name) {
  std::string s = nvml_name;
  for (const char* p : {"NVIDIA ", "Tesla "}) {
    if (s.rfind(p, 0) == 0) s = s.substr(std::string(p).size());
  }
  std::string out;
  for (char ch : s) {
    if (ch == ' ') {
      if (!out.empty() && out.back() != '-') out.push_back('-');
    } else if (std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '.' || ch == '_') {
      out.push_back(ch);
    }
  }
  if (out.size() > 32) out.resize(32);
  return out.empty() ? "unknown" : out;
}

std::optional<std::vector<GpuInfo>> probe_nvml(std::string* why) {
  // The handful of NVML entry points we need, by their stable C ABI.
  using nvmlReturn = int;
  using Device = void*;
  struct Memory {
    unsigned long long total, free, used;
  };
  void* lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    if (why) *why = "libnvidia-ml.so.1 not found (no NVIDIA driver)";
    return std::nullopt;
  }
  auto sym = [&](const char* name) { return dlsym(lib, name); };
  auto init = reinterpret_cast<nvmlReturn (*)()>(sym("nvmlInit_v2"));
  auto shutdown = reinterpret_cast<nvmlReturn (*)()>(sym("nvmlShutdown"));
  auto count = reinterpret_cast<nvmlReturn (*)(unsigned*)>(sym("nvmlDeviceGetCount_v2"));
  auto handle = reinterpret_cast<nvmlReturn (*)(unsigned, Device*)>(sym("nvmlDeviceGetHandleByIndex_v2"));
  auto name = reinterpret_cast<nvmlReturn (*)(Device, char*, unsigned)>(sym("nvmlDeviceGetName"));
  auto uuid = reinterpret_cast<nvmlReturn (*)(Device, char*, unsigned)>(sym("nvmlDeviceGetUUID"));
  auto memory = reinterpret_cast<nvmlReturn (*)(Device, Memory*)>(sym("nvmlDeviceGetMemoryInfo"));
  if (!init || !shutdown || !count || !handle || !name || !uuid || !memory) {
    if (why) *why = "libnvidia-ml.so.1 lacks the NVML functions we need";
    dlclose(lib);
    return std::nullopt;
  }
  if (init() != 0) {
    if (why) *why = "nvmlInit failed";
    dlclose(lib);
    return std::nullopt;
  }
  std::vector<GpuInfo> out;
  unsigned n = 0;
  if (count(&n) == 0) {
    for (unsigned i = 0; i < n; ++i) {
      Device d = nullptr;
      if (handle(i, &d) != 0) continue;
      char nm[96] = {}, id[96] = {};
      Memory mem{};
      GpuInfo g;
      g.index = int(i);
      g.model = name(d, nm, sizeof nm) == 0 ? normalize_gpu_model(nm) : "unknown";
      g.uuid = uuid(d, id, sizeof id) == 0 ? id : "";
      g.memory_mb = memory(d, &mem) == 0 ? int64_t(mem.total / (1024 * 1024)) : 0;
      out.push_back(g);
    }
  }
  shutdown();
  dlclose(lib);
  return out;
}

std::vector<GpuInfo> parse_gpu_spec(const std::string& spec, const std::string& node_name) {
  static const std::regex re("^([0-9]{1,2})x([A-Za-z0-9][A-Za-z0-9._-]{0,31})$");
  std::smatch m;
  if (!std::regex_match(spec, m, re)) {
    throw std::invalid_argument("--gpus must look like 8xH100-80GB (count x model), got '" + spec + "'");
  }
  int n = std::stoi(m[1]);
  if (n < 1 || n > 64) throw std::invalid_argument("--gpus count must be 1 to 64, got " + std::to_string(n));
  std::string model = m[2];
  int64_t mem_mb = 0;
  std::smatch mm;
  static const std::regex mem_re("([0-9]+)GB");
  if (std::regex_search(model, mm, mem_re)) mem_mb = std::stoll(mm[1]) * 1024;
  std::vector<GpuInfo> out;
  for (int i = 0; i < n; ++i) out.push_back({i, model, mem_mb, "declared-" + node_name + "-" + std::to_string(i)});
  return out;
}

}  // namespace aicloud
