#include "pipeline/tools/runtime_rates.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <thread>
#include <tuple>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "adapters/adapter.h"
#include "adapters/model.h"
#include "core/base/errors.h"
#include "core/base/fs.h"
#include "core/base/hash.h"
#include "core/base/json_input.h"
#include "core/base/log.h"
#include "core/io/checkpoint.h"
#include "core/io/safetensors.h"
#include "core/prune/shape_search.h"
#include "runtimes/llama_cpp.h"
#include "runtimes/llama_cpp_eval.h"

namespace hawada {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr int kNewTokens = 64;         // llama-bench -n: decode tokens timed after the KV cache is filled
constexpr double kDecodeFlops = 1e13;  // a decode step reads weights: the product's FLOP/s never binds

// The cut shapes timed, as fractions of the dense (blocks, query heads, FFN): the dense model, width cuts, depth
// cuts and both, spanning what a decode budget between 0.3 and 1 picks.
constexpr double kFractions[][3] = {{1.0, 1.0, 1.0},      {1.0, 1.0, 5.0 / 12}, {1.0, 2.0 / 3, 1.0 / 6},
                                    {0.4, 1.0, 7.0 / 12}, {0.5, 1.0, 0.5},      {0.2, 1.0, 1.0}};

// The legal shape nearest to the fractions of `dense` (heads in whole kv groups, FFN a multiple of 32); nullopt
// when transformers would not load it.
std::optional<ModelShape> cut_shape(const ModelShape& dense, const double (&f)[3]) {
  ModelShape s = dense;
  s.layers = std::max<int64_t>(1, std::llround(static_cast<double>(dense.layers) * f[0]));
  if (dense.traits.kv_groups) {
    const int64_t per = dense.heads / dense.kv_heads;
    s.heads = dense.kv_heads * std::max<int64_t>(1, std::llround(static_cast<double>(per) * f[1]));
  } else if (!dense.traits.hidden_is_heads) {
    s.heads = s.kv_heads = std::max<int64_t>(1, std::llround(static_cast<double>(dense.heads) * f[1]));
  }
  s.ffn = std::min(dense.ffn, std::max<int64_t>(32, std::llround(static_cast<double>(dense.ffn) * f[2] / 32) * 32));
  if (!transformers_violation(s, dense).empty()) return std::nullopt;
  return s;
}

// The plan of a cut shape: the first blocks, heads and channels (llama.cpp's speed does not depend on which).
Plan cut_plan(const ModelShape& dense, const ModelShape& s) {
  StructureScores zero;
  zero.heads.assign(static_cast<size_t>(dense.layers), std::vector<double>(static_cast<size_t>(dense.heads), 0.0));
  zero.ffn.assign(static_cast<size_t>(dense.layers), std::vector<double>(static_cast<size_t>(dense.ffn), 0.0));
  for (int64_t l = 0; l < dense.layers; ++l) zero.layers.push_back(l < s.layers ? 1.0 : 0.0);
  Candidate chosen, whole;
  chosen.shape = s;
  whole.shape = dense;
  Plan p = plan_for(dense, zero, chosen, CostSpec{}, whole);
  if (p.layers.empty())  // every block kept: plan_for names them only when a layer score asks it to choose
    for (int64_t l = 0; l < s.layers; ++l) p.layers.push_back(l);
  return p;
}

// Writes the Hugging Face directory of `plan` cut from `ckpt` (its dtype, its side files) into `dir`.
void write_cut(const HfCheckpoint& ckpt, const ModelAdapter& adapter, const Plan& plan, const fs::path& dir) {
  const auto weights = adapter.prune_weights(ckpt, plan, GateValues{});
  publish_directory(dir, [&](const fs::path& tmp) {
    atomic_write_text(tmp / "config.json", adapter.pruned_config(ckpt.config(), plan).dump(2) + "\n");
    for (const auto& f : ckpt.side_files()) copy_file_synced(ckpt.dir() / f, tmp / f);
    safetensors::write_model_weights(tmp, weights, 5'000'000'000ULL);
  });
}

// The cost model's bytes of one decode step at `context` (2-byte elements): its latency at 1 byte/s, no overhead.
double decode_bytes(const ModelShape& s, int64_t context) {
  return latency_seconds(s, 1, 1, DeviceRates{1e300, 1.0, 0.0}, 2, context);
}

// Least squares of seconds = bytes / bandwidth + blocks x overhead (overhead >= 0).
DeviceRates fit(const std::vector<double>& bytes, const std::vector<double>& blocks, const std::vector<double>& secs) {
  double xx = 0, xl = 0, ll = 0, xy = 0, ly = 0;
  for (size_t i = 0; i < secs.size(); ++i) {
    xx += bytes[i] * bytes[i], xl += bytes[i] * blocks[i], ll += blocks[i] * blocks[i];
    xy += bytes[i] * secs[i], ly += blocks[i] * secs[i];
  }
  const double det = xx * ll - xl * xl;
  double inv_bw = det > 0 ? (xy * ll - ly * xl) / det : 0, overhead = det > 0 ? (xx * ly - xl * xy) / det : 0;
  if (!(overhead > 0) || !(inv_bw > 0)) overhead = 0, inv_bw = xy / xx;  // a negative block cost: bandwidth only
  return DeviceRates{kDecodeFlops, 1.0 / inv_bw, overhead};
}

json rates_json(const RuntimeRates& r, const json& shapes) {
  json j = {{"format_version", 1},
            {"runtime", r.runtime},
            {"gguf", gguf_type_name(r.type)},
            {"threads", r.threads},
            {"context", r.context},
            {"device_flops", r.rates.flops_per_s},
            {"device_bandwidth", r.rates.bytes_per_s},
            {"layer_overhead_s", r.rates.layer_overhead_s},
            {"max_fit_error", r.max_fit_error},
            {"shapes", shapes}};
  Hasher h;  // of everything above: a flipped bit in a rate is found when the file is read
  h.update(j.dump());
  j["xxh64"] = hex64(h.digest());
  return j;
}

GgufType gguf_type_from(const std::string& name, const std::string& file) {
  for (GgufType t : {GgufType::f16, GgufType::q8_0, GgufType::q4_k_m})
    if (gguf_type_name(t) == name) return t;
  throw CheckpointError("'" + file + "': unknown gguf type '" + name + "' (expected f16, q8_0 or q4_k_m)");
}

}  // namespace

std::array<int64_t, 5> shape_key(const ModelShape& s) { return {s.layers, s.hidden, s.heads, s.kv_heads, s.ffn}; }

RuntimeRates measure_runtime_rates(const fs::path& model_dir, const fs::path& out, const fs::path& work_dir,
                                   const RuntimeRatesOptions& o) {
  const HfCheckpoint ckpt = HfCheckpoint::open(model_dir);
  const ModelAdapter& adapter = adapter_for(ckpt.config(), model_dir / "config.json");
  const ModelShape dense = model_shape(adapter.summarize_checkpoint(ckpt));
  if (!dense.traits.causal || dense.traits.output != ModelOutput::token_logits)
    throw UsageError("profile --runtime llama.cpp: '" + model_dir.string() +
                     "' is not a causal language model (llama.cpp's decode budget is for one)");
  const GgufType types[] = {o.type};
  const LlamaCpp make = find_llama_cpp(o.llama_cpp, o.python, types);
  const LlamaCppMeasure tools = find_llama_cpp_measure(o.llama_cpp, "budget.runtime");
  const int threads = o.threads > 0 ? o.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  std::vector<ModelShape> shapes;
  std::set<std::tuple<int64_t, int64_t, int64_t>> seen;
  for (const auto& f : kFractions)
    if (const auto s = cut_shape(dense, f); s && seen.insert({s->layers, s->heads, s->ffn}).second)
      shapes.push_back(*s);
  std::set<int64_t> depths;
  for (const ModelShape& s : shapes) depths.insert(s.layers);
  if (shapes.size() < 3 || depths.size() < 2)
    throw CheckpointError(
        fmt::format("profile --runtime llama.cpp: '{}' ({} blocks, FFN {}) gives {} distinct cut "
                    "shapes at {} depths; fitting the bandwidth and the block cost needs 3 at 2",
                    model_dir.string(), dense.layers, dense.ffn, shapes.size(), depths.size()));
  fs::create_directories(work_dir);
  const fs::path logs = work_dir / "logs";
  std::vector<fs::path> files;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const std::string name = "cut" + std::to_string(i);
    const fs::path hf = work_dir / name, gguf_dir = work_dir / (name + "-gguf");
    fs::remove_all(hf);  // an earlier try's cut may be of another model: cut again (a second per shape)
    write_cut(ckpt, adapter, cut_plan(dense, shapes[i]), hf);
    files.push_back(write_gguf(make, hf, gguf_dir, name, types, threads, logs).front().path);
    log::info(fmt::format("profile: {} blocks, {} heads, FFN {}: {}", shapes[i].layers, shapes[i].heads, shapes[i].ffn,
                          files.back().string()));
  }
  const auto speed = llama_bench(tools, files, 0, kNewTokens, o.repeats, threads, work_dir / "bench.json",
                                 logs / "bench.log", o.context);

