#include "training/training_loop.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <csignal>
#include <map>

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

namespace hawada {
namespace {

namespace fs = std::filesystem;

std::atomic<int> g_preempt{0};
struct sigaction g_previous {};
extern "C" void on_sigterm(int) { g_preempt.store(1); }

// "step-" and 8 digits (std::regex would cost this file most of its compile time).
bool is_step_dir_name(const std::string& n) {
  if (n.size() != 13 || n.rfind("step-", 0) != 0) return false;
  for (size_t i = 5; i < n.size(); ++i)
    if (n[i] < '0' || n[i] > '9') return false;
  return true;
}

std::string step_dir_name(int64_t step) { return fmt::format("step-{:08}", step); }

}  // namespace

PreemptionFlag::PreemptionFlag() {
  g_preempt.store(0);
  struct sigaction sa {};
  sa.sa_handler = on_sigterm;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, &g_previous);
}

PreemptionFlag::~PreemptionFlag() { sigaction(SIGTERM, &g_previous, nullptr); }

bool PreemptionFlag::any_rank() const { return world::sum(g_preempt.load(), world::Wait::step) > 0; }

Adam::Adam(const at::Tensor& like, double beta1, double beta2, double eps)
    : m(at::zeros_like(like.detach(), at::TensorOptions().dtype(at::kFloat))),
      v(at::zeros_like(like.detach(), at::TensorOptions().dtype(at::kFloat))),
      beta1_(beta1),
      beta2_(beta2),
      eps_(eps) {}

void Adam::step(at::Tensor& params, const at::Tensor& grad, double lr, int64_t step, double weight_decay) {
  at::NoGradGuard no_grad;
  const double t = static_cast<double>(step);
  m.mul_(beta1_).add_(grad, 1 - beta1_);
  v.mul_(beta2_).addcmul_(grad, grad, 1 - beta2_);
  const double c1 = 1 - std::pow(beta1_, t), c2 = 1 - std::pow(beta2_, t);
  if (weight_decay > 0) params.mul_(1 - lr * weight_decay);
  // p -= lr * (m / c1) / (sqrt(v / c2) + eps), in slices of a flat vector so that the denominator's temporary stays
  // small (a whole one is 4 bytes per trained weight: 1.5 GiB for LLaMA-3.2-1B's attention and MLP at half width, which
  // drill 6 saw OOM-kill a heal). Element-wise, so the result is the same bit for bit.
  constexpr int64_t kSlice = int64_t{1} << 22;
  const int64_t n = params.dim() == 1 ? params.numel() : 0;
  if (n <= kSlice) {
    const at::Tensor denom = (v / c2).sqrt_().add_(eps_);
    params.addcdiv_(m, denom, -lr / c1);
    return;
  }
  for (int64_t i = 0; i < n; i += kSlice) {
    const int64_t len = std::min(kSlice, n - i);
    const at::Tensor denom = (v.narrow(0, i, len) / c2).sqrt_().add_(eps_);
    params.narrow(0, i, len).addcdiv_(m.narrow(0, i, len), denom, -lr / c1);
  }
}

namespace {
// Metadata key prefix of each tensor's XXH64 in a checkpoint (checkpoints written before it are read unchecked).
const std::string kHashKey = "xxh64:";
}  // namespace

StateCheckpoints::StateCheckpoints(fs::path dir, std::string fingerprint, std::string stage)
    : dir_(std::move(dir)), fingerprint_(std::move(fingerprint)), stage_(std::move(stage)) {}

