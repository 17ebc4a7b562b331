#include "stages/export.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <chrono>
#include <cmath>
#include <exception>
#include <limits>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/base/errors.h"
#include "core/base/fault.h"
#include "core/base/fs.h"
#include "core/base/hash.h"
#include "core/base/log.h"
#include "core/base/process.h"
#include "core/dist/mpi_session.h"
#include "core/io/safetensors.h"
#include "core/prune/shape_search.h"
#include "core/prune/slicing.h"
#include "runtimes/llama_cpp.h"
#include "runtimes/tool.h"
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

std::string hf_dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return "float32";
    case at::kBFloat16:
      return "bfloat16";
    case at::kHalf:
      return "float16";
    default:
      return c10::toString(t);
  }
}

// Relative L2 distance of two logit tensors, NaN-aware: a non-finite value anywhere is infinitely far.
struct Distance {
  double sq_diff = 0, sq_ref = 0, max_abs = 0, max_ref = 0;
  bool finite = true;
  // In chunks of 16M values, in fp64: a sample's [tokens, vocab] logits are up to gigabytes in fp32 already.
  void add(const at::Tensor& want, const at::Tensor& got) {
    constexpr int64_t kChunk = 16ll << 20;
    if (want.sizes() != got.sizes()) {
      finite = false;  // nothing to compare value by value: as far as can be
      return;
    }
    const at::Tensor wf = want.reshape(-1), gf = got.reshape(-1);
    for (int64_t a = 0; a < wf.numel(); a += kChunk) {
      const int64_t n = std::min(kChunk, wf.numel() - a);
      const at::Tensor w = wf.narrow(0, a, n).to(at::kDouble), g = gf.narrow(0, a, n).to(at::kDouble);
      if (!at::isfinite(w).all().item<bool>() || !at::isfinite(g).all().item<bool>()) finite = false;
      const at::Tensor d = w - g;
      sq_diff += d.pow(2).sum().item<double>();
      sq_ref += w.pow(2).sum().item<double>();
      max_abs = std::max(max_abs, d.abs().max().item<double>());
      max_ref = std::max(max_ref, w.abs().max().item<double>());
    }
  }
  double relative() const {
    if (!finite || !std::isfinite(sq_diff)) return std::numeric_limits<double>::infinity();
    return std::sqrt(sq_diff / std::max(sq_ref, 1e-300));
  }
};

// For the verify test (HAWADA_FAULT=export.wrong_slice@R:flag): the output projection of every MLP reads
// its kept channels off by one, the kind of slicing bug verify must catch before anything is published.
void break_slice_for_test(std::vector<safetensors::NamedTensor>& tensors, const ModelAdapter& adapter,
                          const Plan& plan) {
  if (!fault_flag("export.wrong_slice")) return;
  for (auto& t : tensors)
    if (t.tensor.dim() == 2 && adapter.weight_kind(t.name) == "mlp" && t.tensor.size(1) == plan.chosen.shape.ffn)
      t.tensor = t.tensor.roll(1, 1).contiguous();
}

nlohmann::json finite_json(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json("non-finite"); }

// The tensors export writes: the plan's slice (a healed run: the healed weights; a run whose calibrate refitted the
// output projections: the refitted weights) in the dtypes export.dtype asks for.
struct Slice {
  std::vector<safetensors::NamedTensor> tensors;
  std::unique_ptr<safetensors::Reader> healed_file;  // healed or refitted weights (verify reads them again); else null
  at::ScalarType dtype = at::kFloat;                 // of the floating-point tensors
  bool healed() const { return healed_file != nullptr; }
};

// A healed run writes the healed weights (fp32 on disk) in the dtype each tensor is stored in.
void take_healed_weights(std::vector<safetensors::NamedTensor>& tensors, const safetensors::Reader& healed_file) {
  for (auto& t : tensors) {
    if (!healed_file.contains(t.name))
      throw CheckpointError("'" + healed_file.path().string() + "' has no tensor '" + t.name + "'");
    const at::Tensor h = healed_file.tensor(t.name);
    if (h.sizes() != t.tensor.sizes())
      throw CheckpointError("'" + healed_file.path().string() + "': tensor '" + t.name + "' has shape " +
                            c10::str(h.sizes()) + ", the plan's slice " + c10::str(t.tensor.sizes()));
    t.tensor = h.to(t.tensor.scalar_type()).contiguous();
  }
}

