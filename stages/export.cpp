#include "stages/export.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>

#include <nlohmann/json.hpp>

#include "core/base/errors.h"
#include "core/base/fault.h"
#include "core/base/fs.h"
#include "core/base/hash.h"
#include "core/base/log.h"
#include "core/dist/mpi_session.h"
#include "core/base/process.h"
#include "core/io/safetensors.h"
#include "core/prune/shape_search.h"
#include "core/prune/slicing.h"
#include "stages/heal.h"
#include "training/student.h"

namespace hawada {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// Held-out samples verified; the relative L2 tolerance of fp32 computations that must be the same
// function (summation order only; a slice off by one channel gives 0.3 and more on SmolLM2-135M), and
// the size of the bf16/fp16 rounding effect above which a warning says so (SmolLM2-135M: 2e-3 to 3e-2).
constexpr int64_t kVerifySamples = 8;
constexpr double kIdentityTolerance = 1e-4, kRoundingWarn = 5e-2;

std::string fmt_g(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.3g", v);
  return b;
}

std::string hf_dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    default: return c10::toString(t);
  }
}

// Relative L2 distance of two logit tensors, NaN-aware: a non-finite value anywhere is infinitely far.
struct Distance {
  double sq_diff = 0, sq_ref = 0, max_abs = 0, max_ref = 0;
  bool finite = true;
  void add(const at::Tensor& want, const at::Tensor& got) {
    const at::Tensor w = want.to(at::kDouble), g = got.to(at::kDouble);
    if (!at::isfinite(w).all().item<bool>() || !at::isfinite(g).all().item<bool>()) finite = false;
    const at::Tensor d = (w - g);
    sq_diff += d.pow(2).sum().item<double>();
    sq_ref += w.pow(2).sum().item<double>();
    max_abs = std::max(max_abs, d.abs().max().item<double>());
    max_ref = std::max(max_ref, w.abs().max().item<double>());
  }
  double relative() const {
    if (!finite || !std::isfinite(sq_diff)) return std::numeric_limits<double>::infinity();
    return std::sqrt(sq_diff / std::max(sq_ref, 1e-300));
  }
};

// For the verify test (HAWADA_FAULT=export.wrong_slice@R:flag): the output projection of every MLP reads
// its kept channels off by one, the kind of slicing bug verify must catch before anything is published.
void break_slice_for_test(std::vector<safetensors::NamedTensor>& tensors, const ModelAdapter& adapter, const Plan& plan) {
  if (!fault_flag("export.wrong_slice")) return;
  for (auto& t : tensors)
    if (t.tensor.dim() == 2 && adapter.weight_kind(t.name) == "mlp" && t.tensor.size(1) == plan.chosen.shape.ffn)
      t.tensor = t.tensor.roll(1, 1).contiguous();
}

// Outputs of `model` on held-out samples (logits; an encoder's hidden states), for the comparisons of verify.
std::vector<at::Tensor> logits_of(const Model& model, const DataSource& data, int64_t first, int64_t count,
                                  const at::Device& device, const GateValues* gates = nullptr) {
  std::vector<at::Tensor> out;
  for (int64_t s = first; s < first + count; ++s)
    out.push_back(model.logits(to_device(data.read(s, 1), device), gates).to(at::kFloat).cpu());
  return out;
}

Distance distance(const std::vector<at::Tensor>& want, const std::vector<at::Tensor>& got) {
  Distance d;
  for (size_t i = 0; i < want.size(); ++i) d.add(want[i], got[i]);
  return d;
}

nlohmann::json finite_json(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json("non-finite"); }

}  // namespace

