#include "stages/train_gates.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <map>
#include <regex>

#include <nlohmann/json.hpp>

#include "core/communicator.h"
#include "core/device.h"
#include "core/distill_loss.h"
#include "core/errors.h"
#include "core/fault.h"
#include "core/fs.h"
#include "core/hash.h"
#include "core/log.h"
#include "core/mpi_session.h"
#include "core/process.h"
#include "core/safetensors.h"
#include "core/teacher_cache.h"
#include "stages/student.h"

namespace hawada {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// Logits of one piece of tokens are at most this many bytes of fp32 [tokens, vocab].
constexpr int64_t kLogitBytesPerPiece = 256ll << 20;
constexpr double kAdamBeta1 = 0.9, kAdamBeta2 = 0.999, kAdamEps = 1e-8;

// SIGTERM (SLURM preemption) only sets this flag; the step boundary acts on it.
std::atomic<int> g_preempt{0};
extern "C" void on_sigterm(int) { g_preempt.store(1); }

// Installs the SIGTERM flag handler for the lifetime of the object.
class SigtermFlag {
 public:
  SigtermFlag() {
    g_preempt.store(0);
    struct sigaction sa {};
    sa.sa_handler = on_sigterm;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, &previous_);
  }
  ~SigtermFlag() { sigaction(SIGTERM, &previous_, nullptr); }

 private:
  struct sigaction previous_ {};
};

uint64_t mix(std::initializer_list<uint64_t> values, std::string_view tag) {
  Hasher h;
  h.update(tag);
  for (uint64_t v : values) h.update_u64(v);
  return h.digest();
}

// The training state that a checkpoint holds; identical on every rank.
struct State {
  int64_t step = 0;          // steps completed
  at::Tensor adam_m, adam_v;  // [P]
  double lambda1 = 0, lambda2 = 5;  // lambda2 starts as a penalty weight: see the Lagrangian below
};

// The global sample order: an infinite stream of epochs, each a seeded permutation of the training
// samples. Position p of the stream is the same sample whatever the world size.
class SampleOrder {
 public:
  SampleOrder(int64_t samples, int64_t seed) : samples_(samples), seed_(seed) {}
  int64_t at(int64_t position) {
    const int64_t epoch = position / samples_;
    auto it = epochs_.find(epoch);
    if (it == epochs_.end()) {
      if (epochs_.size() > 2) epochs_.erase(epochs_.begin());
      auto gen = at::make_generator<at::CPUGeneratorImpl>(mix({static_cast<uint64_t>(seed_), static_cast<uint64_t>(epoch)}, "order"));
      it = epochs_.emplace(epoch, at::randperm(samples_, gen, at::kLong)).first;
    }
    return it->second[position % samples_].item<int64_t>();
  }

 private:
  int64_t samples_, seed_;
  std::map<int64_t, at::Tensor> epochs_;
};