// Converts the floating-point tensors to `dtype` (keep: as stored); returns the dtype of the first of them.
at::ScalarType to_export_dtype(std::vector<safetensors::NamedTensor>& tensors, ExportDtype dtype) {
  at::ScalarType out_dtype = at::kFloat;
  bool first = true;
  for (auto& t : tensors) {
    if (dtype == ExportDtype::bf16 && t.tensor.is_floating_point()) t.tensor = t.tensor.to(at::kBFloat16);
    if (dtype == ExportDtype::fp32 && t.tensor.is_floating_point()) t.tensor = t.tensor.to(at::kFloat);
    if (first && t.tensor.is_floating_point()) out_dtype = t.tensor.scalar_type(), first = false;
  }
  return out_dtype;
}

// The tensors to write (see Slice), on every rank.
Slice slice_for_export(const Config& c, const LoadedModel& lm, const Plan& plan, const GateValues& student,
                       const RunLayout& layout, const std::string& calibration) {
  Slice out;
  out.tensors = lm.adapter->prune_weights(lm.checkpoint, plan, student);
  const fs::path trained = c.heal.steps > 0 ? layout.healed_weights()
                           : has_reconstruction(layout.reconstructed_weights(), calibration)
                               ? layout.reconstructed_weights()
                               : fs::path();
  if (!trained.empty()) {
    out.healed_file = std::make_unique<safetensors::Reader>(trained);
    take_healed_weights(out.tensors, *out.healed_file);
  }
  break_slice_for_test(out.tensors, *lm.adapter, plan);
  out.dtype = to_export_dtype(out.tensors, c.export_.dtype);
  return out;
}

// Which shard each tensor goes to, the shards' file names and the total size.
struct Shards {
  std::vector<size_t> of;          // the shard of each tensor
  std::vector<std::string> files;  // the file of each shard
  uint64_t total_bytes = 0;
  size_t count() const { return files.size(); }
};

// Shards of at most `max_shard_size` bytes (one: model.safetensors).
Shards shard_plan(const std::vector<safetensors::NamedTensor>& tensors, uint64_t max_shard_size) {
  Shards out;
  std::vector<uint64_t> sizes;
  for (const auto& t : tensors) {
    sizes.push_back(static_cast<uint64_t>(t.tensor.nbytes()));
    out.total_bytes += sizes.back();
  }
  out.of = safetensors::plan_shards(sizes, max_shard_size);
  const size_t count = out.of.empty() ? 1 : out.of.back() + 1;
  for (size_t s = 0; s < count; ++s)
    out.files.push_back(count == 1 ? "model.safetensors" : safetensors::shard_file_name(s + 1, count));
  return out;
}

// Where an export goes: the partial directory it is written in, its final name, and the names a failed
// export and a replaced earlier one are moved to.
struct ExportPaths {
  ExportPaths(const RunLayout& layout, const std::string& name)
      : export_dir(layout.export_dir()),
        final_dir(layout.exported_model(name)),
        tmp(export_dir / ("." + name + ".partial")),
        failed(export_dir / ("." + name + ".failed")),
        replaced(export_dir / ("." + name + ".replaced")) {}
  fs::path export_dir, final_dir, tmp, failed, replaced;
};

// Rank 0: an empty partial directory.
void start_partial(const ExportPaths& p) {
  fs::create_directories(p.export_dir);
  fs::remove_all(p.tmp);  // a killed earlier attempt
  fs::remove_all(p.failed);
  fs::create_directories(p.tmp);
}

// Shards in parallel: rank r writes shards r, r + W, ... into `dir`.
void write_own_shards(const std::vector<safetensors::NamedTensor>& tensors, const Shards& shards, const fs::path& dir) {
  const auto& proc = process_info();
  for (size_t s = static_cast<size_t>(proc.rank); s < shards.count(); s += static_cast<size_t>(proc.size)) {
    std::vector<safetensors::NamedTensor> mine;
    for (size_t i = 0; i < tensors.size(); ++i)
      if (shards.of[i] == s) mine.push_back(tensors[i]);
    safetensors::write_file(dir / shards.files[s], mine);
    fault_point("export.after_shard");
  }
}

