#include "stages/train_gates.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <chrono>
#include <fstream>

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
#include "training/distill.h"
#include "training/student.h"
#include "training/training_loop.h"

namespace hawada {
namespace {

namespace fs = std::filesystem;

// Log-alpha spread of the initial gates: within each row (a layer's heads, a layer's FFN channels,
// the hidden channels) the least important structure starts `kInitSpan` below the most important.
constexpr double kInitSpan = 5.0;

GateValues values_of(const GateParameters& gates, const at::Tensor& like_flat) {
  const GateParameters::Views v = gates.views_of(like_flat);
  return GateValues{v.heads, v.ffn, v.hidden, v.layers};
}

// Row-normalised (each row divided by its mean) view of a [rows, n] or [n] tensor.
at::Tensor row_normalised(const at::Tensor& t) {
  const at::Tensor mean = t.mean(-1, /*keepdim=*/true).clamp_min(1e-30);
  return t / mean;
}

// The one-shot importance of every gate at the dense model, before training: the mean |output| of
// each structure (Minitron's activation criterion) and its Fisher information, the mean squared
// gradient of the log-likelihood of teacher-sampled tokens with respect to a gate at 1 (removing a
// structure raises the KL to the teacher by about half its Fisher information; Kwon et al. 2022).
// Both are summed over the ranks' share of `samples` and all-reduced.
struct Importance {
  at::Tensor activation, fisher;  // laid out like the gate vector, fp32, host