void StateCheckpoints::write(int64_t step, const std::vector<safetensors::NamedTensor>& tensors) const {
  if (process_info().rank != 0) return;
  fs::create_directories(dir_);
  const fs::path final_dir = dir_ / step_dir_name(step);
  if (fs::exists(final_dir)) return;  // the same state, written before a crash
  std::vector<safetensors::NamedTensor> cpu;
  std::map<std::string, std::string> metadata{{"step", std::to_string(step)}, {"fingerprint", fingerprint_}};
  for (const auto& t : tensors) {
    cpu.push_back({t.name, t.tensor.detach().cpu().contiguous()});
    metadata[kHashKey + t.name] = hex64(tensor_hash(cpu.back().tensor));  // a flipped bit is found on resume
  }
  publish_directory(final_dir,
                    [&](const fs::path& tmp) { safetensors::write_file(tmp / "state.safetensors", cpu, metadata); });
  for (const auto& e : fs::directory_iterator(dir_)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("step-", 0) == 0 && n < final_dir.filename().string()) fs::remove_all(e.path());
  }
}

int64_t StateCheckpoints::resume(const std::vector<std::pair<std::string, at::Tensor*>>& targets,
                                 Communicator& cpu_comm) const {
  uint64_t step = 0;
  if (cpu_comm.rank() == 0 && fs::exists(dir_)) {
    fs::path newest;
    for (const auto& e : fs::directory_iterator(dir_)) {
      const std::string n = e.path().filename().string();
      if (is_step_dir_name(n) && (newest.empty() || n > newest.filename().string())) newest = e.path();
    }
    if (!newest.empty()) {
      const safetensors::Reader r(newest / "state.safetensors");
      const auto& meta = r.header().metadata;
      if (!meta.count("fingerprint") || meta.at("fingerprint") != fingerprint_) {
        log::warn(stage_ + ": " + dir_.string() + " holds checkpoints of other inputs; starting afresh");
        fs::remove_all(dir_);
      } else {
        at::NoGradGuard no_grad;
        for (const auto& [name, t] : targets) {
          if (!r.contains(name)) throw CheckpointError("'" + r.path().string() + "' has no tensor '" + name + "'");
          const at::Tensor src = r.tensor(name);
          if (src.sizes() != t->sizes() || src.scalar_type() != t->scalar_type())
            throw CheckpointError("'" + r.path().string() + "': tensor '" + name + "' is " +
                                  c10::toString(src.scalar_type()) + " " + c10::str(src.sizes()) + ", expected " +
                                  c10::toString(t->scalar_type()) + " " + c10::str(t->sizes()));
          const auto hash = meta.find(kHashKey + name);
          if (hash != meta.end() && hash->second != hex64(tensor_hash(src)))
            throw CheckpointError("'" + r.path().string() + "': tensor '" + name + "' does not match the checksum " +
                                  "written with it (a flipped bit or a torn write): remove " + dir_.string() +
                                  " to start " + stage_ + " afresh");
          t->copy_(src);
        }
        step = static_cast<uint64_t>(std::stoll(meta.at("step")));
      }
    }
  }
  step = world::broadcast(step);
  if (step == 0) return 0;
  at::NoGradGuard no_grad;
  for (const auto& [name, t] : targets) {
    at::Tensor cpu = t->cpu().contiguous();
    at::Tensor bytes = cpu.view({-1}).view(at::kByte);  // exact: the bytes travel
    cpu_comm.broadcast(bytes, 0);
    t->copy_(cpu);
  }
  return static_cast<int64_t>(step);
}

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

uint64_t tensor_hash(const at::Tensor& t) {
  const at::Tensor c = t.detach().cpu().contiguous();
  Hasher h;
  h.update(c.data_ptr(), static_cast<size_t>(c.nbytes()));
  return h.digest();
}

void check_identical_across_ranks(const at::Tensor& t, const std::string& what, int64_t step) {
  const uint64_t mine = tensor_hash(t), root = world::broadcast(mine, 0, world::Wait::step);
  if (world::sum(mine != root ? 1 : 0, world::Wait::step) > 0)
    throw CommError(what + " differ across ranks after step " + std::to_string(step) + " (this rank " + hex64(mine) +
                    ", rank 0 " + hex64(root) + ")");
}