struct LossParts {
  double kl = 0, mse = 0;
  int64_t tokens = 0;
  double forward_s = 0, loss_s = 0, backward_s = 0;  // where the step's time went
};

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// The distillation loss of one micro-batch, scaled by `scale` and backpropagated into the gates.
// The LM head runs a piece of tokens at a time on detached features (so [tokens, vocab] never
// exists whole); their gradient then flows through the body once.
LossParts micro_batch_backward(const Model& model, const Batch& batch, const CacheChunk& teacher, const GateValues& gates,
                               const TrainConfig& tc, double scale) {
  LossParts parts;
  auto t = Clock::now();
  const at::Tensor features = model.features(batch, &gates);
  const at::Tensor detached = features.detach().requires_grad_(true);
  const at::Device dev = features.device();
  synchronize(dev);  // phase times are wall times of finished device work
  parts.forward_s = since(t);
  t = Clock::now();
  const double T = tc.kd_temperature;
  if (teacher.logits.defined()) {  // classifier: the full teacher distribution
    const at::Tensor s = model.head(detached).to(at::kFloat), t = teacher.logits.to(s.device());
    const at::Tensor kl = (at::softmax(t / T, -1) * (at::log_softmax(t / T, -1) - at::log_softmax(s / T, -1))).sum(-1).mean() * (T * T);
    at::Tensor loss = kl;
    const at::Tensor mse = (s - t).pow(2).mean();
    if (tc.mse_weight > 0) loss = loss + mse * tc.mse_weight;
    (loss * scale).backward();
    parts.kl = kl.item<double>();
    parts.mse = mse.item<double>();
    parts.tokens = s.size(0);
  } else {
    const int64_t B = features.size(0), L = features.size(1), D = features.size(2), k = teacher.topk_values.size(-1);
    const at::Tensor flat = detached.view({B * L, D});
    const at::Tensor values = teacher.topk_values.to(dev).view({B * L, k}).to(at::kFloat);
    const at::Tensor indices = teacher.topk_indices.to(dev).view({B * L, k}).to(at::kLong);
    const at::Tensor lse = teacher.logsumexp.to(dev).view({B * L});
    // The token weights on the host (no device round trip per piece), and on the device for the loss.
    const at::Tensor host_mask = batch.attention_mask.defined()
                                     ? batch.attention_mask.cpu().view({B * L}).ne(0).to(at::kDouble)
                                     : at::ones({B * L}, at::kDouble);
    const at::Tensor host_cumsum = at::cat({at::zeros({1}, at::kDouble), host_mask.cumsum(0)});
    const double* cum = host_cumsum.data_ptr<double>();
    const at::Tensor mask = host_mask.to(at::kFloat).to(dev);
    const double valid = cum[B * L];
    if (valid == 0) throw DataError("a micro-batch has no unmasked token to learn from");
    const int64_t vocab = model.head(flat.slice(0, 0, 1)).size(-1);
    const int64_t piece = std::max<int64_t>(1, kLogitBytesPerPiece / (vocab * 4));
    at::Tensor kl_sum = at::zeros({}, at::TensorOptions().dtype(at::kDouble).device(dev));
    at::Tensor mse_sum = at::zeros_like(kl_sum);
    for (int64_t a = 0; a < B * L; a += piece) {
      const int64_t b = std::min(B * L, a + piece);
      const at::Tensor m = mask.slice(0, a, b);
      const double w = (cum[b] - cum[a]) / valid;
      if (w == 0) continue;
      const at::Tensor s = model.head(flat.slice(0, a, b));
      const at::Tensor kl = topk_kl_loss(s, values.slice(0, a, b), indices.slice(0, a, b), lse.slice(0, a, b), T, m) * w;
      at::Tensor loss = kl;
      if (tc.mse_weight > 0) {
        // MSE on the logits the cache holds (the teacher's top-k).
        at::Tensor mse = (s.to(at::kFloat).gather(-1, indices.slice(0, a, b)) - values.slice(0, a, b)).pow(2).mean(-1);
        mse = (mse * m).sum() / valid;
        loss = loss + mse * tc.mse_weight;
        mse_sum += mse.detach().to(at::kDouble);
      }
      (loss * scale).backward();
      kl_sum += kl.detach().to(at::kDouble);
    }
    parts.kl = kl_sum.item<double>();
    parts.mse = mse_sum.item<double>();
    parts.tokens = static_cast<int64_t>(valid);
  }
  parts.loss_s = since(t);
  t = Clock::now();
  features.backward(detached.grad());
  synchronize(dev);
  parts.backward_s = since(t);
  return parts;
}

fs::path checkpoints_dir(const fs::path& run_dir) { return run_dir / "train" / "checkpoints"; }

std::string step_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld", static_cast<long long>(step));
  return buf;
}

// Rank 0 publishes the checkpoint directory atomically, then removes older ones.
void write_checkpoint(const fs::path& run_dir, const std::string& fingerprint, const GateParameters& gates,
                      const State& st) {
  if (process_info().rank != 0) return;
  const fs::path dir = checkpoints_dir(run_dir);
  fs::create_directories(dir);
  const fs::path final_dir = dir / step_dir_name(st.step);
  if (fs::exists(final_dir)) return;  // the same state, written before a crash
  publish_directory(final_dir, [&](const fs::path& tmp) {
    std::vector<safetensors::NamedTensor> t = {{"log_alpha", gates.flat.detach()},
                                  {"adam_m", st.adam_m},
                                  {"adam_v", st.adam_v},
                                  {"lambda", at::tensor({st.lambda1, st.lambda2}, at::kDouble)}};
    safetensors::write_file(tmp / "state.safetensors", t,
                            {{"step", std::to_string(st.step)}, {"fingerprint", fingerprint}});
  });
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("step-", 0) == 0 && n < final_dir.filename().string()) fs::remove_all(e.path());
  }
}

