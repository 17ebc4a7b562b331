#include "pipeline/tools/inspect.h"

#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "adapters/adapter.h"
#include "core/io/checkpoint.h"

namespace hawada {
namespace {

std::string with_commas(uint64_t n) {
  const std::string digits = std::to_string(n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

}  // namespace

std::string inspect_model(const std::filesystem::path& dir, bool as_json) {
  const HfCheckpoint ckpt = HfCheckpoint::open(dir);
  const auto config_file = dir / "config.json";
  const ArchSummary s = adapter_for(ckpt.config(), config_file).summarize_checkpoint(ckpt);
  const int64_t config_parameters = parameter_count(model_shape(s));

  std::map<std::string, uint64_t> dtype_params;  // stored dtype -> parameters
  for (const auto& name : ckpt.tensor_names()) {
    const auto& t = ckpt.info(name);
    dtype_params[std::string(safetensors::dtype_name(t.dtype))] += t.numel();
  }
  std::string dtype;
  uint64_t most = 0;
  for (const auto& [d, n] : dtype_params)
    if (n >= most) most = n, dtype = d;
  std::string config_dtype = config_field::string(ckpt.config(), "dtype", config_file, "");
  if (config_dtype.empty()) config_dtype = config_field::string(ckpt.config(), "torch_dtype", config_file, "");

  std::vector<std::pair<std::string, uint64_t>> files{{"config.json", std::filesystem::file_size(config_file)}};
  if (ckpt.sharded())
    files.emplace_back("model.safetensors.index.json",
                       std::filesystem::file_size(dir / "model.safetensors.index.json"));
  for (const auto& f : ckpt.weight_files()) files.emplace_back(f, std::filesystem::file_size(dir / f));
  for (const auto& f : ckpt.side_files()) files.emplace_back(f, std::filesystem::file_size(dir / f));

  if (as_json) {
    nlohmann::ordered_json j;
    j["path"] = std::filesystem::absolute(dir).lexically_normal().string();
    j["architecture"] = s.architecture;
    j["model_type"] = s.model_type;
    j["layers"] = s.layers;
    j["heads"] = s.heads;
    j["kv_heads"] = s.kv_heads;
    j["head_dim"] = s.head_dim;
    j["hidden"] = s.hidden;
    j["ffn"] = s.ffn;
    if (s.vocab_size) j["vocab_size"] = s.vocab_size;
    if (s.num_labels) j["num_labels"] = s.num_labels;
    if (s.image_size) j["image_size"] = s.image_size, j["patch_size"] = s.patch_size;
    j["tie_word_embeddings"] = s.tied_embeddings;
    j["parameters"] = ckpt.total_numel();
    j["config_parameters"] = config_parameters;
    j["bytes"] = ckpt.total_bytes();
    j["tensors"] = ckpt.tensor_names().size();
    j["dtype"] = dtype;
    j["dtypes"] = dtype_params;
    j["config_dtype"] = config_dtype;
    j["sharded"] = ckpt.sharded();
    j["files"] = nlohmann::ordered_json::array();
    for (const auto& [name, bytes] : files) j["files"].push_back({{"name", name}, {"bytes", bytes}});
    return j.dump(2) + "\n";
  }
  std::ostringstream out;
  out << "model         " << std::filesystem::absolute(dir).lexically_normal().string() << "\n"
      << "architecture  " << s.architecture << " (model_type " << s.model_type << ")\n"
      << "layers        " << s.layers << "\n"
      << "heads         " << s.heads << " (kv heads " << s.kv_heads << ", head_dim " << s.head_dim << ")\n"
      << "hidden        " << s.hidden << "\n"
      << "ffn           " << s.ffn << "\n";
  if (s.vocab_size) out << "vocab         " << s.vocab_size << (s.tied_embeddings ? " (tied embeddings)" : "") << "\n";
  if (s.num_labels) out << "labels        " << s.num_labels << "\n";
  if (s.image_size) out << "image         " << s.image_size << " px, patch " << s.patch_size << "\n";
  out << "parameters    " << with_commas(ckpt.total_numel()) << " (" << with_commas(ckpt.total_bytes()) << " bytes in "
      << ckpt.tensor_names().size() << " tensors; " << with_commas(static_cast<uint64_t>(config_parameters))
      << " by config.json)\n"
      << "dtype         " << dtype << (config_dtype.empty() ? "" : " (config: " + config_dtype + ")") << "\n"
      << "files\n";
  for (const auto& [name, bytes] : files) out << "  " << name << "  " << with_commas(bytes) << " bytes\n";
  return out.str();
}

}  // namespace hawada
