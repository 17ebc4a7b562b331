#include "stages/calibrate.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <chrono>
#include <fstream>
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/base/clock.h"
#include "core/base/errors.h"
#include "core/base/fault.h"
#include "core/base/fs.h"
#include "core/base/hash.h"
#include "core/base/log.h"
#include "core/base/process.h"
#include "core/dist/mpi_session.h"
#include "core/io/safetensors.h"
#include "core/prune/cost_model.h"
#include "stages/host_memory.h"
#include "training/reconstruct.h"

namespace hawada {
namespace {

namespace fs = std::filesystem;

// The trainable scales of a sliced student in one flat fp32 vector: heads [L, H'], ffn [L, F'], and
// (optionally) attn_out, mlp_out [L, D'].
struct FlatScales {
  FlatScales(const ModelShape& s, bool output_scales, const at::Device& device)
      : layers(s.layers), heads(s.heads), ffn(s.ffn), hidden(output_scales ? s.hidden : 0) {
    flat = at::ones({layers * (heads + ffn + 2 * hidden)}, at::TensorOptions().dtype(at::kFloat).device(device));
  }
  GateValues values(const at::Tensor& like) const {
    GateValues g;
    int64_t at = 0;
    auto take = [&](int64_t width) {
      at::Tensor v = like.narrow(0, at, layers * width).view({layers, width});
      at += layers * width;
      return v;
    };
    g.heads = take(heads);
    g.ffn = take(ffn);
    if (hidden > 0) g.attn_out = take(hidden), g.mlp_out = take(hidden);
    return g;
  }
  int64_t layers, heads, ffn, hidden;
  at::Tensor flat;
};

// The stage's fit: calibrate.* (micro-batch and accumulation 0: train.*'s); checkpoints and metrics unset.
FitOptions stage_fit_options(const Config& c) {
  const CalibrateConfig& k = c.calibrate;
  FitOptions o;
  o.steps = k.steps;
  o.lr = k.lr;
  o.warmup = std::min(k.warmup, k.steps);
  o.micro_batch = k.micro_batch > 0 ? k.micro_batch : c.train.micro_batch;
  o.grad_accum = k.grad_accum > 0 ? k.grad_accum : c.train.grad_accum;
  o.output_scales = k.output_scales;
  o.checkpoint_every = k.checkpoint_every;
  return o;
}

// calibrate.refit_spans applies: the plan drops blocks of a causal LM.
bool refits_spans(const Config& c, const Plan& plan) {
  return c.calibrate.refit_spans && plan.chosen.shape.layers < plan.dense.shape.layers &&
         plan.dense.shape.traits.output == ModelOutput::token_logits;
}

// The held-out samples calibrate measures on (those export verifies on): up to 16 after the training samples.
std::vector<int64_t> heldout_samples(const DistillData& data) {
  std::vector<int64_t> held;
  for (int64_t s = data.train_samples(); s < data.samples() && held.size() < 16; ++s) held.push_back(s);
  return held;
}

// summary.json: the steps and, with held-out samples, the held-out KL of the 0/1-mask student (`masks`: the
// dense model's, or the refitted one's when a refit ran before the scale fit, `masks_refitted`) and of the calibrated
// one (`scales` on `student`, on the samples export verifies on), which is logged. Collective.
nlohmann::json calibration_summary(const Config& c, const LoadedModel& masks, bool masks_refitted,
                                   const LoadedModel& student, const Plan& plan, const Scales& scales,
                                   const DistillData& data, const at::Device& device, Communicator& comm) {
  const CalibrateConfig& k = c.calibrate;
  const bool refitted = k.reconstruct || refits_spans(c, plan);
  const std::vector<int64_t> held = heldout_samples(data);
  nlohmann::json summary{{"steps", k.steps}, {"output_scales", k.output_scales}};
  if (!held.empty()) {
    const double before = student_kl(c, masks, plan, Scales::ones(plan), data, held, device, comm);
    const double after = &masks == &student && k.steps == 0
                             ? before  // the same student
                             : student_kl(c, student, plan, scales, data, held, device, comm);
    check_finite(after, "the held-out KL", "calibrate", k.steps);
    summary["heldout_samples"] = held.size();
    summary["heldout_kl_masks"] = before;
    summary["heldout_kl_calibrated"] = after;
    log::info(
        fmt::format("calibrate: held-out KL to the teacher on {} samples: {:.4f} with 0/1 masks{}, {:.4f} calibrated{}",
                    held.size(), before, masks_refitted ? " (refitted)" : "", after, refitted ? " and refitted" : ""));
  }
  return summary;
}

// This rank's share of the first calibrate.reconstruct_samples training samples, in micro-batches on `device`.
std::vector<Batch> reconstruct_batches(const Config& c, const DistillData& data, int64_t micro_batch,
                                       const at::Device& device) {
  const auto& proc = process_info();
  const int64_t n = std::min(c.calibrate.reconstruct_samples, data.train_samples());
  std::vector<int64_t> mine;
  for (int64_t s = proc.rank; s < n; s += proc.size) mine.push_back(s);
  std::vector<Batch> out;
  for (size_t i = 0; i < mine.size(); i += static_cast<size_t>(micro_batch)) {
    const std::vector<int64_t> b(mine.begin() + static_cast<std::ptrdiff_t>(i),
                                 mine.begin() + static_cast<std::ptrdiff_t>(std::min(mine.size(), i + micro_batch)));
    out.push_back(data.batch(b, device));
  }
  return out;
}

// The gated dense model (refitted in place) must compute what its slice computes: checked on one held-out
// sample (or the first), in fp32, before anything is published.
void check_slice(const Model& gated, const GateValues& gates, const Model& slice, const DistillData& data,
                 const at::Device& device) {
  const Batch b = data.batch({data.samples() > data.train_samples() ? data.train_samples() : 0}, device);
  const at::Tensor want = slice.logits(b).to(at::kDouble), got = gated.logits(b, &gates).to(at::kDouble);
  const double rel = (want - got).norm().item<double>() / std::max(want.norm().item<double>(), 1e-300);
  if (!(rel <= 1e-4))
    throw CheckpointError(
        "calibrate.reconstruct: the slice of the refitted weights differs from the refitted "
        "gated model by " +
        std::to_string(rel) + " (relative L2); nothing is published");
}

// calibrate.reconstruct (training/reconstruct.h): the dense model with the plan's gates (`scales`: the 0/1 masks
// when the refit runs first, the fitted scales when it runs last), its output projections refitted in place, as an
// in-memory checkpoint; `scales` becomes what the refit leaves (1 on the refitted projections' structures and output
// channels, the others' unchanged). `stats`: summary.json's "reconstruct". Collective.
LoadedModel reconstruct(const Config& c, const LoadedModel& dense, const Plan& plan, Scales& scales,
                        const DistillData& data, const at::Device& device, Communicator& comm,
                        const ReconstructOptions& o, nlohmann::json& stats) {
  const auto t0 = Clock::now();
  const auto model = dense.adapter->load(dense.checkpoint, {at::kFloat, device});
  GateValues gates = student_gates(plan, scales);
  for (at::Tensor* t : {&gates.heads, &gates.ffn, &gates.hidden, &gates.layers, &gates.attn_out, &gates.mlp_out})
    if (t->defined()) *t = t->to(device).clone();
  const int64_t micro = std::max<int64_t>(1, stage_fit_options(c).micro_batch);
  const ReconstructStats st =
      reconstruct_projections(*model, gates, reconstruct_batches(c, data, micro, device), o, comm);
  for (auto [from, to] : {std::pair{&gates.heads, &scales.heads},
                          {&gates.ffn, &scales.ffn},
                          {&gates.attn_out, &scales.attn_out},
                          {&gates.mlp_out, &scales.mlp_out}})
    if (from->defined()) *to = from->cpu();
  std::vector<safetensors::NamedTensor> named;
  for (const auto& [name, w] : model->named_weights()) named.push_back({name, w.detach().cpu()});
  for (const std::string& name : dense.checkpoint.tensor_names())  // a stored copy of a tied head
    if (std::none_of(named.begin(), named.end(), [&](const auto& t) { return t.name == name; }))
      named.push_back({name, dense.checkpoint.tensor(name).to(at::kFloat)});
  LoadedModel refit{HfCheckpoint::in_memory(dense.checkpoint.config(), named, dense.checkpoint.dir() / "(refitted)"),
                    dense.adapter, dense.arch, dense.shape, nullptr};
  // Its slice (with the scales folded) must compute what the refitted gated model computes.
  const auto slice = dense.adapter->load(pruned_checkpoint(refit, plan, scales), {at::kFloat, device});
  check_slice(*model, gates, *slice, data, device);
  log::info(fmt::format(
      "calibrate: reconstruct: {} output projections refitted by least squares on {} tokens in {:.1f} s{}",
      st.projections, st.tokens, since(t0),
      st.spans > 0 ? fmt::format(" ({} of them to the end of the span of dropped blocks after them)", st.spans)
                   : std::string()));
  stats = {{"samples", std::min(c.calibrate.reconstruct_samples, data.train_samples())},
           {"tokens", st.tokens},
           {"projections", st.projections},
           {"attention_projections", st.attention},
           {"mlp_projections", st.mlp},
           {"span_projections", st.spans},
           {"order", c.calibrate.reconstruct_order == RefitOrder::after_scales ? "after_scales" : "before_scales"}};
  return refit;
}

// The statistics of two refits (before and after the scale fit) as one: the projection counts summed.
nlohmann::json merge_refit_stats(nlohmann::json a, const nlohmann::json& b) {
  if (a.is_null()) return b;
  for (const char* key : {"projections", "attention_projections", "mlp_projections", "span_projections"})
    a[key] = a.value(key, int64_t{0}) + b.value(key, int64_t{0});
  a["order"] = b.value("order", "");
  return a;
}

void log_scale_fit(const Config& c, const Plan& plan, const FitOptions& o, bool refitted) {
  const int64_t samples = o.micro_batch * o.grad_accum * process_info().size;
  log::info("calibrate: fitting the scales of " + std::to_string(plan.chosen.shape.heads) + " heads, " +
            std::to_string(plan.chosen.shape.ffn) + " FFN channels" +
            (c.calibrate.output_scales ? " and " + std::to_string(plan.chosen.shape.hidden) + " output channels"
                                       : std::string()) +
            " per layer, weights frozen" + (refitted ? " (the refitted ones)" : "") + ": " +
            std::to_string(c.calibrate.steps) + " steps of " + std::to_string(samples) + " samples");
}

// Rank 0: calibrate.reconstruct's student, the refitted weights sliced with the scales folded, in fp32 into `file`.
void write_refitted(const LoadedModel& refit, const Plan& plan, const Scales& scales, const fs::path& file,
                    const std::string& fingerprint) {
  const std::vector<safetensors::NamedTensor> tensors =
      refit.adapter->prune_weights(refit.checkpoint, plan, student_gates(plan, scales), at::kFloat);
  for (const auto& t : tensors)
    if (!at::isfinite(t.tensor).all().item<bool>())
      throw NumericError("calibrate.reconstruct: tensor '" + t.name +
                         "' holds non-finite values; nothing is published");
  safetensors::write_file(file, tensors, {{"fingerprint", fingerprint}});
}

// What calibrate fits: the refitted models (before / after the scale fit; none without a refit), the scales and the
// refits' statistics.
struct Calibration {
  std::optional<LoadedModel> before, after;
  Scales scales;
  nlohmann::json refit_stats;
};

// The refits and the scale fit in their order: the span refit always before the scale fit (the scales then fit the
// stream it hands on; after them it undid their fit: bench/NOTES.md), the width refit where
// calibrate.reconstruct_order puts it. Collective.
// Before any of it: whether the refit fits the host memory left to each rank. It holds the dense model in fp32 (the
// refitted copy lives on through the scale fit) and checks its fp32 slice; the scale fit then adds the student in the
// compute dtype; the dense checkpoint's pages are mapped beside them. Without a refit, calibrate holds no more than
// the stages before it.
void check_calibrate_fits(const Config& c, const LoadedModel& dense, const Plan& plan, const at::Device& device) {
  if (!c.calibrate.reconstruct && !refits_spans(c, plan)) return;
  const int64_t full = parameter_count(dense.shape), slim = parameter_count(plan.chosen.shape);
  const auto elem = static_cast<int64_t>(c10::elementSize(compute_dtype(c)));
  const auto mapped = static_cast<int64_t>(dense.checkpoint.total_bytes());
  check_fits_host(c, device, "calibrate", full * 4 + slim * (4 + elem) + mapped,
                  fmt::format("the refit's dense model in fp32, {}; its slice in fp32 and the student in the compute "
                              "dtype, {}; the mapped checkpoint, {}",
                              gib(full * 4), gib(slim * (4 + elem)), gib(mapped)),
                  std::string(c.calibrate.reconstruct ? "calibrate.reconstruct = false" : "") +
                      (c.calibrate.reconstruct && refits_spans(c, plan) ? " and " : "") +
                      (refits_spans(c, plan) ? "calibrate.refit_spans = false" : ""));
}

Calibration calibrate_student(const Config& c, const LoadedModel& dense, const Plan& plan, const DistillData& data,
                              const FitOptions& o, const at::Device& device, Communicator& comm) {
  const CalibrateConfig& k = c.calibrate;
  const bool width_first = k.reconstruct && k.reconstruct_order == RefitOrder::before_scales;
  ReconstructOptions first, last;
  first.spans = refits_spans(c, plan);
  first.width = width_first, last.width = k.reconstruct && !width_first;
  first.attention = last.attention = k.reconstruct_attention;
  Calibration cal{std::nullopt, std::nullopt, Scales::ones(plan), nlohmann::json()};
  if (first.spans || first.width)
    cal.before.emplace(reconstruct(c, dense, plan, cal.scales, data, device, comm, first, cal.refit_stats));
  const LoadedModel& base = cal.before ? *cal.before : dense;
  if (k.steps > 0) {
    log_scale_fit(c, plan, o, cal.before.has_value());
    cal.scales = fit_scales(c, base, plan, data, o, device, comm);
  } else {
    log::info("calibrate: calibrate.steps = 0: the student keeps its 0/1 masks (every scale 1)");
  }
  if (last.width) {
    nlohmann::json stats;
    cal.after.emplace(reconstruct(c, base, plan, cal.scales, data, device, comm, last, stats));
    cal.refit_stats = merge_refit_stats(cal.refit_stats, stats);
  }
  return cal;
}

}  // namespace

Scales fit_scales(const Config& c, const LoadedModel& dense, const Plan& plan, const DistillData& data,
                  const FitOptions& o, const at::Device& device, Communicator& comm) {
  const auto& proc = process_info();
  const HfCheckpoint ckpt = with_context(o.stage + ": slicing the student: ",
                                         [&] { return pruned_checkpoint(dense, plan, Scales::ones(plan)); });
  const auto model = dense.adapter->load(ckpt, {compute_dtype(c), device});
  FlatScales scales(plan.chosen.shape, o.output_scales, device);
  Adam adam(scales.flat);
  const auto cpu_comm = make_communicator("mpi", at::kCPU, c.dist.timeout_s);
  TrainingLoop loop({.stage = o.stage,
                     .steps = o.steps,
                     .checkpoint_every = o.checkpoint_every,
                     .check_every = c.dist.check_every,
                     .checkpoints = o.checkpoints,
                     .metrics = o.metrics},
                    {{"scales", &scales.flat}, {"adam_m", &adam.m}, {"adam_v", &adam.v}});
  int64_t step = loop.resume(*cpu_comm);
  const int64_t global_micros = static_cast<int64_t>(proc.size) * o.grad_accum;
  SampleOrder order(data.train_samples(), c.run.seed, o.order_tag);
  scales.flat.requires_grad_(true);
  while (step < o.steps) {
    const auto step_t0 = Clock::now();
    if (scales.flat.grad().defined()) scales.flat.mutable_grad().zero_();
    const GateValues values = scales.values(scales.flat);
    LossParts sum;
    for (int64_t a = 0; a < o.grad_accum; ++a) {
      const int64_t g = proc.rank * o.grad_accum + a;
      const std::vector<int64_t> samples = order.micro_batch(step, g, global_micros, o.micro_batch);
      const Batch batch = with_context(o.stage + ": ", [&] { return data.batch(samples, device); });
      const LossParts p =
          distill_backward(*model, batch, for_student(data.teacher(samples), plan), &values, c.train.kd_temperature,
                           c.train.mse_weight, 1.0 / static_cast<double>(global_micros));
      sum.kl += p.kl, sum.tokens += p.tokens;
      sum.forward_s += p.forward_s, sum.loss_s += p.loss_s, sum.backward_s += p.backward_s;
    }
    at::Tensor grad = scales.flat.grad().defined() ? scales.flat.grad().detach() : at::zeros_like(scales.flat.detach());
    at::Tensor bucket =
        at::cat({grad.to(at::kDouble), at::tensor({sum.kl, static_cast<double>(sum.tokens)}, at::kDouble).to(device)});
    comm.all_reduce(bucket, Communicator::Op::sum);
    grad = bucket.narrow(0, 0, grad.numel()).to(at::kFloat);
    const at::Tensor stats = bucket.narrow(0, grad.numel(), 2).cpu();
    const double kl = stats[0].item<double>() / static_cast<double>(global_micros);
    check_finite(kl, "the distillation loss", o.stage, step + 1);
    check_finite(grad.abs().sum().item<double>(), "the scale gradient", o.stage, step + 1);
    const double lr = o.lr * warmup_cosine(step, o.warmup, o.steps, 0.0);
    {
      at::NoGradGuard no_grad;
      at::Tensor params = scales.flat.detach();
      adam.step(params, grad, lr, step + 1);
    }
    step += 1;
    const double step_s = since(step_t0);
    loop.record({{"step", step},
                 {"kl", kl},
                 {"lr", lr},
                 {"tokens_per_s", stats[1].item<double>() / step_s},
                 {"step_s", step_s},
                 {"forward_s", sum.forward_s},
                 {"loss_s", sum.loss_s},
                 {"backward_s", sum.backward_s}});
    loop.progress(step, fmt::format("kl {:.4f} lr {:.4f}", kl, lr));
    loop.end_step(step, scales.flat, "scales");
  }
  at::NoGradGuard no_grad;
  const at::Tensor host = scales.flat.detach().cpu();
  return Scales::from_sliced(plan, scales.values(host));
}

double student_kl(const Config& c, const LoadedModel& dense, const Plan& plan, const Scales& scales,
                  const DistillData& data, const std::vector<int64_t>& samples, const at::Device& device,
                  Communicator& comm) {
  const HfCheckpoint ckpt = pruned_checkpoint(dense, plan, scales);
  const auto model = dense.adapter->load(ckpt, {compute_dtype(c), device});
  return heldout_kl(*model, plan, data, samples, c.train.kd_temperature, device, comm);
}

std::string CalibrateStage::fingerprint(const StageContext& ctx) {
  const Config& c = ctx.config;
  const CalibrateConfig& k = c.calibrate;
  const int64_t world = process_info().size;
  const FitOptions o = stage_fit_options(c);
  Hasher h;
  h.update("calibrate/1");
  h.update(ctx.fingerprints.at(std::string(stage_names::rounding_search)));
  h.update(c10::toString(compute_dtype(c)));
  for (int64_t v : {k.steps, k.warmup, o.micro_batch, o.grad_accum * world, static_cast<int64_t>(k.output_scales),
                    c.run.seed, c.train.holdout, static_cast<int64_t>(k.reconstruct), k.reconstruct_samples,
                    static_cast<int64_t>(k.reconstruct_attention), static_cast<int64_t>(k.reconstruct_order)})
    h.update_u64(static_cast<uint64_t>(v));
  if (c.gates.layers && k.refit_spans) h.update("refit_spans");  // runs without layer gates keep their markers
  for (double v : {k.lr, c.train.kd_temperature, c.train.mse_weight}) h.update(&v, sizeof v);
  fingerprint_ = hex64(h.digest());
  cache_dir_ = run_cache_dir(c, ctx.fingerprints);
  return fingerprint_;
}

void CalibrateStage::run(const StageContext& ctx) {
  const Config& c = ctx.config;
  const CalibrateConfig& k = c.calibrate;
  const auto& proc = process_info();
  const at::Device device = run_device(c);
  const LoadedModel dense = load_model(c, /*weights=*/false);
  const Plan plan = read_plan(ctx.run_dir, dense.shape);
  check_calibrate_fits(c, dense, plan, device);
  if (k.reconstruct && dense.shape.traits.output != ModelOutput::token_logits)
    throw ConfigError(c.source.string() + ": calibrate.reconstruct refits the output projections of causal LMs " +
                      "(models with token logits), not of this " + dense.arch.model_type +
                      " model: set calibrate.reconstruct = false");
  FitOptions o = stage_fit_options(c);
  const RunLayout layout(ctx.run_dir);
  const fs::path dir = layout.calibrate();
  const StateCheckpoints checkpoints(RunLayout::checkpoints(dir), fingerprint_, std::string(stage_names::calibrate));
  o.checkpoints = &checkpoints;
  o.metrics = RunLayout::metrics(dir);
  const DistillData data(c, dense.arch, cache_dir_, o.micro_batch * o.grad_accum * proc.size, "calibration");
  auto comm = run_communicator(c, device);

  Calibration cal = calibrate_student(c, dense, plan, data, o, device, *comm);
  const std::optional<LoadedModel>&before = cal.before, &after = cal.after;
  const Scales& scales = cal.scales;
  const nlohmann::json& refit_stats = cal.refit_stats;
  const LoadedModel& masks = before ? *before : dense;
  const LoadedModel& student = after ? *after : masks;
  const LoadedModel* refit = after ? &*after : before ? &*before : nullptr;
  nlohmann::json summary =
      calibration_summary(c, masks, before.has_value(), student, plan, scales, data, device, *comm);
  if (refit) summary["reconstruct"] = refit_stats;
  for (const auto& t : scales.named())
    if (!at::isfinite(t.tensor).all().item<bool>())
      throw NumericError("calibrate: the fitted scales '" + t.name + "' hold non-finite values; nothing is published");
  if (proc.rank == 0) {
    fs::create_directories(dir);
    std::map<std::string, std::string> meta{{"fingerprint", fingerprint_}};
    safetensors::write_file(RunLayout(ctx.run_dir).scales(), scales.named(), meta);
    fs::remove(layout.reconstructed_weights());  // an earlier calibration's
    if (refit) write_refitted(*refit, plan, scales, layout.reconstructed_weights(), fingerprint_);
    atomic_write_text(layout.calibrate_summary(), summary.dump(2) + "\n");
  }
  world::barrier();
}

}  // namespace hawada