std::string ExportStage::fingerprint(const StageContext& ctx) {
  const Config& c = ctx.config;
  Hasher h;
  h.update("export/2");
  h.update(ctx.fingerprints.at(std::string(stage_names::rounding_search)));
  h.update(ctx.fingerprints.at(std::string(stage_names::calibrate)));
  h.update(ctx.fingerprints.at(std::string(stage_names::heal)));
  h.update_u64(static_cast<uint64_t>(c.heal.steps > 0));
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
  const Plan plan = read_plan(ctx.run_dir, lm.shape);
  const Scales scales = Scales::read(RunLayout(ctx.run_dir).scales(), plan);
  at::NoGradGuard no_grad;
  const GateValues student = student_gates(plan, scales);

  // Slice (every rank: each needs the sizes for the shard plan, and its own shards' bytes).
  const auto t0 = Clock::now();
  std::vector<safetensors::NamedTensor> tensors = lm.adapter->prune_weights(lm.checkpoint, plan, student);
  // A healed run writes the healed weights (fp32 on disk) in the dtype each tensor is stored in.
  const bool healed = c.heal.steps > 0;
  std::unique_ptr<safetensors::Reader> healed_file;
  if (healed) {
    healed_file = std::make_unique<safetensors::Reader>(RunLayout(ctx.run_dir).healed_weights());
    for (auto& t : tensors) {
      if (!healed_file->contains(t.name))
        throw CheckpointError("'" + healed_file->path().string() + "' has no tensor '" + t.name + "'");
      const at::Tensor h = healed_file->tensor(t.name);
      if (h.sizes() != t.tensor.sizes())
        throw CheckpointError("'" + healed_file->path().string() + "': tensor '" + t.name + "' has shape " +
                              c10::str(h.sizes()) + ", the plan's slice " + c10::str(t.tensor.sizes()));
      t.tensor = h.to(t.tensor.scalar_type()).contiguous();
    }
  }
  break_slice_for_test(tensors, *lm.adapter, plan);
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

  const RunLayout layout(ctx.run_dir);
  const fs::path export_dir = layout.export_dir(), final_dir = layout.exported_model(c.export_.name);
  const fs::path tmp = export_dir / ("." + c.export_.name + ".partial");
  const fs::path failed = export_dir / ("." + c.export_.name + ".failed");
  if (proc.rank == 0) {
    fs::create_directories(export_dir);
    fs::remove_all(tmp);  // a killed earlier attempt
    fs::remove_all(failed);
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
  }
  tensors.clear();
  world::barrier();
  const double write_s = std::chrono::duration<double>(Clock::now() - t0).count();
  log::info("export: " + tmp.string() + ": " + std::to_string(shard_of.size()) + " tensors, " +
            std::to_string(total_bytes / 1000000) + " MB in " + std::to_string(count) + " shard(s), " +
            std::to_string(total_bytes / std::max(write_s, 1e-9) / 1e9).substr(0, 5) + " GB/s (slice + write)");

  // Verify before publishing, on rank 0's device, in fp32, on up to kVerifySamples held-out samples:
  //  1. identity: the plan's slice in fp32 (folds unrounded) computes what the hard-gated student (the
  //     dense model with scales and masks applied at run time) computes, to fp32 summation order (a
  //     healed run: the slice is the healed model itself);
  //  2. bytes: every tensor of the written directory is exactly that slice (or the healed weights)
  //     rounded once to the stored dtype;
  //  3. the written export's logits against the reference: equal to summation order for an fp32 export;
  //     for bf16/fp16 the effect of the rounding, reported. Non-finite values fail everything.
  uint64_t passed = 0;
  nlohmann::json verify;
  if (proc.rank == 0) {
    const auto data = open_data(c, lm.arch);
    const int64_t n = data->size();
    const bool held_out = c.train.holdout > 0;
    const int64_t samples = held_out ? std::min<int64_t>(c.train.holdout, kVerifySamples) : std::min<int64_t>(kVerifySamples, n);
    const int64_t first_sample = held_out ? n - c.train.holdout : 0;
    const at::Device device = run_device(c);
    const nlohmann::json pruned_config = lm.adapter->pruned_config(lm.checkpoint.config(), plan);
    // The exact values the file must hold, in fp32.
    std::vector<safetensors::NamedTensor> exact;
    if (healed) {
      for (const auto& t : healed_file->header().tensors) exact.push_back({t.name, healed_file->tensor(t.name)});
    } else {
      exact = lm.adapter->prune_weights(lm.checkpoint, plan, student, at::kFloat);
      break_slice_for_test(exact, *lm.adapter, plan);
    }
    const HfCheckpoint exact_ckpt = HfCheckpoint::in_memory(pruned_config, exact, tmp / "(fp32 slice)");
    const auto reference = lm.adapter->load(exact_ckpt, {at::kFloat, device});
    const std::vector<at::Tensor> want_ref = logits_of(*reference, *data, first_sample, samples, device);

    // 1. identity
    Distance identity;
    if (!healed) {
      const auto dense = lm.adapter->load(lm.checkpoint, {at::kFloat, device});
      auto on_device = [&](const at::Tensor& t) { return t.defined() ? t.to(device) : t; };
      const GateValues gates{on_device(student.heads), on_device(student.ffn), on_device(student.hidden), on_device(student.layers),
                             on_device(student.attn_out), on_device(student.mlp_out)};
      std::vector<at::Tensor> gated = logits_of(*dense, *data, first_sample, samples, device, &gates);
      // An encoder's outputs are its hidden states: the gated model's are the teacher's width (zeros on
      // the dropped channels), the slice's the kept channels.
      const at::Tensor kept = at::tensor(plan.hidden, at::kLong);
      for (size_t i = 0; i < gated.size(); ++i)
        if (gated[i].size(-1) != want_ref[i].size(-1) && gated[i].size(-1) == plan.dense.shape.hidden)
          gated[i] = gated[i].index_select(-1, kept);
      identity = distance(gated, want_ref);
    }
    // 2. bytes
    const HfCheckpoint exported = HfCheckpoint::open(tmp);
    std::string bytes_mismatch;
    for (const auto& t : exact) {
      if (!exported.contains(t.name)) { bytes_mismatch = t.name + " (missing)"; break; }
      const at::Tensor written = exported.tensor(t.name);
      if (written.sizes() != t.tensor.sizes() || !at::equal(written, t.tensor.to(written.scalar_type()))) {
        bytes_mismatch = t.name;
        break;
      }
    }
    // 3. the written export's logits
    const auto slim = lm.adapter->load(exported, {at::kFloat, device});
    const Distance rounding = distance(want_ref, logits_of(*slim, *data, first_sample, samples, device));

    const double id_rel = healed ? 0.0 : identity.relative(), round_rel = rounding.relative();
    const bool id_ok = healed || (identity.finite && id_rel <= kIdentityTolerance);
    // fp32 exports hold the reference's exact values, so their logits must agree to summation order; a
    // 16-bit export differs by its rounding, which is reported (and warned about when large) but is what
    // the stored dtype means: the forward passes of calibration and heal used the same rounded weights.
    const bool round_ok = rounding.finite && (out_dtype != at::kFloat || round_rel <= kIdentityTolerance);
    if (rounding.finite && out_dtype != at::kFloat && round_rel > kRoundingWarn)
      log::warn("export: rounding the weights to " + hf_dtype_name(out_dtype) + " changes the logits by " +
                fmt_g(round_rel) + " (relative L2); export.dtype = \"fp32\" keeps them exact");
    passed = id_ok && bytes_mismatch.empty() && round_ok ? 1 : 0;
    verify = {{"samples", samples}, {"held_out", held_out}, {"compute_dtype", "float32"},
              {"identity_relative_l2", finite_json(id_rel)}, {"identity_tolerance", kIdentityTolerance},
              {"bytes_equal", bytes_mismatch.empty()},
              {"relative_l2", finite_json(round_rel)},
              {"max_abs_diff", finite_json(rounding.max_abs)}, {"max_abs_logit", finite_json(rounding.max_ref)},
              {"tolerance", out_dtype == at::kFloat ? kIdentityTolerance : kRoundingWarn},
              {"finite", identity.finite && rounding.finite}, {"passed", passed == 1}};
    if (!bytes_mismatch.empty()) verify["bytes_mismatch"] = bytes_mismatch;
    char line[400];
    std::snprintf(line, sizeof line,
                  "export: verify on %lld %s samples (fp32): %s; the written tensors %s; the written export's logits "
                  "differ from the reference by %.3g (relative L2, the rounding to %s): %s",
                  static_cast<long long>(samples), held_out ? "held-out" : "training",
                  healed ? "healed weights" : ("slice = hard-gated student to " + fmt_g(id_rel)).c_str(),
                  bytes_mismatch.empty() ? "are the slice's exact values" : ("DIFFER at '" + bytes_mismatch + "'").c_str(),
                  round_rel, hf_dtype_name(out_dtype).c_str(), passed ? "equal" : "DIFFERENT");
    log::info(line);
    if (passed) {
      fault_point("export.before_publish");
      // A previous export of other inputs under the same name is replaced only once this one is whole.
      const fs::path replaced = export_dir / ("." + c.export_.name + ".replaced");
      fs::remove_all(replaced);
      if (fs::exists(final_dir)) rename_into(final_dir, replaced);
      rename_into(tmp, final_dir);
      fs::remove_all(replaced);
    } else {
      // Kept for inspection under a name nothing loads by accident; the final name is not touched.
      rename_into(tmp, failed);
    }
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
        {"healed", healed},
        {"verify", verify}};
    if (passed) atomic_write_text(layout.export_summary(), summary.dump(2) + "\n");
    else atomic_write_text(layout.failed_export_summary(), summary.dump(2) + "\n");
  }
  passed = world::broadcast(passed);
  if (!passed)
    throw CheckpointError("export: the written model does not reproduce the hard-gated student (see " +
                          layout.failed_export_summary().string() + "); it was not published: " +
                          failed.string());
}

}  // namespace hawada
