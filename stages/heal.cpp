#include "stages/heal.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <optional>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/base/clock.h"
#include "core/base/errors.h"
#include "core/base/fault.h"
#include "core/base/fs.h"
#include "core/base/hash.h"
#include "core/base/log.h"
#include "core/base/process.h"
#include "core/dist/device.h"
#include "core/dist/mpi_session.h"
#include "core/io/safetensors.h"
#include "core/prune/slicing.h"
#include "stages/host_memory.h"
#include "training/distill.h"
#include "training/student.h"
#include "training/training_loop.h"

namespace hawada {
namespace {

namespace fs = std::filesystem;

// Elements per all-reduce bucket of the weight gradients (fp32: 256 MB).
constexpr int64_t kBucketElements = 64ll << 20;
// Held-out samples the KL is measured on every heal.eval_every steps.
constexpr int64_t kEvalSamples = 16;

std::set<std::string> kinds_of(const std::string& list) {
  std::set<std::string> out;
  if (list == "all") {
    for (const char* k : kWeightKinds) out.insert(k);
    return out;
  }
  std::string rest = list;
  while (!rest.empty()) {
    const size_t comma = rest.find(',');
    out.insert(rest.substr(0, comma));
    rest = comma == std::string::npos ? "" : rest.substr(comma + 1);
  }
  return out;
}

// The trained weights of the student and their fp32 masters, laid end to end in one flat vector, with
// the masters' Adam moments and gradient accumulator.
struct Trainable {
  std::vector<std::string> names;
  std::vector<at::Tensor> weights;  // the model's own tensors (compute dtype)
  std::vector<int64_t> offsets;
  at::Tensor masters;  // [P] fp32
  Adam adam;
  at::Tensor grads;  // [P] fp32
  at::Tensor master(size_t i) const {
    return masters.narrow(0, offsets[i], weights[i].numel()).view(weights[i].sizes());
  }
  // Copies the masters into the model's weights.
  void masters_to_weights() const {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < weights.size(); ++i) weights[i].copy_(master(i));
  }
  // Each micro-batch's weight gradients go into the fp32 accumulator and are freed.
  void take_gradients() {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < weights.size(); ++i) {
      at::Tensor& w = weights[i];
      if (!w.grad().defined()) continue;
      grads.narrow(0, offsets[i], w.numel()).view(w.sizes()).add_(w.grad());
      w.mutable_grad().reset();
    }
  }
  // Clips the accumulated gradient (of norm `grad_norm`) to heal.clip, takes one AdamW step on the masters at
  // step `step`'s learning rate, and copies them into the weights. Returns the learning rate.
  double update(const HealConfig& k, int64_t step, double grad_norm) {
    if (k.clip > 0 && grad_norm > k.clip) grads.mul_(k.clip / grad_norm);
    const double lr = k.lr * warmup_cosine(step, std::min(k.warmup, k.steps), k.steps, 0.1);
    adam.step(masters, grads, lr, step + 1, k.weight_decay);
    masters_to_weights();
    return lr;
  }
};

// heal.keep = "best": the masters at the evaluation with the lowest held-out KL, kept beside the training state (and
// in its checkpoints, so that a resumed run keeps the same best).
struct BestWeights {
  bool on = false;
  at::Tensor masters;  // [P] fp32
  at::Tensor meta;     // [2] fp64: the held-out KL and the step (0: none yet)
  BestWeights(const HealConfig& k, const at::Tensor& like) : on(k.keep == HealKeep::best) {
    if (!on) return;
    masters = like.clone();
    meta = at::tensor({INFINITY, 0.0}, at::kDouble);
  }
  double kl() const { return meta[0].item<double>(); }
  int64_t step() const { return static_cast<int64_t>(meta[1].item<double>()); }
  // After an evaluation at `step` (the same KL on every rank): keeps the masters when they are the best so far.
  void offer(const at::Tensor& current, double held_kl, int64_t step) {
    if (!on || !(held_kl < kl())) return;
    masters.copy_(current);
    meta = at::tensor({held_kl, static_cast<double>(step)}, at::kDouble);
  }
};

