#include "stages/heal.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "core/base/errors.h"
#include "core/base/fault.h"
#include "core/base/fs.h"
#include "core/base/hash.h"
#include "core/base/log.h"
#include "core/dist/mpi_session.h"
#include "core/base/process.h"
#include "core/io/safetensors.h"
#include "training/distill.h"
#include "training/training_loop.h"
#include "training/student.h"

namespace hawada {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// Elements per all-reduce bucket of the weight gradients (fp32: 256 MB).
constexpr int64_t kBucketElements = 64ll << 20;
// Held-out samples the KL is measured on every heal.eval_every steps.
constexpr int64_t kEvalSamples = 16;

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

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

// The trained weights of the student and their fp32 masters, laid end to end in one flat vector.
struct Trainable {
  std::vector<std::string> names;
  std::vector<at::Tensor> weights;  // the model's own tensors (compute dtype)
  std::vector<int64_t> offsets;
  at::Tensor masters;  // [P] fp32
  at::Tensor master(size_t i) const {
    return masters.narrow(0, offsets[i], weights[i].numel()).view(weights[i].sizes());
  }
};

// Mean KL per token on `samples` (each rank its share; summed over the ranks). Collective.
double heldout_kl(const Model& model, const Plan& plan, const DistillData& data, const std::vector<int64_t>& samples,
                  double T, const at::Device& device, Communicator& comm) {
  const auto& proc = process_info();
  double sum = 0, tokens = 0;
  for (size_t i = static_cast<size_t>(proc.rank); i < samples.size(); i += static_cast<size_t>(proc.size)) {
    const Batch b = data.batch({samples[i]}, device);
    const double n = b.attention_mask.defined() ? b.attention_mask.ne(0).sum().item<double>()
                     : b.input_ids.defined()    ? static_cast<double>(b.input_ids.numel())
                                                : 1.0;
    sum += distill_loss(model, b, for_student(data.teacher({samples[i]}), plan), nullptr, T) * n;
    tokens += n;
  }
  at::Tensor t = at::tensor({sum, tokens}, at::kDouble).to(device);
  comm.all_reduce(t, Communicator::Op::sum);
  const at::Tensor h = t.cpu();
  return h[0].item<double>() / std::max(1.0, h[1].item<double>());
}

}  // namespace