// Rank 0: the shard index (of several shards), config.json with the pruned counts and the dtype, and the
// model's side files, into `dir`, synced.
void write_model_files(const Config& c, const LoadedModel& lm, const Plan& plan, const Slice& slice,
                       const Shards& shards, const fs::path& dir) {
  if (shards.count() > 1) {
    safetensors::ShardIndex index;
    index.total_size = shards.total_bytes;
    for (size_t i = 0; i < slice.tensors.size(); ++i)
      index.weight_map[slice.tensors[i].name] = shards.files[shards.of[i]];
    atomic_write_text(dir / "model.safetensors.index.json", safetensors::index_to_json(index));
  }
  nlohmann::json config = lm.adapter->pruned_config(lm.checkpoint.config(), plan);
  config["dtype"] = hf_dtype_name(slice.dtype);
  config["torch_dtype"] = hf_dtype_name(slice.dtype);
  atomic_write_text(dir / "config.json", config.dump(2) + "\n");
  for (const auto& f : lm.checkpoint.side_files()) copy_file_synced(c.model.path / f, dir / f);
  sync_directory(dir);
}

// The log line of the written directory: its tensors, size and shards, and the rate of slice + write.
void log_written(const fs::path& dir, const Shards& shards, double seconds) {
  log::info(fmt::format("export: {}: {} tensors, {} MB in {} shard(s), {} GB/s (slice + write)", dir.string(),
                        shards.of.size(), shards.total_bytes / 1000000, shards.count(),
                        std::to_string(shards.total_bytes / std::max(seconds, 1e-9) / 1e9).substr(0, 5)));
}

// What verify measured (see ExportStage::run): its samples and the three comparisons.
struct Verification {
  int64_t samples = 0;
  bool held_out = false, healed = false;
  at::ScalarType dtype = at::kFloat;  // the written export's
  Distance identity;                  // 1. the hard-gated student against the slice (a healed run: not measured)
  std::string bytes_mismatch;         // 2. the first tensor written otherwise than exact (empty: none)
  Distance rounding;                  // 3. the written export's logits against the reference's
};

// The healed weights, or the plan's slice, in fp32.
std::vector<safetensors::NamedTensor> exact_values(const LoadedModel& lm, const Plan& plan, const GateValues& student,
                                                   const safetensors::Reader* healed_file) {
  std::vector<safetensors::NamedTensor> exact;
  if (healed_file) {
    for (const auto& t : healed_file->header().tensors) exact.push_back({t.name, healed_file->tensor(t.name)});
  } else {
    exact = lm.adapter->prune_weights(lm.checkpoint, plan, student, at::kFloat);
    break_slice_for_test(exact, *lm.adapter, plan);
  }
  return exact;
}

// The student's gates on `device`.
GateValues gates_on(const GateValues& g, const at::Device& device) {
  auto on = [&](const at::Tensor& t) { return t.defined() ? t.to(device) : t; };
  return {on(g.heads), on(g.ffn), on(g.hidden), on(g.layers), on(g.attn_out), on(g.mlp_out)};
}

// An encoder's outputs are its hidden states: the gated dense model's are the teacher's width (zeros on the
// dropped channels), the slice's the kept channels; `gated` in the slice's.
at::Tensor in_slice_channels(const at::Tensor& gated, const at::Tensor& want, const Plan& plan) {
  if (gated.size(-1) == want.size(-1) || gated.size(-1) != plan.dense.shape.hidden) return gated;
  return gated.index_select(-1, at::tensor(plan.hidden, at::kLong).to(gated.device()));
}

// 2. bytes: the first of the `exact` tensors that `exported` does not hold rounded once to its stored dtype
// ("<name> (missing)" when absent); empty when every one matches.
std::string first_mismatch(const HfCheckpoint& exported, const std::vector<safetensors::NamedTensor>& exact) {
  for (const auto& t : exact) {
    if (!exported.contains(t.name)) return t.name + " (missing)";
    const at::Tensor written = exported.tensor(t.name);
    if (written.sizes() != t.tensor.sizes() || !at::equal(written, t.tensor.to(written.scalar_type()))) return t.name;
  }
  return "";
}

