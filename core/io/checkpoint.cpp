#include "core/io/checkpoint.h"

#include <fnmatch.h>
#include <algorithm>

#include "core/base/errors.h"
#include "core/base/fs.h"
#include "core/base/json_input.h"

namespace hawada {
namespace {

namespace fs = std::filesystem;

// Files an export copies unchanged: tokenizers, processors, generation settings, chat templates.
constexpr const char* kSideFilePatterns[] = {
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "*.tiktoken",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "image_processor_config.json",
    "chat_template.json",
    "chat_template.jinja",
};
// Weights transformers can load that are not safetensors (pickle or other frameworks).
constexpr const char* kForeignWeightPatterns[] = {
    "pytorch_model.bin", "pytorch_model*.bin", "pytorch_model.bin.index.json", "*.pt", "*.pth",
    "tf_model.h5",       "flax_model.msgpack",
};

bool matches_any(const std::string& name, const auto& patterns) {
  for (const char* p : patterns)
    if (::fnmatch(p, name.c_str(), 0) == 0) return true;
  return false;
}

// A side file is copied into exports byte for byte, so a symbolic link must not reach outside the
// model: a relative link resolving inside the directory is followed, and so is a Hugging Face hub cache
// snapshot's link into its own blobs (<repo>/snapshots/<rev>/f -> ../../blobs/<hash>); an absolute
// link, or one escaping anywhere else (e.g. tokenizer.json -> /etc/passwd), is a CheckpointError.
void check_link_stays_inside(const fs::path& dir, const std::string& name) {
  const fs::path p = dir / name;
  std::error_code ec;
  if (!fs::is_symlink(fs::symlink_status(p, ec))) return;
  const fs::path target = fs::read_symlink(p, ec);
  const fs::path resolved = fs::weakly_canonical(p, ec);
  const fs::path root = fs::weakly_canonical(dir, ec);
  auto inside = [](const fs::path& x, const fs::path& base) {
    const auto rel = x.lexically_relative(base);
    return !rel.empty() && *rel.begin() != "..";
  };
  const bool hub_blob =
      root.parent_path().filename() == "snapshots" && inside(resolved, root.parent_path().parent_path() / "blobs");
  if (target.is_absolute() || !(inside(resolved, root) || hub_blob))
    throw CheckpointError("'" + p.string() + "' is a symbolic link to '" + target.string() +
                          "', outside the model directory; exports copy side files, so only links inside it (or a "
                          "hub cache snapshot's into its blobs) are followed: copy the file in instead");
}

}  // namespace

nlohmann::json read_json_file(const fs::path& path) {
  std::string text = read_text_file(path);
  if (const std::string deep = json_depth_problem(text); !deep.empty())
    throw CheckpointError("'" + path.string() + "' " + deep + "; refused");
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError("'" + path.string() + "' is not valid JSON: " + e.what());
  }
}

HfCheckpoint HfCheckpoint::open(const fs::path& dir) {
  HfCheckpoint c;
  c.dir_ = dir;
  if (!fs::is_directory(dir)) throw CheckpointError("model directory '" + dir.string() + "' does not exist");
  const fs::path config = dir / "config.json";
  if (!fs::is_regular_file(config)) throw CheckpointError("model directory '" + dir.string() + "' has no config.json");
  c.config_ = read_json_file(config);
  if (!c.config_.is_object()) throw CheckpointError("'" + config.string() + "' is not a JSON object");

  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.is_regular_file()) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  for (const auto& n : names)
    if (matches_any(n, kSideFilePatterns)) {
      check_link_stays_inside(dir, n);
      c.side_files_.push_back(n);
    }

  const fs::path index_path = dir / "model.safetensors.index.json";
  std::map<std::string, std::string> expected_shard;  // tensor -> shard, from the index
  if (fs::exists(index_path)) {
    c.sharded_ = true;
    auto index = safetensors::parse_index(read_text_file(index_path), index_path.string());
    c.weight_files_ = index.shard_files();
    expected_shard = index.weight_map;
  } else if (fs::exists(dir / "model.safetensors")) {
    if (!fs::is_regular_file(dir / "model.safetensors"))
      throw CheckpointError("'" + (dir / "model.safetensors").string() + "' is not a regular file");
    c.weight_files_ = {"model.safetensors"};
  } else {
    std::vector<std::string> foreign;
    for (const auto& n : names)
      if (matches_any(n, kForeignWeightPatterns)) foreign.push_back(n);
    if (!foreign.empty())
      throw CheckpointError("model directory '" + dir.string() + "' holds only non-safetensors weights ('" +
                            foreign.front() +
                            "'); hawada-pipeline reads safetensors only (pickle files can run code when "
                            "loaded). Convert once with transformers: "
                            "AutoModel.from_pretrained(dir).save_pretrained(new_dir)  (safetensors is its default)");
    throw CheckpointError("model directory '" + dir.string() +
                          "' has no model.safetensors and no model.safetensors.index.json");
  }

  for (const auto& f : c.weight_files_)
    if (!fs::is_regular_file(dir / f))
      throw CheckpointError("'" + index_path.string() + "' names shard '" + f + "', which does not exist");
  for (size_t i = 0; i < c.weight_files_.size(); ++i) {
    const fs::path file = dir / c.weight_files_[i];
    auto reader = std::make_shared<safetensors::Reader>(file);
    for (const auto& t : reader->header().tensors) {
      auto [it, inserted] = c.where_.emplace(t.name, i);
      if (!inserted)
        throw CheckpointError("tensor '" + t.name + "' appears in both '" + c.weight_files_[it->second] + "' and '" +
                              c.weight_files_[i] + "'");
      if (c.sharded_) {
        auto e = expected_shard.find(t.name);
        if (e == expected_shard.end())
          throw CheckpointError("shard '" + file.string() + "' holds tensor '" + t.name + "', which '" +
                                index_path.string() + "' does not list");
        if (e->second != c.weight_files_[i])
          throw CheckpointError("shard '" + file.string() + "' holds tensor '" + t.name + "', which '" +
                                index_path.string() + "' places in '" + e->second + "'");
      }
    }
    c.readers_.push_back(std::move(reader));
  }
  for (const auto& [name, shard] : expected_shard)
    if (!c.where_.count(name))
      throw CheckpointError("'" + index_path.string() + "' lists tensor '" + name + "' in shard '" + shard +
                            "', which does not hold it");
  return c;
}