// The loop around the steps, its metrics in `dir`; its checkpoints hold the masters and their Adam moments (and the
// best weights so far, with heal.keep = "best").
TrainingLoop training_loop(const Config& c, const StateCheckpoints& checkpoints, const fs::path& dir, Trainable& tr,
                           BestWeights& best) {
  TrainingLoop::State state{{"masters", &tr.masters}, {"adam_m", &tr.adam.m}, {"adam_v", &tr.adam.v}};
  if (best.on) state.insert(state.end(), {{"best_masters", &best.masters}, {"best_meta", &best.meta}});
  return TrainingLoop({.stage = "heal",
                       .steps = c.heal.steps,
                       .checkpoint_every = c.heal.checkpoint_every,
                       .check_every = c.dist.check_every,
                       .checkpoints = &checkpoints,
                       .metrics = RunLayout::metrics(dir)},
                      std::move(state));
}

// What heal reads of its training windows: each step reads the global batch's windows in a seeded order that goes
// through every window once before it repeats one (SampleOrder). Warns when windows are read again.
nlohmann::json data_reads(const Config& c, const HealBatch& b, const DistillData& train) {
  const int64_t windows = train.train_samples(), reads = c.heal.steps * b.samples();
  const int64_t distinct = std::min(reads, windows), again = reads - distinct;
  const int64_t tokens = c.data.seq_len;
  if (again > 0)
    log::warn(
        fmt::format("heal: {} steps of {} windows read {} windows, but the heal data holds {} training windows: "
                    "{} reads ({:.0f}%) are of a window read before ({:.2f} passes); a heal that sees the same "
                    "text twice overfits it: more distinct text (heal.data) heals better",
                    c.heal.steps, b.samples(), reads, windows, again,
                    100.0 * static_cast<double>(again) / static_cast<double>(reads),
                    static_cast<double>(reads) / static_cast<double>(windows)));
  return {{"windows_read", reads},
          {"distinct_windows", distinct},
          {"repeated_reads", again},
          {"tokens_read", reads * tokens},
          {"distinct_tokens", distinct * tokens}};
}

// The weights of the kinds heal.train names (everything else stays frozen), with their masters on `device`.
Trainable trainable_weights(const Model& model, const ModelAdapter& adapter, const Config& c,
                            const at::Device& device) {
  const std::set<std::string> kinds = kinds_of(c.heal.train);
  Trainable tr;
  int64_t total = 0;
  for (const auto& [name, w] : model.named_weights()) {
    if (!kinds.count(adapter.weight_kind(name))) continue;
    tr.names.push_back(name);
    tr.weights.push_back(w);
    tr.offsets.push_back(total);
    total += w.numel();
  }
  if (tr.weights.empty())
    throw ConfigError(c.source.string() + ": heal.train = \"" + c.heal.train + "\" selects no weight of this model");
  tr.masters = at::empty({total}, at::TensorOptions().dtype(at::kFloat).device(device));
  {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < tr.weights.size(); ++i) tr.master(i).copy_(tr.weights[i]);
  }
  tr.adam = Adam(tr.masters);
  tr.grads = at::zeros_like(tr.masters);
  return tr;
}

// Before the optimizer is allocated: whether a rank's heal fits the host memory left to it (MemAvailable, a
// cgroup's limit, shared by this node's ranks). Each trained weight costs an fp32 master, fp32 gradients and
// AdamW's two fp32 moments (16 bytes) plus its own gradient in the compute dtype; the intermediate-state term
// adds the dense teacher. A ConfigError that says what it would need and which keys lower it, before a step,
// not an OOM kill after the first. Only where the optimizer lives on the host (CPU runs). Collective.
void check_heal_fits(const Model& model, const ModelAdapter& adapter, const Config& c, const at::Device& device) {
  world::barrier();  // every rank has loaded its student: what is left is what the optimizers share
  const std::set<std::string> kinds = kinds_of(c.heal.train);
  int64_t trained = 0;
  for (const auto& [name, w] : model.named_weights())
    if (kinds.count(adapter.weight_kind(name))) trained += w.numel();
  const auto elem = static_cast<int64_t>(c10::elementSize(compute_dtype(c)));
  const int64_t teacher = c.heal.hidden_weight > 0 ? HfCheckpoint::open(c.model.path).total_numel() * elem : 0;
  check_fits_host(
      c, device, "heal", trained * (16 + elem) + teacher,
      fmt::format("{} trained weights x {} bytes: fp32 master, gradients and AdamW moments{}", trained, 16 + elem,
                  teacher > 0 ? fmt::format(", plus the dense teacher of heal.hidden_weight, {}", gib(teacher)) : ""),
      std::string(kinds.count("embedding") || kinds.count("head")
                      ? "heal.train (e.g. \"attention,mlp\": not the embedding and head)"
                      : "a shorter heal.train (e.g. \"mlp\", or \"norm\")") +
          (teacher > 0 ? ", heal.hidden_weight = 0" : ""));
}