// Verify's measurements (rank 0) of the export written into `dir`.
Verification measure_export(const Config& c, const LoadedModel& lm, const Plan& plan, const GateValues& student,
                            const Slice& slice, const fs::path& dir) {
  Verification v;
  const auto data = open_data(c, lm.arch);
  const int64_t n = data->size();
  v.held_out = c.train.holdout > 0;
  v.samples = v.held_out ? std::min<int64_t>(c.train.holdout, kVerifySamples) : std::min<int64_t>(kVerifySamples, n);
  v.healed = slice.healed();
  v.dtype = slice.dtype;
  const int64_t first_sample = v.held_out ? n - c.train.holdout : 0;
  const at::Device device = run_device(c);
  const nlohmann::json pruned_config = lm.adapter->pruned_config(lm.checkpoint.config(), plan);
  // The exact values the file must hold, in fp32.
  const std::vector<safetensors::NamedTensor> exact = exact_values(lm, plan, student, slice.healed_file.get());
  const HfCheckpoint exact_ckpt = HfCheckpoint::in_memory(pruned_config, exact, dir / "(fp32 slice)");
  const auto reference = lm.adapter->load(exact_ckpt, {at::kFloat, device});
  // 2. bytes
  const HfCheckpoint exported = HfCheckpoint::open(dir);
  v.bytes_mismatch = first_mismatch(exported, exact);

  // 1. identity (the dense model with the student's gates; not for healed weights) and 3. the written export's
  // logits, both against the reference, one sample at a time: [tokens, vocab] fp32 logits of every sample kept at
  // once would outweigh the models (8 x 2,048 tokens x 128K vocabulary: 8.4 GB a set).
  const auto slim = lm.adapter->load(exported, {at::kFloat, device});
  const std::unique_ptr<Model> dense = v.healed ? nullptr : lm.adapter->load(lm.checkpoint, {at::kFloat, device});
  const GateValues gates = gates_on(student, device);
  for (int64_t s = first_sample; s < first_sample + v.samples; ++s) {
    const Batch b = to_device(data->read(s, 1), device);
    const at::Tensor want = reference->logits(b).to(at::kFloat);
    if (dense) v.identity.add(want, in_slice_channels(dense->logits(b, &gates).to(at::kFloat), want, plan));
    v.rounding.add(want, slim->logits(b).to(at::kFloat));
  }
  return v;
}

// The verdict on verify's measurements: logged (with a warning when a 16-bit rounding is large) and returned
// as summary.json's "verify".
nlohmann::json judge(const Verification& v) {
  const double id_rel = v.healed ? 0.0 : v.identity.relative(), round_rel = v.rounding.relative();
  const bool id_ok = v.healed || (v.identity.finite && id_rel <= kIdentityTolerance);
  // fp32 exports hold the reference's exact values, so their logits must agree to summation order; a
  // 16-bit export differs by its rounding, which is reported (and warned about when large) but is what
  // the stored dtype means: the forward passes of calibration and heal used the same rounded weights.
  const bool round_ok = v.rounding.finite && (v.dtype != at::kFloat || round_rel <= kIdentityTolerance);
  if (v.rounding.finite && v.dtype != at::kFloat && round_rel > kRoundingWarn)
    log::warn(
        fmt::format("export: rounding the weights to {} changes the logits by {:.3g} (relative L2); "
                    "export.dtype = \"fp32\" keeps them exact",
                    hf_dtype_name(v.dtype), round_rel));
  const bool passed = id_ok && v.bytes_mismatch.empty() && round_ok;
  nlohmann::json verify = {{"samples", v.samples},
                           {"held_out", v.held_out},
                           {"compute_dtype", "float32"},
                           {"identity_relative_l2", finite_json(id_rel)},
                           {"identity_tolerance", kIdentityTolerance},
                           {"bytes_equal", v.bytes_mismatch.empty()},
                           {"relative_l2", finite_json(round_rel)},
                           {"max_abs_diff", finite_json(v.rounding.max_abs)},
                           {"max_abs_logit", finite_json(v.rounding.max_ref)},
                           {"tolerance", v.dtype == at::kFloat ? kIdentityTolerance : kRoundingWarn},
                           {"finite", v.identity.finite && v.rounding.finite},
                           {"passed", passed}};
  if (!v.bytes_mismatch.empty()) verify["bytes_mismatch"] = v.bytes_mismatch;
  log::info(
      fmt::format("export: verify on {} {} samples (fp32): {}; the written tensors {}; the written export's "
                  "logits differ from the reference by {:.3g} (relative L2, the rounding to {}): {}",
                  v.samples, v.held_out ? "held-out" : "training",
                  v.healed ? "healed or refitted weights" : fmt::format("slice = hard-gated student to {:.3g}", id_rel),
                  v.bytes_mismatch.empty() ? "are the slice's exact values" : "DIFFER at '" + v.bytes_mismatch + "'",
                  round_rel, hf_dtype_name(v.dtype), passed ? "equal" : "DIFFERENT"));
  return verify;
}