HfCheckpoint HfCheckpoint::in_memory(nlohmann::json config, const std::vector<safetensors::NamedTensor>& tensors,
                                     const fs::path& label) {
  HfCheckpoint c;
  c.dir_ = label;
  c.config_ = std::move(config);
  for (const auto& t : tensors) {
    if (c.where_.count(t.name)) throw CheckpointError("'" + label.string() + "': tensor '" + t.name + "' given twice");
    safetensors::TensorInfo info;
    info.name = t.name;
    info.dtype = safetensors::from_scalar_type(t.tensor.scalar_type(), t.name);
    info.shape = t.tensor.sizes().vec();
    info.end = static_cast<uint64_t>(t.tensor.numel()) * safetensors::dtype_size(info.dtype);
    c.where_.emplace(t.name, c.memory_.size());
    c.memory_.push_back(t.tensor.cpu().contiguous());
    c.memory_info_.push_back(std::move(info));
  }
  return c;
}

void export_keep_all(const HfCheckpoint& source, const fs::path& out_dir, std::optional<uint64_t> max_shard_bytes) {
  std::vector<safetensors::NamedTensor> tensors;
  for (const auto& name : source.tensor_names()) tensors.push_back({name, source.tensor(name)});
  publish_directory(out_dir, [&](const fs::path& tmp) {
    copy_file_synced(source.dir() / "config.json", tmp / "config.json");
    for (const auto& f : source.side_files()) copy_file_synced(source.dir() / f, tmp / f);
    if (max_shard_bytes || !source.sharded()) {
      safetensors::write_model_weights(tmp, tensors, max_shard_bytes.value_or(UINT64_MAX));
      return;
    }
    // Same shards as the source: each tensor goes back to the file it came from.
    std::vector<size_t> shard_of;
    for (const auto& t : tensors) shard_of.push_back(source.where_file(t.name));
    safetensors::write_sharded_weights(tmp, tensors, shard_of, source.weight_files());
  });
}

std::vector<std::string> HfCheckpoint::tensor_names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [name, i] : where_) out.push_back(name);
  return out;
}

const safetensors::TensorInfo& HfCheckpoint::info(std::string_view name) const {
  auto it = where_.find(std::string(name));
  if (it == where_.end())
    throw CheckpointError("model directory '" + dir_.string() + "' has no tensor '" + std::string(name) + "'");
  if (!memory_.empty()) return memory_info_[it->second];
  return readers_[it->second]->info(name);
}

at::Tensor HfCheckpoint::tensor(std::string_view name) const {
  info(name);  // throws naming the directory when absent
  if (!memory_.empty()) return memory_[where_.find(std::string(name))->second];
  return readers_[where_.find(std::string(name))->second]->tensor(name);
}

size_t HfCheckpoint::where_file(std::string_view name) const {
  info(name);  // throws naming the directory when absent
  return where_.find(std::string(name))->second;
}

const uint8_t* HfCheckpoint::bytes(std::string_view name) const {
  const auto& t = info(name);
  if (!memory_.empty()) return static_cast<const uint8_t*>(memory_[where_.find(std::string(name))->second].data_ptr());
  return readers_[where_.find(std::string(name))->second]->bytes(t);
}

uint64_t HfCheckpoint::total_numel() const {
  uint64_t n = 0;
  for (const auto& t : memory_info_) n += t.numel();
  for (const auto& r : readers_)
    for (const auto& t : r->header().tensors) n += t.numel();
  return n;
}

uint64_t HfCheckpoint::total_bytes() const {
  uint64_t n = 0;
  for (const auto& t : memory_info_) n += t.nbytes();
  for (const auto& r : readers_)
    for (const auto& t : r->header().tensors) n += t.nbytes();
  return n;
}

}  // namespace hawada