  std::vector<double> bytes, blocks, secs;
  for (size_t i = 0; i < shapes.size(); ++i) {
    bytes.push_back(decode_bytes(shapes[i], o.context));
    blocks.push_back(static_cast<double>(shapes[i].layers));
    secs.push_back(1.0 / speed[i].decode_tokens_per_s);
  }
  RuntimeRates r;
  r.dense = shape_key(dense);
  r.type = o.type;
  r.threads = threads;
  r.context = o.context;
  r.rates = fit(bytes, blocks, secs);
  json rows = json::array();
  for (size_t i = 0; i < shapes.size(); ++i) {
    const double fitted = latency_seconds(shapes[i], 1, 1, r.rates, 2, o.context);
    r.max_fit_error = std::max(r.max_fit_error, std::abs(fitted / secs[i] - 1));
    rows.push_back({{"layers", shapes[i].layers},
                    {"heads", shapes[i].heads},
                    {"kv_heads", shapes[i].kv_heads},
                    {"ffn", shapes[i].ffn},
                    {"hidden", shapes[i].hidden},
                    {"decode_tokens_per_s", speed[i].decode_tokens_per_s},
                    {"measured_s", secs[i]},
                    {"fitted_s", fitted}});
  }
  atomic_write_text(out, rates_json(r, rows).dump(1) + "\n");
  log::info(
      fmt::format("profile: llama.cpp {} decode at a KV cache of {}, {} threads: device_bandwidth {:.4g}, "
                  "layer_overhead_s {:.4g}, fitted within {:.1f}% on {} shapes: {}",
                  gguf_type_name(o.type), o.context, threads, r.rates.bytes_per_s, r.rates.layer_overhead_s,
                  100 * r.max_fit_error, shapes.size(), out.string()));
  return r;
}