// Rank 0: the verified directory under its final name, or a failed one set aside.
void publish(const ExportPaths& p, bool passed) {
  if (passed) {
    fault_point("export.before_publish");
    // A previous export of other inputs under the same name is replaced only once this one is whole.
    fs::remove_all(p.replaced);
    if (fs::exists(p.final_dir)) rename_into(p.final_dir, p.replaced);
    rename_into(p.tmp, p.final_dir);
    fs::remove_all(p.replaced);
  } else {
    // Kept for inspection under a name nothing loads by accident; the final name is not touched.
    rename_into(p.tmp, p.failed);
  }
}

// Rank 0: <run_dir>/export/summary.json (a failed export: failed-summary.json).
void write_summary(const RunLayout& layout, const ExportPaths& p, const Plan& plan, const Slice& slice,
                   const Shards& shards, const nlohmann::json& verify, bool passed) {
  const ModelShape& s = plan.chosen.shape;
  nlohmann::json summary{{"export", p.final_dir.string()},
                         {"shape",
                          {{"hidden_size", s.hidden},
                           {"num_attention_heads", s.heads},
                           {"num_key_value_heads", s.kv_heads},
                           {"intermediate_size", s.ffn},
                           {"num_hidden_layers", s.layers}}},
                         {"parameters", plan.chosen.parameters},
                         {"dense_parameters", plan.dense.parameters},
                         {"dtype", hf_dtype_name(slice.dtype)},
                         {"shards", shards.count()},
                         {"bytes", shards.total_bytes},
                         {"healed", slice.healed()},
                         {"verify", verify}};
  if (passed)
    atomic_write_text(layout.export_summary(), summary.dump(2) + "\n");
  else
    atomic_write_text(layout.failed_export_summary(), summary.dump(2) + "\n");
}

// llama.cpp's tools for export.gguf (every rank looks, so a missing tool stops every rank alike before any work);
// none when export.gguf is empty.
std::optional<LlamaCpp> gguf_tools(const Config& c) {
  if (c.export_.gguf.empty()) return std::nullopt;
  return find_llama_cpp(c.export_.llama_cpp, c.export_.python, c.export_.gguf);
}

