#include "stages/export.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <chrono>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "core/fault.h"
#include "core/fs.h"
#include "core/hash.h"
#include "core/log.h"
#include "core/mpi_session.h"
#include "core/process.h"
#include "core/safetensors.h"
#include "core/shape_search.h"
#include "core/slicing.h"
#include "stages/student.h"

namespace hawada {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string hf_dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    default: return c10::toString(t);
  }
}

// Gate values of the hard-gated student: deterministic hard-concrete values on the kept structures
// (a structure the legal rounding had to keep although training closed its gate keeps value 1),
// 0 elsewhere; hidden channels are kept (1) or not (0) so that norms over kept channels match.
GateValues student_gates(const GateParameters& gates, const HardConcrete& hc, const Plan& plan) {
  GateValues v;
  auto per_layer = [&](const at::Tensor& log_alpha, const std::vector<std::vector<int64_t>>& kept) {
    const at::Tensor det = hc.deterministic(log_alpha.detach());
    at::Tensor keep = at::zeros(det.sizes(), det.options().dtype(at::kBool));
    for (size_t l = 0; l < kept.size(); ++l) keep[static_cast<int64_t>(l)].index_fill_(0, index_tensor(kept[l]), true);
    return at::where(keep, at::where(det > 0, det, at::ones_like(det)), at::zeros_like(det));
  };
  if (gates.heads.defined()) v.heads = per_layer(gates.heads, plan.heads);
  if (gates.ffn.defined()) v.ffn = per_layer(gates.ffn, plan.ffn);
  if (plan.chosen.shape.hidden != plan.dense.shape.hidden) {
    v.hidden = at::zeros({plan.dense.shape.hidden}, at::kFloat).index_fill_(0, index_tensor(plan.hidden), 1.0);
  }
  return v;
}

}  // namespace

std::string ExportStage::fingerprint(const StageContext& ctx) {
  const Config& c = ctx.config;
  Hasher h;
  h.update("export/1");
  h.update(ctx.fingerprints.at("rounding_search"));
  h.update(c.export_.name);
  h.update_u64(c.export_.max_shard_size);
  h.update_u64(static_cast<uint64_t>(c.export_.dtype));
  h.update_u64(static_cast<uint64_t>(c.train.holdout));
  h.update(c10::toString(compute_dtype(c)));
  return hex64(h.digest());
}