// Training samples: heal.data (every sample), else the run's (without its held-out samples); the
// held-out KL is always measured on the run's held-out samples.
struct HealData {
  HealData(const Config& c, const ArchSummary& arch, const fs::path& cache_dir, const fs::path& heal_cache,
           int64_t global_batch)
      : run(c, arch, cache_dir, 1, "heal") {
    if (!heal_cache.empty()) {
      heal = std::make_unique<DistillData>(c, heal_data_spec(c), 0, arch, heal_cache, global_batch, "healing");
      log::info("heal: training on " + (c.heal.samples > 0 ? "the first " : std::string("every ")) +
                std::to_string(heal->samples()) + " samples of heal.data = " + c.heal.data.string());
    }
    for (int64_t s = run.train_samples(); s < run.samples() && static_cast<int64_t>(held.size()) < kEvalSamples; ++s)
      held.push_back(s);
  }
  const DistillData& train() const { return heal ? *heal : run; }

  DistillData run;
  std::unique_ptr<DistillData> heal;  // heal.data's samples, when it is set
  std::vector<int64_t> held;          // the run's held-out samples the KL is measured on
};

// heal.hidden_weight: the dense teacher, run inside each step for its residual stream at the boundaries of the kept
// blocks (its weights in memory beside the student's: the cache holds only the logits).
struct StateTeacher {
  std::unique_ptr<Model> model;
  std::vector<int64_t> boundary;  // per student block: the dense block whose output the student's block stands for
  at::Tensor channels;            // the kept hidden channels (undefined: all kept)
  double weight = 0;

  // The teacher's stream at the boundaries for `batch` (no gradients).
  BoundaryStates states(const Batch& batch) const {
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> outs;
    GateValues g;
    g.block_outputs = &outs;
    model->features(batch, &g);
    BoundaryStates b{{}, channels, weight};
    for (int64_t l : boundary) b.teacher.push_back(outs.at(static_cast<size_t>(l)));
    return b;
  }
};

// The state teacher when heal.hidden_weight > 0 (causal LMs); none otherwise.
std::optional<StateTeacher> state_teacher(const Config& c, const LoadedModel& dense, const Plan& plan,
                                          const at::Device& device) {
  if (!(c.heal.hidden_weight > 0) || dense.shape.traits.output != ModelOutput::token_logits) return std::nullopt;
  StateTeacher t;
  t.model = dense.adapter->load(dense.checkpoint, {compute_dtype(c), device});
  const std::vector<int64_t>& kept = plan.layers;
  for (size_t j = 0; j < kept.size(); ++j)
    t.boundary.push_back(j + 1 < kept.size() ? kept[j + 1] - 1 : plan.dense.shape.layers - 1);
  if (plan.chosen.shape.hidden != plan.dense.shape.hidden) t.channels = index_tensor(plan.hidden).to(device);
  t.weight = c.heal.hidden_weight;
  log::info(
      fmt::format("heal: intermediate-state term (heal.hidden_weight = {}) at {} block boundaries: the dense "
                  "teacher runs forward in every step",
                  t.weight, t.boundary.size()));
  return t;
}

// The losses of one step over the global batch, its gradient norm, and where its time went.
struct StepLoss {
  double kl = 0, mse = 0, states = 0, tokens = 0, grad_norm = 0;
  double data_s = 0, teacher_s = 0, allreduce_s = 0;
  LossParts parts;  // this rank's sums and timings
};