void check_finite(double value, const std::string& what, const std::string& stage, int64_t step) {
  if (std::isfinite(value)) return;
  throw NumericError(stage + ": " + what + " is " + std::to_string(value) + " at step " + std::to_string(step) +
                     " on " + process_label() +
                     " (a non-finite teacher cache, weights or learning rate?); nothing of this run is published");
}

double warmup_cosine(int64_t step, int64_t warmup, int64_t total, double floor) {
  if (warmup > 0 && step < warmup) return static_cast<double>(step + 1) / static_cast<double>(warmup);
  const double span = static_cast<double>(std::max<int64_t>(1, total - warmup));
  const double progress = std::min(1.0, static_cast<double>(step - warmup) / span);
  return floor + (1 - floor) * 0.5 * (1 + std::cos(M_PI * progress));
}

TrainingLoop::TrainingLoop(Options options, State state) : o_(std::move(options)), state_(std::move(state)) {
  if (o_.checkpoints) sigterm_ = std::make_unique<PreemptionFlag>();
}

TrainingLoop::~TrainingLoop() = default;

int64_t TrainingLoop::resume(Communicator& cpu_comm) {
  int64_t step = 0;
  if (o_.checkpoints) {
    step = o_.checkpoints->resume(state_, cpu_comm);
    if (step > 0)
      log::info(o_.stage + ": resumed from step " + std::to_string(step) + " of " + std::to_string(o_.steps));
  }
  if (process_info().rank == 0 && !o_.metrics.empty()) {
    fs::create_directories(o_.metrics.parent_path());
    if (step == 0)
      fs::remove(o_.metrics);
    else
      trim_metrics(o_.metrics, step);
    metrics_.open(o_.metrics, std::ios::app);
  }
  first_step_ = step;
  t0_ = last_report_ = Clock::now();
  set_comm_context(o_.stage + " step " + std::to_string(step + 1));
  return step;
}

void TrainingLoop::record(const nlohmann::json& line) {
  if (metrics_.is_open()) metrics_ << line.dump() << "\n" << std::flush;
}

void TrainingLoop::progress(int64_t step, const std::string& what, bool force) {
  if (process_info().rank != 0) return;
  if (!force && step != o_.steps && Clock::now() - last_report_ <= std::chrono::seconds(5)) return;
  const double per_step = since(t0_) / static_cast<double>(std::max<int64_t>(1, step - first_step_));
  log::info(o_.stage + ": step " + std::to_string(step) + "/" + std::to_string(o_.steps) + " " + what + " ETA " +
            log::duration(per_step * static_cast<double>(o_.steps - step)));
  last_report_ = Clock::now();
}

void TrainingLoop::end_step(int64_t step, const at::Tensor& replicated, const std::string& what) {
  set_comm_context(o_.stage + " after step " + std::to_string(step));
  if (!o_.checkpoints) return;
  // A drift is a bug or a bad node: caught within check_every steps.
  if (step % o_.check_every == 0 || step == o_.steps) check_identical_across_ranks(replicated, what, step);
  fault_point(o_.stage + ".after_step_" + std::to_string(step));
  const bool preempt = sigterm_->any_rank();
  if (step % o_.checkpoint_every == 0 || step == o_.steps || preempt) {
    std::vector<safetensors::NamedTensor> tensors;
    for (const auto& [name, t] : state_) tensors.push_back({name, t->detach()});
    o_.checkpoints->write(step, tensors);
    // Rank 0 wrote it: the others wait here (a stage-length wait), not in the next step's collectives, whose timeout
    // (dist.timeout_s) is for a step's balanced work.
    world::barrier();
  }
  if (preempt && step < o_.steps) {
    world::barrier();
    throw Preempted(o_.stage + ": SIGTERM: checkpointed step " + std::to_string(step) + " of " +
                    std::to_string(o_.steps) + "; rerun the same command to resume (exit " +
                    std::to_string(kExitRequeue) + " = requeue)");
  }
  set_comm_context(o_.stage + " step " + std::to_string(step + 1));
}

}  // namespace hawada