std::string HealStage::fingerprint(const StageContext& ctx) {
  const Config& c = ctx.config;
  const HealConfig& k = c.heal;
  const int64_t world = process_info().size;
  const int64_t mb = k.micro_batch > 0 ? k.micro_batch : c.train.micro_batch;
  const int64_t accum = k.grad_accum > 0 ? k.grad_accum : c.train.grad_accum;
  Hasher h;
  h.update("heal/1");
  h.update(ctx.fingerprints.at(std::string(stage_names::calibrate)));
  h.update(c10::toString(compute_dtype(c)));
  h.update(k.train);
  for (int64_t v : {k.steps, k.warmup, mb, accum * world, c.run.seed, c.train.holdout}) h.update_u64(static_cast<uint64_t>(v));
  for (double v : {k.lr, k.weight_decay, k.clip, c.train.kd_temperature, c.train.mse_weight}) h.update(&v, sizeof v);
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
  const fs::path dir = RunLayout(ctx.run_dir).heal();
  if (k.steps == 0) {
    // Off: nothing of an earlier healed run may reach the export.
    if (proc.rank == 0) fs::remove_all(dir);
    log::info("heal: off (heal.steps = 0)");
    world::barrier();
    return;
  }
  const at::Device device = run_device(c);
  const LoadedModel dense = load_model(c, /*weights=*/false);
  const Plan plan = read_plan(ctx.run_dir, dense.shape);
  const Scales scales = Scales::read(RunLayout(ctx.run_dir).scales(), plan);
  const HfCheckpoint ckpt = pruned_checkpoint(dense, plan, scales);
  const auto model = dense.adapter->load(ckpt, {compute_dtype(c), device});

  // The trained weights (by kind) and their masters; everything else stays frozen.
  const std::set<std::string> kinds = kinds_of(k.train);
  Trainable tr;
  int64_t total = 0;
  for (const auto& [name, w] : model->named_weights()) {
    if (!kinds.count(dense.adapter->weight_kind(name))) continue;
    tr.names.push_back(name);
    tr.weights.push_back(w);
    tr.offsets.push_back(total);
    total += w.numel();
  }
  if (tr.weights.empty())
    throw ConfigError(c.source.string() + ": heal.train = \"" + k.train + "\" selects no weight of this model");
  tr.masters = at::empty({total}, at::TensorOptions().dtype(at::kFloat).device(device));
  {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < tr.weights.size(); ++i) tr.master(i).copy_(tr.weights[i]);
  }
  Adam adam(tr.masters);
  at::Tensor grads = at::zeros_like(tr.masters);

  const int64_t mb = k.micro_batch > 0 ? k.micro_batch : c.train.micro_batch;
  const int64_t accum = k.grad_accum > 0 ? k.grad_accum : c.train.grad_accum;
  const int64_t global_micros = static_cast<int64_t>(proc.size) * accum;
  // Training samples: heal.data (every sample), else the run's (without its held-out samples); the
  // held-out KL is always measured on the run's held-out samples.
  const DistillData run_data(c, dense.arch, cache_dir_, 1, "heal");
  std::unique_ptr<DistillData> heal_data;
  if (!heal_cache_.empty()) {
    DataSpec spec = data_spec(c);
    spec.path = c.heal.data;
    spec.samples = 0;
    heal_data = std::make_unique<DistillData>(c, spec, 0, dense.arch, heal_cache_, mb * global_micros, "healing");
    log::info("heal: training on every sample of heal.data = " + spec.path.string() + " (" +
              std::to_string(heal_data->samples()) + " samples)");
  }
  const DistillData& data = heal_data ? *heal_data : run_data;
  auto comm = run_communicator(c, device);
  const auto cpu_comm = make_communicator("mpi", at::kCPU, c.dist.timeout_s);
  const StateCheckpoints checkpoints(RunLayout::checkpoints(dir), fingerprint_, std::string(stage_names::heal));
  TrainingLoop loop({.stage = "heal", .steps = k.steps, .checkpoint_every = k.checkpoint_every,
                     .check_every = c.dist.check_every, .checkpoints = &checkpoints, .metrics = RunLayout::metrics(dir)},
                    {{"masters", &tr.masters}, {"adam_m", &adam.m}, {"adam_v", &adam.v}});
  int64_t step = loop.resume(*cpu_comm);
  auto masters_to_weights = [&] {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < tr.weights.size(); ++i) tr.weights[i].copy_(tr.master(i));
  };
  if (step > 0) masters_to_weights();
  for (auto& w : tr.weights) w.requires_grad_(true);

  std::vector<int64_t> held;
  for (int64_t s = run_data.train_samples(); s < run_data.samples() && static_cast<int64_t>(held.size()) < kEvalSamples; ++s)
    held.push_back(s);
  const double bytes_per_param =
      static_cast<double>(c10::elementSize(tr.weights[0].scalar_type())) + 4 + 4 + 8;  // weight, master, grad, moments
  char intro[320];
  std::snprintf(intro, sizeof intro,
                "heal: %lld steps of %lld samples (%d rank(s) x %lld micro-batch(es) of %lld), %lld of %llu weights "
                "train (%s); about %.0f bytes per trained parameter (%.2f GB) on %s",
                static_cast<long long>(k.steps), static_cast<long long>(mb * global_micros), proc.size,
                static_cast<long long>(accum), static_cast<long long>(mb), static_cast<long long>(total),
                static_cast<unsigned long long>(ckpt.total_numel()), k.train.c_str(), bytes_per_param,
                bytes_per_param * static_cast<double>(total) / 1e9, device.str().c_str());
  log::info(intro);

  SampleOrder order(data.train_samples(), c.run.seed, "heal");
  const auto t0 = Clock::now();
  while (step < k.steps) {
    const auto step_t0 = Clock::now();
    grads.zero_();
    LossParts sum;
    double data_s = 0;
    for (int64_t a = 0; a < accum; ++a) {
      const auto d0 = Clock::now();
      const int64_t g = proc.rank * accum + a;
      const std::vector<int64_t> samples = order.micro_batch(step, g, global_micros, mb);
      const Batch batch = with_context("heal: ", [&] { return data.batch(samples, device); });
      const CacheChunk teacher = for_student(data.teacher(samples), plan);
      data_s += since(d0);
      const LossParts p = distill_backward(*model, batch, teacher, nullptr, c.train.kd_temperature, c.train.mse_weight,
                                           1.0 / static_cast<double>(global_micros));
      sum.kl += p.kl, sum.mse += p.mse, sum.tokens += p.tokens;
      sum.forward_s += p.forward_s, sum.loss_s += p.loss_s, sum.backward_s += p.backward_s;
      // Each micro-batch's weight gradients go into the fp32 accumulator and are freed.
      at::NoGradGuard no_grad;
      for (size_t i = 0; i < tr.weights.size(); ++i) {
        at::Tensor& w = tr.weights[i];
        if (!w.grad().defined()) continue;
        grads.narrow(0, tr.offsets[i], w.numel()).view(w.sizes()).add_(w.grad());
        w.mutable_grad().reset();
      }
    }
    // The gradients in buckets, then the losses.
    const auto s0 = Clock::now();
    for (int64_t a = 0; a < total; a += kBucketElements) {
      at::Tensor bucket = grads.narrow(0, a, std::min(kBucketElements, total - a));
      comm->all_reduce(bucket, Communicator::Op::sum);
    }
    at::Tensor stats = at::tensor({sum.kl, sum.mse, static_cast<double>(sum.tokens)}, at::kDouble).to(device);
    comm->all_reduce(stats, Communicator::Op::sum);
    const at::Tensor hs = stats.cpu();
    const double sync_s = since(s0);
    const double kl = hs[0].item<double>() / global_micros, mse = hs[1].item<double>() / global_micros;
    const double grad_norm = grads.norm().item<double>();
    check_finite(kl + mse, "the distillation loss", "heal", step + 1);
    check_finite(grad_norm, "the gradient norm", "heal", step + 1);
    if (k.clip > 0 && grad_norm > k.clip) grads.mul_(k.clip / grad_norm);
    const double lr = k.lr * warmup_cosine(step, std::min(k.warmup, k.steps), k.steps, 0.1);
    adam.step(tr.masters, grads, lr, step + 1, k.weight_decay);
    masters_to_weights();
    step += 1;

    double held_kl = NAN;
    if (!held.empty() && ((k.eval_every > 0 && step % k.eval_every == 0) || step == k.steps))
      held_kl = heldout_kl(*model, plan, run_data, held, c.train.kd_temperature, device, *comm);
    const double step_s = since(step_t0);
    nlohmann::json j{{"step", step}, {"kl", kl}, {"mse", mse}, {"lr", lr}, {"grad_norm", grad_norm},
                     {"tokens_per_s", hs[2].item<double>() / step_s}, {"step_s", step_s}, {"data_s", data_s},
                     {"forward_s", sum.forward_s}, {"loss_s", sum.loss_s}, {"backward_s", sum.backward_s},
                     {"allreduce_s", sync_s}};
    if (std::isfinite(held_kl)) j["heldout_kl"] = held_kl;
    loop.record(j);
    char what[160];
    std::snprintf(what, sizeof what, "kl %.4f%s lr %.2e %.0f tokens/s", kl,
                  std::isfinite(held_kl) ? (" held-out kl " + std::to_string(held_kl).substr(0, 6)).c_str() : "", lr,
                  hs[2].item<double>() / step_s);
    loop.progress(step, what, /*force=*/std::isfinite(held_kl));
    loop.end_step(step, tr.masters, "healed weights");
  }

  // Every tensor of the pruned model in fp32: the trained masters, the rest as sliced. A tied LM head
  // stored in the checkpoint follows the healed embedding.
  if (proc.rank == 0) {
    std::map<std::string, at::Tensor> healed;
    for (size_t i = 0; i < tr.names.size(); ++i) healed[tr.names[i]] = tr.master(i).detach().cpu();
    std::vector<safetensors::NamedTensor> out;
    const bool tied = ckpt.config().value("tie_word_embeddings", false);
    for (const std::string& name : ckpt.tensor_names()) {
      auto it = healed.find(name);
      at::Tensor t = it != healed.end() ? it->second : ckpt.tensor(name).to(at::kFloat);
      if (tied && dense.adapter->weight_kind(name) == "head") {
        for (const auto& [n, v] : healed)
          if (dense.adapter->weight_kind(n) == "embedding" && v.sizes() == t.sizes()) t = v;
      }
      if (!at::isfinite(t).all().item<bool>())
        throw NumericError("heal: tensor '" + name + "' holds non-finite values after step " + std::to_string(step));
      out.push_back({name, t.contiguous()});
    }
    safetensors::write_file(RunLayout(ctx.run_dir).healed_weights(), out, {{"fingerprint", fingerprint_}, {"steps", std::to_string(step)}});
  }
  world::barrier();
  log::info("heal: " + RunLayout(ctx.run_dir).healed_weights().string() + " after " + std::to_string(step) + " steps (" +
            log::duration(since(t0)) + ")");
}

}  // namespace hawada