// One step's distillation over the global batch: each rank's micro-batches, their weight gradients summed
// in tr.grads, then the all-reduces of the gradients and of the losses. Collective.
StepLoss distill_step(const Model& model, const Plan& plan, const DistillData& data, Trainable& tr, SampleOrder& order,
                      int64_t step, const HealBatch& b, const Config& c, const std::optional<StateTeacher>& teacher,
                      const at::Device& device, Communicator& comm) {
  const auto& proc = process_info();
  tr.grads.zero_();
  StepLoss out;
  LossParts& sum = out.parts;
  for (int64_t a = 0; a < b.accum; ++a) {
    const auto d0 = Clock::now();
    const int64_t g = proc.rank * b.accum + a;
    const std::vector<int64_t> samples = order.micro_batch(step, g, b.global_micros, b.micro_batch);
    const Batch batch = with_context("heal: ", [&] { return data.batch(samples, device); });
    const CacheChunk cached = for_student(data.teacher(samples), plan);
    out.data_s += since(d0);
    const auto t0 = Clock::now();
    const std::optional<BoundaryStates> states =
        teacher ? std::optional<BoundaryStates>(teacher->states(batch)) : std::nullopt;
    out.teacher_s += since(t0);
    const LossParts p = distill_backward(model, batch, cached, nullptr, c.train.kd_temperature, c.train.mse_weight,
                                         1.0 / static_cast<double>(b.global_micros), states ? &*states : nullptr);
    sum.kl += p.kl, sum.mse += p.mse, sum.states += p.states, sum.tokens += p.tokens;
    sum.forward_s += p.forward_s, sum.loss_s += p.loss_s, sum.backward_s += p.backward_s;
    tr.take_gradients();
  }
  // The gradients in buckets, then the losses.
  const auto s0 = Clock::now();
  const int64_t total = tr.grads.numel();
  for (int64_t a = 0; a < total; a += kBucketElements) {
    at::Tensor bucket = tr.grads.narrow(0, a, std::min(kBucketElements, total - a));
    comm.all_reduce(bucket, Communicator::Op::sum);
  }
  at::Tensor stats = at::tensor({sum.kl, sum.mse, static_cast<double>(sum.tokens), sum.states}, at::kDouble).to(device);
  comm.all_reduce(stats, Communicator::Op::sum);
  const at::Tensor hs = stats.cpu();
  out.allreduce_s = since(s0);
  out.kl = hs[0].item<double>() / b.global_micros, out.mse = hs[1].item<double>() / b.global_micros;
  out.tokens = hs[2].item<double>();
  out.states = hs[3].item<double>() / b.global_micros;
  out.grad_norm = tr.grads.norm().item<double>();
  check_finite(out.kl + out.mse + out.states, "the distillation loss", "heal", step + 1);
  check_finite(out.grad_norm, "the gradient norm", "heal", step + 1);
  return out;
}

// A step's metrics line and progress line; `held_kl` is NaN on the steps it is not measured on.
void record_step(TrainingLoop& loop, int64_t step, const StepLoss& l, double lr, double held_kl, double step_s) {
  nlohmann::json j{{"step", step},
                   {"kl", l.kl},
                   {"mse", l.mse},
                   {"lr", lr},
                   {"grad_norm", l.grad_norm},
                   {"tokens_per_s", l.tokens / step_s},
                   {"step_s", step_s},
                   {"data_s", l.data_s},
                   {"states", l.states},
                   {"teacher_s", l.teacher_s},
                   {"forward_s", l.parts.forward_s},
                   {"loss_s", l.parts.loss_s},
                   {"backward_s", l.parts.backward_s},
                   {"allreduce_s", l.allreduce_s}};
  if (std::isfinite(held_kl)) j["heldout_kl"] = held_kl;
  loop.record(j);
  const std::string held = std::isfinite(held_kl) ? " held-out kl " + std::to_string(held_kl).substr(0, 6) : "";
  const std::string states = l.states > 0 ? fmt::format(" states {:.4f}", l.states) : std::string();
  loop.progress(step, fmt::format("kl {:.4f}{}{} lr {:.2e} {:.0f} tokens/s", l.kl, states, held, lr, l.tokens / step_s),
                /*force=*/std::isfinite(held_kl));
}