// The newest checkpoint of these inputs, if any (rank 0 reads it; every rank receives it).
bool resume(const fs::path& run_dir, const std::string& fingerprint, GateParameters& gates, State& st,
            Communicator& comm) {
  // The state travels as CPU bytes over MPI, whatever device the gates live on.
  uint64_t found = 0;
  at::Tensor lambdas = at::zeros({2}, at::kDouble);
  if (comm.rank() == 0) {
    const fs::path dir = checkpoints_dir(run_dir);
    fs::path newest;
    if (fs::exists(dir))
      for (const auto& e : fs::directory_iterator(dir)) {
        const std::string n = e.path().filename().string();
        if (std::regex_match(n, std::regex("step-[0-9]{8}")) && (newest.empty() || n > newest.filename().string()))
          newest = e.path();
      }
    if (!newest.empty()) {
      const safetensors::Reader r(newest / "state.safetensors");
      const auto& meta = r.header().metadata;
      if (!meta.count("fingerprint") || meta.at("fingerprint") != fingerprint) {
        log::warn("train_gates: " + dir.string() + " holds checkpoints of other inputs; starting afresh");
        fs::remove_all(dir);
      } else {
        at::NoGradGuard no_grad;
        const at::Tensor la = r.tensor("log_alpha");
        if (la.sizes() != gates.flat.sizes())
          throw CheckpointError("'" + r.path().string() + "': log_alpha has " + c10::str(la.sizes()) + ", expected " +
                                c10::str(gates.flat.sizes()));
        gates.flat.copy_(la);
        st.adam_m.copy_(r.tensor("adam_m"));
        st.adam_v.copy_(r.tensor("adam_v"));
        lambdas.copy_(r.tensor("lambda"));
        st.step = std::stoll(meta.at("step"));
        found = 1;
      }
    }
  }
  if (!world::broadcast(found)) return false;
  st.step = static_cast<int64_t>(world::broadcast(static_cast<uint64_t>(st.step)));
  at::NoGradGuard no_grad;
  for (at::Tensor* t : {&gates.flat, &st.adam_m, &st.adam_v, &lambdas}) {
    at::Tensor cpu = t->cpu().contiguous();
    // Doubles travel as their bytes so the broadcast is exact.
    at::Tensor bytes = cpu.view(at::kByte);
    comm.broadcast(bytes, 0);
    t->copy_(cpu);
  }
  st.lambda1 = lambdas[0].item<double>();
  st.lambda2 = lambdas[1].item<double>();
  return true;
}

// metrics.jsonl without lines past `step` (a resumed run rewrites them).
void trim_metrics(const fs::path& file, int64_t step) {
  if (!fs::exists(file)) return;
  std::ifstream in(file);
  std::string line, kept;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.contains("step") || j["step"].get<int64_t>() > step) break;
    kept += line + "\n";
  }
  atomic_write_text(file, kept);
}

uint64_t gate_hash(const at::Tensor& t) {
  const at::Tensor c = t.detach().cpu().contiguous();
  Hasher h;
  h.update(c.data_ptr(), static_cast<size_t>(c.nbytes()));
  return h.digest();
}

}  // namespace

std::string TrainGatesStage::fingerprint(const StageContext& ctx) {
  const Config& c = ctx.config;
  const int64_t world = process_info().size;
  Hasher h;
  h.update("train_gates/1");
  h.update(ctx.fingerprints.at("teacher_cache"));
  h.update(c10::toString(compute_dtype(c)));
  // The global batch (not how it is split over ranks) fixes the result.
  for (int64_t v : {c.run.seed, c.train.steps, static_cast<int64_t>(c.train.micro_batch),
                    static_cast<int64_t>(c.train.grad_accum) * world, c.train.warmup, c.train.holdout,
                    static_cast<int64_t>(c.gates.heads), static_cast<int64_t>(c.gates.ffn),
                    static_cast<int64_t>(c.gates.hidden), static_cast<int64_t>(c.budget.metric), c.budget.latency_batch})
    h.update_u64(static_cast<uint64_t>(v));
  for (double v : {c.train.lr, c.train.kd_temperature, c.train.mse_weight, c.gates.init, c.gates.temperature,
                   c.budget.target, c.budget.device_flops, c.budget.device_bandwidth})
    h.update(&v, sizeof v);
  fingerprint_ = hex64(h.digest());
  cache_dir_ = c.teacher.cache_root / ctx.fingerprints.at("teacher_cache");
  return fingerprint_;
}