  // activation x sqrt(fisher), each normalised per row (layer and kind).
  at::Tensor combined(const GateParameters& layout) const {
    at::Tensor out = at::empty_like(activation);
    const auto a = layout.views_of(activation), f = layout.views_of(fisher), o = layout.views_of(out);
    auto one = [](const at::Tensor& act, const at::Tensor& fis, const at::Tensor& dst) {
      if (dst.defined()) const_cast<at::Tensor&>(dst).copy_(row_normalised(act) * row_normalised(fis).sqrt());
    };
    one(a.heads, f.heads, o.heads);
    one(a.ffn, f.ffn, o.ffn);
    one(a.hidden, f.hidden, o.hidden);
    one(a.layers, f.layers, o.layers);
    return out;
  }
};

Importance measure_importance(const Model& model, const DistillData& data, const GateParameters& layout,
                              const Config& c, const at::Device& device, Communicator& comm) {
  const auto& proc = process_info();
  const int64_t P = layout.flat.numel();
  const int64_t samples = std::min<int64_t>(data.train_samples(), c.train.importance_batches * c.train.micro_batch);
  SampleOrder order(data.train_samples(), c.run.seed, "importance");
  at::Tensor act = at::zeros({P}, at::TensorOptions().dtype(at::kFloat).device(device));
  at::Tensor fisher = at::zeros_like(act);
  at::Tensor tokens = at::zeros({1}, act.options());
  const GateParameters::Views acts = layout.views_of(act);
  // Each rank takes every world-th sample; per-sample gradients (the Fisher diagonal needs them).
  for (int64_t i = proc.rank; i < samples; i += proc.size) {
    const int64_t s = order.at(i);
    const Batch batch = data.batch({s}, device);
    const CacheChunk teacher = data.teacher({s});
    at::Tensor ones = at::ones({P}, act.options()).requires_grad_(true);
    GateValues g = values_of(layout, ones);
    ActivationImportance imp{acts.heads, acts.ffn, acts.hidden, acts.layers, 0};
    g.importance = &imp;
    const at::Tensor targets = sample_teacher_targets(
        teacher, mix_seed({static_cast<uint64_t>(c.run.seed), static_cast<uint64_t>(s)}, "fisher"));
    nll_backward(model, batch, targets, &g);
    {
      at::NoGradGuard no_grad;
      if (ones.grad().defined()) fisher.add_(ones.grad().pow(2));
      tokens.add_(static_cast<double>(imp.tokens));
    }
  }
  at::Tensor all = at::cat({act, fisher, tokens});
  comm.all_reduce(all, Communicator::Op::sum);
  const at::Tensor host = all.cpu();
  const double n = std::max(1.0, static_cast<double>(host[2 * P].item<float>()));
  Importance out{host.narrow(0, 0, P) / n, host.narrow(0, P, P) / static_cast<double>(std::max<int64_t>(1, samples))};
  check_finite(out.activation.sum().item<double>() + out.fisher.sum().item<double>(), "the importance", "train_gates",
               0);
  return out;
}

// Initial log-alphas: ranks of the importance within each row mapped linearly onto [0, kInitSpan]
// around gates.init (the projection then shifts them onto the budget schedule).
at::Tensor initial_log_alpha(const GateParameters& layout, const at::Tensor& importance, const HardConcrete& hc,
                             double init) {
  at::Tensor out = at::empty_like(importance);
  const auto imp = layout.views_of(importance), o = layout.views_of(out);
  auto one = [&](const at::Tensor& s, const at::Tensor& dst) {
    if (!dst.defined()) return;
    const int64_t n = s.size(-1);
    const at::Tensor rank =
        at::argsort(at::argsort(s, /*stable=*/true, -1, /*descending=*/false), /*stable=*/true, -1, false)
            .to(at::kFloat);
    const at::Tensor frac = n > 1 ? rank / static_cast<double>(n - 1) : at::full_like(rank, 1.0);
    const_cast<at::Tensor&>(dst).copy_((frac - 0.5) * kInitSpan + hc.log_alpha_for(init));
  };
  one(imp.heads, o.heads);
  one(imp.ffn, o.ffn);
  one(imp.hidden, o.hidden);
  one(imp.layers, o.layers);
  return out;
}

// The uniform log-alpha shift that puts the expected cost on `target` (bisection on the host: the
// expected cost grows monotonically with the shift).
double budget_shift(const GateParameters& gates, const HardConcrete& hc, const BudgetCost& budget, double target) {
  at::NoGradGuard no_grad;
  const at::Tensor host = gates.flat.detach().cpu();
  double lo = -60, hi = 60;
  for (int i = 0; i < 60 && hi - lo > 1e-7; ++i) {
    const double mid = 0.5 * (lo + hi);
    (budget.ratio_of(gates.expected_counts(hc, host + mid)) < target ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

// One step's distillation over the global batch: each rank's micro-batches, each with its own gate
// sample (noise fixed by seed, step and global micro-batch index), then one all-reduce of the gate
// gradient and the losses. Leaves the summed gradient in `grad`.
struct StepLoss {
  double kl = 0, mse = 0;
  int64_t tokens = 0;
  double data_s = 0, allreduce_s = 0;
  LossParts parts;  // this rank's timings
};

StepLoss distill_step(const Model& model, const DistillData& data, const GateParameters& gates, const HardConcrete& hc,
                      SampleOrder& order, int64_t step, const Config& c, const at::Device& device, Communicator& comm,
                      at::Tensor& grad) {
  const auto& proc = process_info();
  const int64_t accum = c.train.grad_accum, mb = c.train.micro_batch, global_micros = proc.size * accum;
  if (gates.flat.grad().defined()) gates.flat.mutable_grad().zero_();
  StepLoss out;
  LossParts& sum = out.parts;
  for (int64_t a = 0; a < accum; ++a) {
    const auto data_t0 = Clock::now();
    const int64_t g = proc.rank * accum + a;  // global micro-batch index of this step
    const std::vector<int64_t> samples = order.micro_batch(step, g, global_micros, mb);
    const Batch batch = with_context("train_gates: ", [&] { return data.batch(samples, device); });
    const CacheChunk teacher = data.teacher(samples);
    out.data_s += since(data_t0);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(
        mix_seed({static_cast<uint64_t>(c.run.seed), static_cast<uint64_t>(step), static_cast<uint64_t>(g)}, "gates"));
    const at::Tensor u = at::empty({gates.flat.numel()}, at::kFloat).uniform_(1e-6, 1.0 - 1e-6, gen).to(device);
    const GateValues values = values_of(gates, hc.sample_from_uniform(gates.flat, u));
    const LossParts p = distill_backward(model, batch, teacher, &values, c.train.kd_temperature, c.train.mse_weight,
                                         1.0 / static_cast<double>(global_micros));
    sum.kl += p.kl, sum.mse += p.mse, sum.tokens += p.tokens;
    sum.forward_s += p.forward_s, sum.loss_s += p.loss_s, sum.backward_s += p.backward_s;
  }
  const auto sync_t0 = Clock::now();
  grad = gates.flat.grad().defined() ? gates.flat.grad().clone() : at::zeros_like(gates.flat.detach());
  const at::Tensor stats = at::tensor({sum.kl, sum.mse, static_cast<double>(sum.tokens)}, at::kDouble).to(device);
  at::Tensor bucket = at::cat({grad.to(at::kDouble), stats});
  comm.all_reduce(bucket, Communicator::Op::sum);  // one all-reduce: the gradients and the losses
  grad = bucket.narrow(0, 0, grad.numel()).to(at::kFloat);
  const at::Tensor host = bucket.narrow(0, grad.numel(), 3).cpu();
  out.kl = host[0].item<double>() / global_micros;
  out.mse = host[1].item<double>() / global_micros;
  out.tokens = static_cast<int64_t>(host[2].item<double>());
  out.allreduce_s = since(sync_t0);
  check_finite(out.kl + out.mse, "the distillation loss", "train_gates", step + 1);
  check_finite(grad.abs().sum().item<double>(), "the gate gradient", "train_gates", step + 1);
  return out;
}

// The budget falls linearly from the dense model to budget.target over the warm-up.
double budget_schedule(const Config& c, int64_t step) {
  const int64_t warmup = c.train.warmup;
  if (warmup == 0) return c.budget.target;
  return 1.0 - (1.0 - c.budget.target) * std::min(1.0, static_cast<double>(step + 1) / static_cast<double>(warmup));
}

// Projection onto the budget: one uniform shift of every log-alpha puts the expected cost on `target`,
// so training always works at the cost it must reach. Returns the shift.
double project_onto_budget(GateParameters& gates, const HardConcrete& hc, const BudgetCost& budget, double target) {
  at::NoGradGuard no_grad;
  const double shift = budget_shift(gates, hc, budget, target);
  gates.flat.detach().add_(shift);
  return shift;
}

// The metrics line of one step (rank 0): losses, cost, the kept fractions, the timings.
nlohmann::json step_metrics(int64_t step, const StepLoss& l, const Config& c, const GateParameters& gates,
                            const HardConcrete& hc, const GateShape& gs, double cost, double target, double shift,
                            double step_s) {
  at::NoGradGuard no_grad;
  const GateCounts counts = gates.expected_counts(hc, gates.flat.detach().cpu());
  nlohmann::json j{{"step", step},
                   {"loss", l.kl + c.train.mse_weight * l.mse},
                   {"kl", l.kl},
                   {"mse", l.mse},
                   {"expected_cost", cost},
                   {"target", target},
                   {"shift", shift},
                   {"tokens_per_s", static_cast<double>(l.tokens) / step_s},
                   {"step_s", step_s},
                   {"data_s", l.data_s},
                   {"forward_s", l.parts.forward_s},
                   {"loss_s", l.parts.loss_s},
                   {"backward_s", l.parts.backward_s},
                   {"allreduce_s", l.allreduce_s}};
  if (counts.heads.defined()) j["kept_heads"] = counts.heads.sum().item<double>() / (gs.layers * gs.heads);
  if (counts.ffn.defined()) j["kept_ffn"] = counts.ffn.sum().item<double>() / (gs.layers * gs.ffn);
  if (counts.hidden.defined()) j["kept_hidden"] = counts.hidden.item<double>() / gs.hidden;
  if (counts.layers.defined()) j["kept_layers"] = counts.layers.sum().item<double>() / gs.layers;
  return j;
}

// <run_dir>/train/gates.safetensors: the log-alphas and the importance they started from, per kind.
void write_trained_gates(const std::filesystem::path& file, const GateParameters& gates, const Importance& importance,
                         const Config& c, const std::string& fingerprint, double final_cost) {
  fs::create_directories(file.parent_path());
  std::vector<safetensors::NamedTensor> out = gates.named();
  const GateParameters::Views a = gates.views_of(importance.activation), f = gates.views_of(importance.fisher);
  auto add = [&](const char* kind, const at::Tensor& va, const at::Tensor& vf) {
    if (!va.defined()) return;
    out.push_back({std::string(kind) + ".activation", va.contiguous()});
    out.push_back({std::string(kind) + ".fisher", vf.contiguous()});
  };
  add("heads", a.heads, f.heads);
  add("ffn", a.ffn, f.ffn);
  add("hidden", a.hidden, f.hidden);
  add("layers", a.layers, f.layers);
  safetensors::write_file(file, out,
                          {{"fingerprint", fingerprint},
                           {"temperature", std::to_string(c.gates.temperature)},
                           {"deterministic_cost", std::to_string(final_cost)}});
}

// The loop around the steps, its metrics in `dir`; its checkpoints hold the log-alphas, their Adam moments and
// the importance they started from.
TrainingLoop training_loop(const Config& c, const StateCheckpoints& checkpoints, const fs::path& dir,
                           GateParameters& gates, Adam& adam, Importance& importance) {
  return TrainingLoop({.stage = "train_gates",
                       .steps = c.train.steps,
                       .checkpoint_every = c.train.checkpoint_every,
                       .check_every = c.dist.check_every,
                       .checkpoints = &checkpoints,
                       .metrics = RunLayout::metrics(dir)},
                      {{"log_alpha", &gates.flat},
                       {"adam_m", &adam.m},
                       {"adam_v", &adam.v},
                       {"importance.activation", &importance.activation},
                       {"importance.fisher", &importance.fisher}});
}

// ConfigError when budget.target is below what the gates can reach.
void check_budget_reachable(const Config& c, const GateParameters& gates, const HardConcrete& hc,
                            const BudgetCost& budget) {
  // The cheapest model the gates can reach (every gated structure off): a target below it cannot be
  // met, and projecting towards it would switch every gate off.
  at::NoGradGuard no_grad;
  const double floor = budget.ratio_of(gates.expected_counts(hc, at::full({gates.flat.numel()}, -60.0, at::kFloat)));
  if (c.budget.target <= floor * (1 + 1e-9))
    throw ConfigError(fmt::format(
        "{}: budget.target = {:.4f} is below what the gates can reach: {:.4f} of the dense cost with every gated "
        "structure removed (what stays: ungated kinds, embeddings, the head{})",
        c.source.string(), c.budget.target, floor,
        c.budget.layer_overhead_s > 0 ? ", budget.layer_overhead_s per layer" : ""));
}

// A fresh start: the one-shot importance of the dense model into `importance`, and the gates initialised from
// it. Collective.
void initialise_gates(const Model& model, const DistillData& data, GateParameters& gates, const HardConcrete& hc,
                      Importance& importance, const Config& c, const at::Device& device, Communicator& comm) {
  const auto t0 = Clock::now();
  const Importance imp = measure_importance(model, data, gates, c, device, comm);
  importance.activation.copy_(imp.activation);
  importance.fisher.copy_(imp.fisher);
  at::NoGradGuard no_grad;
  gates.flat.copy_(initial_log_alpha(gates, imp.combined(gates), hc, c.gates.init));
  log::info("train_gates: importance (activation, Fisher) of " + std::to_string(gates.flat.numel()) + " gates over " +
            std::to_string(std::min<int64_t>(data.train_samples(), c.train.importance_batches * c.train.micro_batch)) +
            " samples in " + log::duration(since(t0)));
}

// The opening lines: the gates the architecture needs beyond train.gates, the steps and their batch, the budget.
void log_training_plan(const Config& c, const GatesConfig& gates_config, int64_t global_batch, int64_t gates) {
  const TrainConfig& tc = c.train;
  if (gates_config != c.gates)
    log::info(
        "train_gates: this architecture couples heads and hidden (hidden_size = heads x head size), so both get gates");
  log::info("train_gates: " + std::to_string(tc.steps) + " steps of " + std::to_string(global_batch) + " samples (" +
            std::to_string(process_info().size) + " rank(s) x " + std::to_string(tc.grad_accum) +
            " micro-batch(es) of " + std::to_string(tc.micro_batch) + "), " + std::to_string(gates) +
            " gates, budget " + metric_name(c.budget.metric) + " " + std::to_string(c.budget.target) +
            " (the expected cost follows the schedule: a projection after every step)");
}

// One Adam step on the log-alphas from `grad`, then the projection onto this step's budget `target`. Returns
// the projection's shift.
double update_gates(GateParameters& gates, Adam& adam, const at::Tensor& grad, double lr, int64_t step,
                    const HardConcrete& hc, const BudgetCost& budget, double target) {
  {
    at::NoGradGuard no_grad;
    at::Tensor params = gates.flat.detach();
    adam.step(params, grad, lr, step + 1);
  }
  const double shift = project_onto_budget(gates, hc, budget, target);
  if (fault_flag("train_gates.perturb_gates")) gates.flat.detach().add_(1e-3);  // for the drift test
  return shift;
}

// The final projection onto budget.target itself, logged with the evaluation gates' cost (a warning when it
// misses the target by more than 2%). Returns that cost.
double final_projection(GateParameters& gates, const HardConcrete& hc, const BudgetCost& budget, const Config& c,
                        int64_t step) {
  const double shift = project_onto_budget(gates, hc, budget, c.budget.target);
  const double expected = budget.ratio_of(gates.expected_counts(hc, gates.flat.cpu()));
  const double final_cost = budget.ratio_of(gates.evaluation_counts(hc, gates.flat.cpu()));
  check_finite(expected + final_cost, "the gates' cost", "train_gates", step);
  log::info(
      fmt::format("train_gates: expected cost {:.4f} on the target {:.4f} (final shift {:+.3f}); the evaluation "
                  "gates cost {:.4f} ({:+.2f}% of the target)",
                  expected, c.budget.target, shift, final_cost, 100.0 * (final_cost / c.budget.target - 1)));
  if (std::abs(final_cost / c.budget.target - 1) > 0.02)
    log::warn(
        "train_gates: the evaluation gates miss the budget by more than 2%: the model has too few structures "
        "for this target to be hit closely");
  return final_cost;
}

}  // namespace

std::string TrainGatesStage::fingerprint(const StageContext& ctx) {
  const Config& c = ctx.config;
  const int64_t world = process_info().size;
  Hasher h;
  h.update("train_gates/4");
  h.update(run_cache_dir(c, ctx.fingerprints).filename().string());
  h.update(precision_key(c));
  // The global batch (not how it is split over ranks) fixes the result.
  for (int64_t v :
       {c.run.seed, c.train.steps, static_cast<int64_t>(c.train.micro_batch),
        static_cast<int64_t>(c.train.grad_accum) * world, c.train.warmup, c.train.holdout,
        static_cast<int64_t>(c.train.importance_batches), static_cast<int64_t>(c.gates.heads),
        static_cast<int64_t>(c.gates.ffn), static_cast<int64_t>(c.gates.hidden), static_cast<int64_t>(c.gates.layers)})
    h.update_u64(static_cast<uint64_t>(v));
  for (double v : {c.train.lr, c.train.kd_temperature, c.train.mse_weight, c.gates.init, c.gates.temperature})
    h.update(&v, sizeof v);
  h.update(ctx.section("budget"));  // every budget key, listed by the config reader alone
  fingerprint_ = hex64(h.digest());
  cache_dir_ = run_cache_dir(c, ctx.fingerprints);
  return fingerprint_;
}

void TrainGatesStage::run(const StageContext& ctx) {
  const Config& c = ctx.config;
  const TrainConfig& tc = c.train;
  const auto& proc = process_info();
  const at::Device device = run_device(c);
  LoadedModel lm = load_model(c, true, device);
  const GatesConfig gates_config = effective_gates(c, lm.shape);
  const int64_t world = proc.size, global_batch = tc.micro_batch * world * tc.grad_accum;
  const DistillData data(c, lm.arch, cache_dir_, global_batch, "training");
  auto comm = run_communicator(c, device);
  const auto cpu_comm = make_communicator("mpi", at::kCPU, c.dist.timeout_s);

  // The state: log-alphas, their Adam moments, and the importance they started from.
  HardConcrete hc{.beta = c.gates.temperature};
  const GateShape gate_shape = lm.model->gate_shape();
  GateParameters gates(gates_config, gate_shape);
  gates.to(device);
  const BudgetCost budget(budget_spec(c, lm.shape), lm.shape);
  check_budget_reachable(c, gates, hc, budget);
  Adam adam(gates.flat);
  Importance importance{at::zeros({gates.flat.numel()}, at::kFloat), at::zeros({gates.flat.numel()}, at::kFloat)};
  const RunLayout layout(ctx.run_dir);
  const StateCheckpoints checkpoints(RunLayout::checkpoints(layout.train()), fingerprint_,
                                     std::string(stage_names::train_gates));
  TrainingLoop loop = training_loop(c, checkpoints, layout.train(), gates, adam, importance);
  int64_t step = loop.resume(*cpu_comm);

  // A fresh start: gates initialised from the one-shot importance of the dense model.
  if (step == 0) initialise_gates(*lm.model, data, gates, hc, importance, c, device, *comm);
  log_training_plan(c, gates_config, global_batch, gates.flat.numel());

  // The algorithm: distil through sampled gates, one Adam step on the log-alphas, projection onto this step's budget.
  SampleOrder order(data.train_samples(), c.run.seed);
  gates.flat.requires_grad_(true);
  while (step < tc.steps) {
    const auto step_t0 = Clock::now();
    const double target = budget_schedule(c, step);
    at::Tensor grad;
    const StepLoss loss = distill_step(*lm.model, data, gates, hc, order, step, c, device, *comm, grad);
    const double shift = update_gates(gates, adam, grad, tc.lr, step, hc, budget, target);
    const double cost = budget.ratio_of(gates.expected_counts(hc, gates.flat.detach().cpu()));
    step += 1;

    if (proc.rank == 0)
      loop.record(step_metrics(step, loss, c, gates, hc, gate_shape, cost, target, shift, since(step_t0)));
    loop.progress(step, fmt::format("kl {:.4f} cost {:.3f} (target {:.3f}) {:.0f} tokens/s", loss.kl, cost, target,
                                    static_cast<double>(loss.tokens) / since(step_t0)));
    loop.end_step(step, gates.flat, "gate parameters");
  }

  // The final projection onto budget.target itself (a warm-up longer than the run, or none at all,
  // leaves the last step's target elsewhere).
  at::NoGradGuard no_grad;
  const double final_cost = final_projection(gates, hc, budget, c, step);
  if (proc.rank == 0) write_trained_gates(layout.trained_gates(), gates, importance, c, fingerprint_, final_cost);
}

}  // namespace hawada