// The opening line: the steps and their batch, the trained weights of the model's `weights`, and the memory
// they take per parameter.
void log_heal_plan(const HealConfig& k, const HealBatch& b, const Trainable& tr, uint64_t weights,
                   const at::Device& device) {
  const int64_t total = tr.masters.numel();
  const double bytes_per_param =
      static_cast<double>(c10::elementSize(tr.weights[0].scalar_type())) + 4 + 4 + 8;  // weight, master, grad, moments
  log::info(
      fmt::format("heal: {} steps of {} samples ({} rank(s) x {} micro-batch(es) of {}), {} of {} weights "
                  "train ({}); about {:.0f} bytes per trained parameter ({:.2f} GB) on {}",
                  k.steps, b.samples(), process_info().size, b.accum, b.micro_batch, total, weights, k.train,
                  bytes_per_param, bytes_per_param * static_cast<double>(total) / 1e9, device.str()));
}

// Rank 0: every tensor of the pruned model in fp32 into `file`: the trained masters, the rest as sliced.
// A tied LM head stored in the checkpoint follows the healed embedding.
void write_healed_weights(const fs::path& file, const HfCheckpoint& ckpt, const ModelAdapter& adapter,
                          const Trainable& tr, const std::string& fingerprint, int64_t step) {
  std::map<std::string, at::Tensor> healed;
  for (size_t i = 0; i < tr.names.size(); ++i) healed[tr.names[i]] = tr.master(i).detach().cpu();
  std::vector<safetensors::NamedTensor> out;
  const bool tied = ckpt.config().value("tie_word_embeddings", false);
  for (const std::string& name : ckpt.tensor_names()) {
    auto it = healed.find(name);
    at::Tensor t = it != healed.end() ? it->second : ckpt.tensor(name).to(at::kFloat);
    if (tied && adapter.weight_kind(name) == "head") {
      for (const auto& [n, v] : healed)
        if (adapter.weight_kind(n) == "embedding" && v.sizes() == t.sizes()) t = v;
    }
    if (!at::isfinite(t).all().item<bool>())
      throw NumericError("heal: tensor '" + name + "' holds non-finite values after step " + std::to_string(step));
    out.push_back({name, t.contiguous()});
  }
  safetensors::write_file(file, out, {{"fingerprint", fingerprint}, {"steps", std::to_string(step)}});
}

// heal.steps = 0: nothing of an earlier healed run may reach the export.
void heal_off(const fs::path& dir) {
  if (process_info().rank == 0) fs::remove_all(dir);
  log::info("heal: off (heal.steps = 0)");
  world::barrier();
}

// The weights heal publishes (heal.keep: the last step's, or the best evaluated ones, copied into the masters) and
// heal/summary.json: what the steps read (`reads`), the steps, the intermediate-state weight, the step kept.
nlohmann::json kept_weights(const HealConfig& k, const BestWeights& best, Trainable& tr, int64_t step,
                            nlohmann::json summary, bool states) {
  summary["steps"] = step;
  summary["hidden_weight"] = states ? k.hidden_weight : 0.0;
  summary["keep"] = std::string(k.keep == HealKeep::best ? "best" : "last");
  summary["kept_step"] = step;
  if (best.on && best.step() > 0) {
    log::info(fmt::format("heal: keeping the weights of step {} (held-out KL {:.4f}, the lowest measured)", best.step(),
                          best.kl()));
    tr.masters.copy_(best.masters);
    summary["kept_step"] = best.step();
    summary["kept_heldout_kl"] = best.kl();
  }
  return summary;
}

}  // namespace