void ExportStage::run(const StageContext& ctx) {
  const Config& c = ctx.config;
  const auto& proc = process_info();
  LoadedModel lm = load_model(c, /*weights=*/false);
  const GatesConfig gates_config = effective_gates(c, lm.arch);
  const fs::path plan_file = ctx.run_dir / "plan" / "plan.json";
  const Plan plan = plan_from_json(read_json_file(plan_file), lm.shape, plan_file.string());
  HardConcrete hc;
  hc.beta = c.gates.temperature;
  GateParameters gates(gates_config, lm.arch.layers > 0 ? GateShape{lm.arch.layers, lm.arch.heads, lm.arch.ffn, lm.arch.hidden}
                                                        : GateShape{});
  {
    const safetensors::Reader trained(trained_gates_file(ctx.run_dir));
    gates.load(trained);
  }
  at::NoGradGuard no_grad;
  const GateValues student = student_gates(gates, hc, plan);

  // Slice (every rank: each needs the sizes for the shard plan, and its own shards' bytes).
  const auto t0 = Clock::now();
  std::vector<safetensors::NamedTensor> tensors = lm.adapter->prune_weights(lm.checkpoint, plan, student);
  at::ScalarType out_dtype = at::kFloat;
  bool first = true;
  for (auto& t : tensors) {
    if (c.export_.dtype == ExportDtype::bf16 && t.tensor.is_floating_point()) t.tensor = t.tensor.to(at::kBFloat16);
    if (c.export_.dtype == ExportDtype::fp32 && t.tensor.is_floating_point()) t.tensor = t.tensor.to(at::kFloat);
    if (first && t.tensor.is_floating_point()) out_dtype = t.tensor.scalar_type(), first = false;
  }
  std::vector<uint64_t> sizes;
  uint64_t total_bytes = 0;
  for (const auto& t : tensors) {
    sizes.push_back(static_cast<uint64_t>(t.tensor.nbytes()));
    total_bytes += sizes.back();
  }
  const std::vector<size_t> shard_of = safetensors::plan_shards(sizes, c.export_.max_shard_size);
  const size_t count = shard_of.empty() ? 1 : shard_of.back() + 1;
  std::vector<std::string> files;
  for (size_t s = 0; s < count; ++s) files.push_back(count == 1 ? "model.safetensors" : safetensors::shard_file_name(s + 1, count));

  const fs::path export_dir = ctx.run_dir / "export", final_dir = export_dir / c.export_.name;
  const fs::path tmp = export_dir / ("." + c.export_.name + ".partial");
  if (proc.rank == 0) {
    fs::create_directories(export_dir);
    fs::remove_all(tmp);  // a killed earlier attempt
    fs::create_directories(tmp);
  }
  world::barrier();
  // Shards in parallel: rank r writes shards r, r + W, ...
  for (size_t s = static_cast<size_t>(proc.rank); s < count; s += static_cast<size_t>(proc.size)) {
    std::vector<safetensors::NamedTensor> mine;
    for (size_t i = 0; i < tensors.size(); ++i)
      if (shard_of[i] == s) mine.push_back(tensors[i]);
    safetensors::write_file(tmp / files[s], mine);
    fault_point("export.after_shard");
  }
  world::barrier();
  if (proc.rank == 0) {
    if (count > 1) {
      safetensors::ShardIndex index;
      index.total_size = total_bytes;
      for (size_t i = 0; i < tensors.size(); ++i) index.weight_map[tensors[i].name] = files[shard_of[i]];
      atomic_write_text(tmp / "model.safetensors.index.json", safetensors::index_to_json(index));
    }
    nlohmann::json config = lm.adapter->pruned_config(lm.checkpoint.config(), plan);
    config["dtype"] = hf_dtype_name(out_dtype);
    config["torch_dtype"] = hf_dtype_name(out_dtype);
    atomic_write_text(tmp / "config.json", config.dump(2) + "\n");
    for (const auto& f : lm.checkpoint.side_files()) copy_file_synced(c.model.path / f, tmp / f);
    sync_directory(tmp);
    fault_point("export.before_publish");
    // A previous export of other inputs under the same name is replaced only once this one is whole.
    const fs::path replaced = export_dir / ("." + c.export_.name + ".replaced");
    fs::remove_all(replaced);
    if (fs::exists(final_dir)) rename_into(final_dir, replaced);
    rename_into(tmp, final_dir);
    fs::remove_all(replaced);
  }
  world::barrier();
  const double write_s = std::chrono::duration<double>(Clock::now() - t0).count();
  log::info("export: " + final_dir.string() + ": " + std::to_string(tensors.size()) + " tensors, " +
            std::to_string(total_bytes / 1000000) + " MB in " + std::to_string(count) + " shard(s), " +
            std::to_string(total_bytes / std::max(write_s, 1e-9) / 1e9).substr(0, 5) + " GB/s (slice + write)");

  if (proc.rank != 0) {
    world::barrier();
    return;
  }
  // Verify: the export (our forward) against the hard-gated student on held-out samples.
  const auto data = open_data(c, lm.arch);
  const int64_t n = data->size();
  const bool held_out = c.train.holdout > 0;
  const int64_t first_sample = held_out ? n - c.train.holdout : 0, samples = held_out ? c.train.holdout : std::min<int64_t>(8, n);
  const at::Device device = run_device(c);
  const auto dense = lm.adapter->load(lm.checkpoint, {compute_dtype(c), device});
  const HfCheckpoint exported = HfCheckpoint::open(final_dir);
  const auto slim = lm.adapter->load(exported, {compute_dtype(c), device});
  auto on_device = [&](const at::Tensor& t) { return t.defined() ? t.to(device) : t; };
  const GateValues student_on_device{on_device(student.heads), on_device(student.ffn), on_device(student.hidden)};
  double max_abs = 0, max_ref = 0;
  for (int64_t s = first_sample; s < first_sample + samples; ++s) {
    const Batch b = to_device(data->read(s, 1), device);
    const at::Tensor want = dense->logits(b, &student_on_device).to(at::kFloat), got = slim->logits(b).to(at::kFloat);
    max_abs = std::max(max_abs, (want - got).abs().max().item<double>());
    max_ref = std::max(max_ref, want.abs().max().item<double>());
  }
  const bool exact_dtypes = out_dtype == at::kFloat && compute_dtype(c) == at::kFloat;
  const double tolerance = exact_dtypes ? 1e-4 : 5e-2;
  const double rel = max_abs / std::max(max_ref, 1e-30);
  const bool passed = rel <= tolerance;
  const ModelShape& s = plan.chosen.shape;
  nlohmann::json summary{
      {"export", final_dir.string()},
      {"shape", {{"hidden_size", s.hidden}, {"num_attention_heads", s.heads}, {"num_key_value_heads", s.kv_heads},
                 {"intermediate_size", s.ffn}, {"num_hidden_layers", s.layers}}},
      {"parameters", plan.chosen.parameters},
      {"dense_parameters", plan.dense.parameters},
      {"dtype", hf_dtype_name(out_dtype)},
      {"shards", count},
      {"bytes", total_bytes},
      {"verify",
       {{"samples", samples}, {"held_out", held_out}, {"max_abs_diff", max_abs}, {"max_abs_logit", max_ref},
        {"relative", rel}, {"tolerance", tolerance}, {"passed", passed}}}};
  atomic_write_text(export_dir / "summary.json", summary.dump(2) + "\n");
  char line[256];
  std::snprintf(line, sizeof line, "export: verify on %lld %s samples: max |export - student| %.3g (%.3g of max |logit|, tolerance %.0e): %s",
                static_cast<long long>(samples), held_out ? "held-out" : "training", max_abs, rel, tolerance,
                passed ? "equal" : "DIFFERENT");
  log::info(line);
  world::barrier();
  if (!passed)
    throw CheckpointError("export: '" + final_dir.string() + "' does not reproduce the hard-gated student (relative " +
                          std::to_string(rel) + " > " + std::to_string(tolerance) + "); see " +
                          (export_dir / "summary.json").string());
}

}  // namespace hawada
