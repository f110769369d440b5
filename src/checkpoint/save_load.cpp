// SMP's smp.save / smp.load for a rank's own tensors, and the file name they use (see
// checkpoint.h). A facade: the rank suffixes come from the context smp::init built.
#include <nlohmann/json.hpp>

#include "smp/checkpoint/checkpoint.h"
#include "smp/checkpoint/safetensors.h"
#include "smp/core/error.h"
#include "smp/runtime.h"

namespace smp {

using json = nlohmann::json;

std::string rank_path(const std::string& path, bool partial) {
  if (!partial) return path;
  std::string out = path + "_" + std::to_string(pp_rank()) + "_" + std::to_string(tp_rank());
  if (config().shard_optimizer_state) out += "_" + std::to_string(rdp_rank());
  return out;
}

void save(const std::map<std::string, at::Tensor>& tensors, const std::string& path, bool partial,
          const json& extra) {
  std::map<std::string, std::string> metadata{{"format", "pt"}};
  if (!extra.is_null()) metadata["smp.json"] = extra.dump();
  checkpoint::save_safetensors(rank_path(path, partial), {tensors.begin(), tensors.end()}, metadata);
}

std::map<std::string, at::Tensor> load(const std::string& path, bool partial, json* extra) {
  const std::string file = rank_path(path, partial);
  if (extra != nullptr) {
    const auto metadata = checkpoint::read_safetensors_header(file).metadata;
    const auto it = metadata.find("smp.json");
    try {
      *extra = it == metadata.end() ? json(nullptr) : json::parse(it->second);
    } catch (const json::exception& e) {
      throw CheckpointError("smp.load: '" + file + "': metadata \"smp.json\" is not JSON (smp.save writes it): " +
                            e.what());
    }
  }
  return checkpoint::load_safetensors(file);
}

}  // namespace smp