std::string HealStage::fingerprint(const StageContext& ctx) {
  const Config& c = ctx.config;
  const HealConfig& k = c.heal;
  const HealBatch b = heal_batch(c);
  Hasher h;
  h.update("heal/1");
  h.update(ctx.fingerprints.at(std::string(stage_names::calibrate)));
  h.update(precision_key(c));
  h.update(k.train);
  for (int64_t v : {k.steps, k.warmup, b.micro_batch, b.global_micros, c.run.seed, c.train.holdout})
    h.update_u64(static_cast<uint64_t>(v));
  for (double v : {k.lr, k.weight_decay, k.clip, c.train.kd_temperature, c.train.mse_weight}) h.update(&v, sizeof v);
  if (k.hidden_weight > 0) h.update("hidden_weight"), h.update(&k.hidden_weight, sizeof k.hidden_weight);
  if (k.keep == HealKeep::best) h.update("keep=best");
  cache_dir_ = run_cache_dir(c, ctx.fingerprints);
  heal_cache_ = heal_cache_dir(c, ctx.fingerprints);
  h.update(heal_cache_.filename().string());  // the heal data's cache fingerprint (none: empty)
  fingerprint_ = hex64(h.digest());
  return fingerprint_;
}

void HealStage::run(const StageContext& ctx) {
  const Config& c = ctx.config;
  const HealConfig& k = c.heal;
  const auto& proc = process_info();
  const RunLayout layout(ctx.run_dir);
  const fs::path dir = layout.heal();
  if (k.steps == 0) return heal_off(dir);
  const at::Device device = run_device(c);
  const LoadedModel dense = load_model(c, /*weights=*/false);
  const Plan plan = read_plan(ctx.run_dir, dense.shape);
  const Scales scales = Scales::read(layout.scales(), plan);
  const HfCheckpoint ckpt = student_checkpoint(dense, plan, scales, layout.reconstructed_weights(),
                                               ctx.fingerprints.at(std::string(stage_names::calibrate)));
  const auto model = dense.adapter->load(ckpt, {compute_dtype(c), device});
  check_heal_fits(*model, *dense.adapter, c, device);

  // The trained weights (by kind) and their masters; everything else stays frozen.
  Trainable tr = trainable_weights(*model, *dense.adapter, c, device);
  const HealBatch b = heal_batch(c);
  const HealData data(c, dense.arch, cache_dir_, heal_cache_, b.samples());
  const std::optional<StateTeacher> teacher = state_teacher(c, dense, plan, device);
  auto comm = run_communicator(c, device);
  const auto cpu_comm = make_communicator("mpi", at::kCPU, c.dist.timeout_s);
  const StateCheckpoints checkpoints(RunLayout::checkpoints(dir), fingerprint_, std::string(stage_names::heal));
  BestWeights best(k, tr.masters);
  TrainingLoop loop = training_loop(c, checkpoints, dir, tr, best);
  int64_t step = loop.resume(*cpu_comm);
  if (step > 0) tr.masters_to_weights();
  for (auto& w : tr.weights) w.requires_grad_(true);
  log_heal_plan(k, b, tr, ckpt.total_numel(), device);
  const nlohmann::json reads = data_reads(c, b, data.train());

  // The steps: distil, one AdamW step, and the held-out KL every heal.eval_every steps and at the end.
  SampleOrder order(data.train().train_samples(), c.run.seed, "heal");
  const auto t0 = Clock::now();
  while (step < k.steps) {
    const auto step_t0 = Clock::now();
    const StepLoss loss = distill_step(*model, plan, data.train(), tr, order, step, b, c, teacher, device, *comm);
    const double lr = tr.update(k, step, loss.grad_norm);
    step += 1;
    const bool eval = !data.held.empty() && ((k.eval_every > 0 && step % k.eval_every == 0) || step == k.steps);
    const double held_kl =
        eval ? heldout_kl(*model, plan, data.run, data.held, c.train.kd_temperature, device, *comm) : NAN;
    if (eval) best.offer(tr.masters, held_kl, step);
    record_step(loop, step, loss, lr, held_kl, since(step_t0));
    loop.end_step(step, tr.masters, "healed weights");
  }

  const nlohmann::json summary = kept_weights(k, best, tr, step, reads, teacher.has_value());
  if (proc.rank == 0) {
    write_healed_weights(layout.healed_weights(), ckpt, *dense.adapter, tr, fingerprint_, step);
    atomic_write_text(layout.heal_summary(), summary.dump(2) + "\n");
  }
  world::barrier();
  log::info("heal: " + layout.healed_weights().string() + " after " + std::to_string(step) + " steps (" +
            log::duration(since(t0)) + ")");
}

}  // namespace hawada