// Rank 0: the GGUF files of the published export beside it (<export_dir>/<name>-gguf/<name>-<type>.gguf), made by
// llama.cpp's own tools, added to summary.json as "gguf": [{type, file, bytes}]. A failure is returned, to be
// rethrown once every rank knows of it.
std::exception_ptr write_gguf_files(const Config& c, const RunLayout& layout, const ExportPaths& p,
                                    const LlamaCpp& tools) {
  try {
    const int threads = c.run.threads_per_rank > 0
                            ? c.run.threads_per_rank
                            : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    const std::string& name = c.export_.name;
    const auto files = with_context("export: gguf: ", [&] {
      return write_gguf(tools, p.final_dir, p.export_dir / (name + "-gguf"), name, c.export_.gguf, threads,
                        p.export_dir / (name + "-gguf.logs"));
    });
    nlohmann::json summary = nlohmann::json::parse(read_text_file(layout.export_summary()));
    summary["gguf"] = nlohmann::json::array();
    for (const auto& f : files)
      summary["gguf"].push_back({{"type", gguf_type_name(f.type)}, {"file", f.path.string()}, {"bytes", f.bytes}});
    atomic_write_text(layout.export_summary(), summary.dump(2) + "\n");
    return nullptr;
  } catch (...) {  // any failure (a tool's, the file system's): every rank hears of it before rank 0 rethrows
    return std::current_exception();
  }
}

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
  if (!c.export_.gguf.empty()) {  // only when asked for: runs without GGUF files keep their markers
    h.update("gguf");
    for (const GgufType t : c.export_.gguf) h.update(gguf_type_name(t));
    h.update(c.export_.llama_cpp.string());
  }
  return hex64(h.digest());
}

void ExportStage::run(const StageContext& ctx) {
  const Config& c = ctx.config;
  const auto& proc = process_info();
  const RunLayout layout(ctx.run_dir);
  const std::optional<LlamaCpp> llama_cpp = gguf_tools(c);
  LoadedModel lm = load_model(c, /*weights=*/false);
  const Plan plan = read_plan(ctx.run_dir, lm.shape);
  const Scales scales = Scales::read(layout.scales(), plan);
  at::NoGradGuard no_grad;
  const GateValues student = student_gates(plan, scales);

  // Slice (every rank: each needs the sizes for the shard plan, and its own shards' bytes).
  const auto t0 = Clock::now();
  Slice slice =
      slice_for_export(c, lm, plan, student, layout, ctx.fingerprints.at(std::string(stage_names::calibrate)));
  const Shards shards = shard_plan(slice.tensors, c.export_.max_shard_size);

  // Write the partial directory: every rank its shards, then rank 0 the index, config.json and side files.
  const ExportPaths paths(layout, c.export_.name);
  if (proc.rank == 0) start_partial(paths);
  world::barrier();
  write_own_shards(slice.tensors, shards, paths.tmp);
  world::barrier();
  if (proc.rank == 0) write_model_files(c, lm, plan, slice, shards, paths.tmp);
  slice.tensors.clear();
  world::barrier();
  log_written(paths.tmp, shards, std::chrono::duration<double>(Clock::now() - t0).count());

  // Verify before publishing, on rank 0's device, in fp32, on up to kVerifySamples held-out samples:
  //  1. identity: the plan's slice in fp32 (folds unrounded) computes what the hard-gated student (the
  //     dense model with scales and masks applied at run time) computes, to fp32 summation order (a
  //     healed run: the slice is the healed model itself);
  //  2. bytes: every tensor of the written directory is exactly that slice (or the healed weights)
  //     rounded once to the stored dtype;
  //  3. the written export's logits against the reference: equal to summation order for an fp32 export;
  //     for bf16/fp16 the effect of the rounding, reported. Non-finite values fail everything.
  // Then publish (rank 0), make the GGUF files (export.gguf, rank 0) and tell every rank the verdict.
  uint64_t passed = 0;
  std::exception_ptr gguf_failed;
  if (proc.rank == 0) {
    const nlohmann::json verify = judge(measure_export(c, lm, plan, student, slice, paths.tmp));
    passed = verify.at("passed").get<bool>() ? 1 : 0;
    publish(paths, passed == 1);
    write_summary(layout, paths, plan, slice, shards, verify, passed == 1);
    if (passed && llama_cpp) gguf_failed = write_gguf_files(c, layout, paths, *llama_cpp);
  }
  const uint64_t status = world::broadcast(passed | (gguf_failed ? 2 : 0));
  if (gguf_failed) std::rethrow_exception(gguf_failed);
  if (status & 2) throw RuntimeToolError("gguf: rank 0 could not make the GGUF files (its error says why)");
  if (!(status & 1))
    throw CheckpointError("export: the written model does not reproduce the hard-gated student (see " +
                          layout.failed_export_summary().string() +
                          "); it was not published: " + paths.failed.string());
}

}  // namespace hawada