void TrainGatesStage::run(const StageContext& ctx) {
  const Config& c = ctx.config;
  const TrainConfig& tc = c.train;
  const auto& proc = process_info();
  // One GPU per rank when there are GPUs (NCCL all-reduce), else the CPU (MPI).
  const at::Device device = run_device(c);
  LoadedModel lm = load_model(c, true, device);
  const GatesConfig gates_config = effective_gates(c, lm.arch);
  const auto data = open_data(c, lm.arch);
  const CacheLayout layout = read_cache_index(cache_dir_);
  if (layout.samples != data->size())
    throw CacheError("'" + cache_dir_.string() + "' holds " + std::to_string(layout.samples) + " samples, the data " +
                     std::to_string(data->size()));

  const int64_t world = proc.size, accum = tc.grad_accum, mb = tc.micro_batch;
  const int64_t global_micros = world * accum;
  const int64_t train_samples = data->size() - tc.holdout;
  if (train_samples < mb * global_micros)
    throw ConfigError(c.source.string() + ": train.holdout = " + std::to_string(tc.holdout) + " leaves " +
                      std::to_string(std::max<int64_t>(0, train_samples)) + " of " + std::to_string(data->size()) +
                      " samples for training, fewer than one global batch (micro_batch x grad_accum x ranks = " +
                      std::to_string(mb * global_micros) + ")");

  auto comm = run_communicator(c, device);
  HardConcrete hc;
  hc.beta = c.gates.temperature;
  GateParameters gates(gates_config, lm.model->gate_shape());
  gates.to(device);
  gates.flat.requires_grad_(true);
  const BudgetCost budget(c, lm.shape);
  State st;
  st.adam_m = at::zeros_like(gates.flat.detach());
  st.adam_v = at::zeros_like(gates.flat.detach());  // on the gates' device

  const fs::path train_dir = ctx.run_dir / "train", metrics_file = train_dir / "metrics.jsonl";
  if (proc.rank == 0) fs::create_directories(train_dir);
  const auto cpu_comm = make_communicator("mpi", at::kCPU, c.dist.timeout_s);
  if (resume(ctx.run_dir, fingerprint_, gates, st, *cpu_comm))
    log::info("train_gates: resumed from step " + std::to_string(st.step) + " of " + std::to_string(tc.steps));
  if (proc.rank == 0) {
    if (st.step == 0) fs::remove(metrics_file);
    else trim_metrics(metrics_file, st.step);
  }
  std::ofstream metrics;
  if (proc.rank == 0) metrics.open(metrics_file, std::ios::app);

  SampleOrder order(train_samples, c.run.seed);
  SigtermFlag sigterm;
  const double lambda_lr = tc.lr * 0.2;
  const auto t0 = Clock::now();
  auto last_report = t0;
  const int64_t first_step = st.step;
  if (gates_config != c.gates)
    log::info("train_gates: a ViT couples heads and hidden (hidden_size = heads x head size), so both get gates");
  log::info("train_gates: " + std::to_string(tc.steps) + " steps of " + std::to_string(mb * global_micros) +
            " samples (" + std::to_string(world) + " rank(s) x " + std::to_string(accum) + " micro-batch(es) of " +
            std::to_string(mb) + "), " + std::to_string(gates.flat.numel()) + " gates, budget " +
            (c.budget.metric == BudgetMetric::params ? "params" : "latency") + " " + std::to_string(c.budget.target));

  while (st.step < tc.steps) {
    const auto step_t0 = Clock::now();
    const int64_t step = st.step;
    // The budget target falls linearly from the dense model to budget.target over the warm-up.
    const double target =
        tc.warmup == 0 ? c.budget.target
                       : 1.0 - (1.0 - c.budget.target) * std::min(1.0, static_cast<double>(step + 1) / tc.warmup);
    if (gates.flat.grad().defined()) gates.flat.mutable_grad().zero_();

    LossParts sum;
    double data_s = 0;
    for (int64_t a = 0; a < accum; ++a) {
      const auto data_t0 = Clock::now();
      const int64_t g = proc.rank * accum + a;  // global micro-batch index of this step
      std::vector<int64_t> samples;
      for (int64_t j = 0; j < mb; ++j) samples.push_back(order.at((step * global_micros + g) * mb + j));
      const Batch batch =
          to_device(with_context("train_gates: ", [&] { return read_samples(*data, samples); }), device);
      const CacheChunk teacher = read_cache_samples(cache_dir_, layout, samples);
      data_s += since(data_t0);
      // One gate sample per micro-batch, from noise fixed by (seed, step, global micro-batch).
      auto gen = at::make_generator<at::CPUGeneratorImpl>(
          mix({static_cast<uint64_t>(c.run.seed), static_cast<uint64_t>(step), static_cast<uint64_t>(g)}, "gates"));
      const at::Tensor u = at::empty({gates.flat.numel()}, at::kFloat).uniform_(1e-6, 1.0 - 1e-6, gen).to(device);
      const at::Tensor z = hc.sample_from_uniform(gates.flat, u);
      GateParameters::Views views = gates.views_of(z);
      const GateValues values{views.heads, views.ffn, views.hidden};
      const LossParts p = micro_batch_backward(*lm.model, batch, teacher, values, tc, 1.0 / static_cast<double>(global_micros));
      sum.kl += p.kl;
      sum.mse += p.mse;
      sum.tokens += p.tokens;
      sum.forward_s += p.forward_s, sum.loss_s += p.loss_s, sum.backward_s += p.backward_s;
    }
    const auto sync_t0 = Clock::now();
    at::Tensor grad = gates.flat.grad().defined() ? gates.flat.grad().clone() : at::zeros_like(gates.flat.detach());
    comm->all_reduce(grad, Communicator::Op::sum);
    at::Tensor stats = at::tensor({sum.kl, sum.mse, static_cast<double>(sum.tokens)}, at::kDouble).to(device);
    comm->all_reduce(stats, Communicator::Op::sum);
    const double kl = stats[0].item<double>() / global_micros, mse = stats[1].item<double>() / global_micros;
    const int64_t tokens = static_cast<int64_t>(stats[2].item<double>());
    const double sync_s = since(sync_t0);

    // The Lagrangian lambda1 (C - t) + lambda2 (C - t)^2 on the expected cost ratio C: gradient
    // descent for the gates, ascent for the multipliers (identical on every rank).
    gates.flat.mutable_grad().zero_();
    const at::Tensor cost = budget.ratio(gates.expected_counts(hc));
    const at::Tensor gap = cost - target;
    const at::Tensor lagrangian = gap * st.lambda1 + gap * gap * st.lambda2;
    lagrangian.backward();
    grad.add_(gates.flat.grad());
    const double gap_v = gap.item<double>();
    {
      at::NoGradGuard no_grad;
      // Adam on the gates (no weight decay: log-alpha has no natural zero to decay to).
      const double t = static_cast<double>(step + 1);
      st.adam_m.mul_(kAdamBeta1).add_(grad, 1 - kAdamBeta1);
      st.adam_v.mul_(kAdamBeta2).addcmul_(grad, grad, 1 - kAdamBeta2);
      const at::Tensor mhat = st.adam_m / (1 - std::pow(kAdamBeta1, t));
      const at::Tensor vhat = st.adam_v / (1 - std::pow(kAdamBeta2, t));
      gates.flat.sub_(mhat / (vhat.sqrt() + kAdamEps) * tc.lr);
      st.lambda1 += lambda_lr * gap_v;
      st.lambda2 += lambda_lr * gap_v * gap_v;
      if (fault_flag("train_gates.perturb_gates")) gates.flat.add_(1e-3);  // for the drift test
    }
    st.step = step + 1;

    const double step_s = std::chrono::duration<double>(Clock::now() - step_t0).count();
    if (proc.rank == 0) {
      const GateCounts counts = gates.expected_counts(hc);
      nlohmann::json j{{"step", st.step},
                       {"loss", kl + tc.mse_weight * mse + lagrangian.item<double>()},
                       {"kl", kl},
                       {"mse", mse},
                       {"lagrangian", lagrangian.item<double>()},
                       {"expected_cost", cost.item<double>()},
                       {"target", target},
                       {"lambda1", st.lambda1},
                       {"lambda2", st.lambda2},
                       {"tokens_per_s", static_cast<double>(tokens) / step_s},
                       {"step_s", step_s},
                       {"data_s", data_s},
                       {"forward_s", sum.forward_s},
                       {"loss_s", sum.loss_s},
                       {"backward_s", sum.backward_s},
                       {"allreduce_s", sync_s}};
      at::NoGradGuard no_grad;
      const GateShape gs = lm.model->gate_shape();
      if (counts.heads.defined()) j["kept_heads"] = counts.heads.sum().item<double>() / (gs.layers * gs.heads);
      if (counts.ffn.defined()) j["kept_ffn"] = counts.ffn.sum().item<double>() / (gs.layers * gs.ffn);
      if (counts.hidden.defined()) j["kept_hidden"] = counts.hidden.item<double>() / gs.hidden;
      metrics << j.dump() << "\n" << std::flush;
      const auto now = Clock::now();
      if (now - last_report > std::chrono::seconds(5) || st.step == tc.steps) {
        const double s = std::chrono::duration<double>(now - t0).count();
        const double per_step = s / static_cast<double>(st.step - first_step);
        char line[256];
        std::snprintf(line, sizeof line, "train_gates: step %lld/%lld kl %.4f cost %.3f (target %.3f) %.0f tokens/s ETA %s",
                      static_cast<long long>(st.step), static_cast<long long>(tc.steps), kl, cost.item<double>(), target,
                      static_cast<double>(tokens) / step_s, log::duration(per_step * (tc.steps - st.step)).c_str());
        log::info(line);
        last_report = now;
      }
    }

    if (st.step % c.dist.check_every == 0 || st.step == tc.steps) {
      // Every rank must hold the same gates: a drift is a bug or a bad node, never silently averaged.
      const uint64_t mine = gate_hash(gates.flat), root = world::broadcast(mine);
      if (world::sum(mine != root ? 1 : 0) > 0)
        throw CommError("gate parameters differ across ranks after step " + std::to_string(st.step) +
                        " (this rank " + hex64(mine) + ", rank 0 " + hex64(root) + ")");
    }
    fault_point("train_gates.after_step_" + std::to_string(st.step));
    const bool preempt = world::sum(g_preempt.load()) > 0;
    if (st.step % tc.checkpoint_every == 0 || st.step == tc.steps || preempt)
      write_checkpoint(ctx.run_dir, fingerprint_, gates, st);
    if (preempt && st.step < tc.steps) {
      world::barrier();
      throw Preempted("train_gates: SIGTERM: checkpointed step " + std::to_string(st.step) + " of " +
                      std::to_string(tc.steps) + "; rerun the same command to resume (exit " +
                      std::to_string(kExitRequeue) + " = requeue)");
    }
  }

  // Projection onto the budget: the multipliers bring the expected cost to the target only on
  // average (it oscillates around it), so one uniform shift of every log-alpha, found by bisection
  // (the expected cost grows monotonically with it), puts the expected cost on the target. It keeps
  // the order of the gates within each kind; the shift is logged and is small after a long run.
  at::NoGradGuard no_grad;
  const double before = budget.ratio_of(gates.expected_counts(hc));
  double lo = -40, hi = 40;
  for (int i = 0; i < 80; ++i) {
    const double mid = 0.5 * (lo + hi);
    (budget.ratio_of(gates.expected_counts(hc, gates.flat + mid)) < c.budget.target ? lo : hi) = mid;
  }
  const double shift = 0.5 * (lo + hi);
  gates.flat.add_(shift);
  const double expected = budget.ratio_of(gates.expected_counts(hc));
  const double final_cost = budget.ratio_of(gates.evaluation_counts(hc));
  char line[256];
  std::snprintf(line, sizeof line,
                "train_gates: expected cost %.4f at the last step; log-alpha shifted by %+.3f onto the target %.4f; "
                "the evaluation gates cost %.4f (%+.2f%% of the target)",
                before, shift, expected, final_cost, 100.0 * (final_cost / c.budget.target - 1));
  log::info(line);
  if (std::abs(final_cost / c.budget.target - 1) > 0.02)
    log::warn("train_gates: the evaluation gates miss the budget by more than 2%: the model has too few structures "
              "for this target to be hit closely");
  if (proc.rank == 0) {
    fs::create_directories(trained_gates_file(ctx.run_dir).parent_path());
    safetensors::write_file(trained_gates_file(ctx.run_dir), gates.named(),
                            {{"fingerprint", fingerprint_},
                             {"temperature", std::to_string(c.gates.temperature)},
                             {"deterministic_cost", std::to_string(final_cost)}});
  }
}

}  // namespace hawada