RuntimeRates read_runtime_rates(const fs::path& file) {
  const std::string name = file.string();
  const json j = read_json_file(file);
  try {
    RuntimeRates r;
    if (json_int(j.at("format_version")) != 1) throw CheckpointError("'" + name + "': unknown format_version");
    r.runtime = j.at("runtime").get<std::string>();
    if (r.runtime != "llama.cpp")
      throw CheckpointError("'" + name + "': runtime '" + r.runtime + "' (expected \"llama.cpp\")");
    r.type = gguf_type_from(j.at("gguf").get<std::string>(), name);
    r.threads = static_cast<int>(json_int(j.at("threads")));
    r.context = json_int(j.at("context"));
    r.rates = {j.at("device_flops").get<double>(), j.at("device_bandwidth").get<double>(),
               j.at("layer_overhead_s").get<double>()};
    r.max_fit_error = j.at("max_fit_error").get<double>();
    const json& first = j.at("shapes").at(0);
    r.dense = {json_int(first.at("layers")), json_int(first.at("hidden")), json_int(first.at("heads")),
               json_int(first.at("kv_heads")), json_int(first.at("ffn"))};
    if (!(r.rates.flops_per_s > 0) || !(r.rates.bytes_per_s > 0) || !(r.rates.layer_overhead_s >= 0) ||
        !std::isfinite(r.rates.bytes_per_s) || !std::isfinite(r.rates.layer_overhead_s))
      throw CheckpointError("'" + name + "': device_flops and device_bandwidth must be > 0 and finite, " +
                            "layer_overhead_s >= 0");
    if (!j.contains("xxh64") || j["xxh64"] != rates_json(r, j.at("shapes"))["xxh64"])
      throw CheckpointError("'" + name +
                            "': the rates do not match the checksum written with them (a flipped bit, a torn write "
                            "or a hand edit; measure them again with hawada-pipeline profile --runtime llama.cpp)");
    return r;
  } catch (const json::exception& e) {
    throw CheckpointError("'" + name + "': malformed runtime rates: " + e.what());
  }
}

}  // namespace hawada
