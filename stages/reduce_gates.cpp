#include "stages/reduce_gates.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "core/base/errors.h"
#include "core/base/fs.h"
#include "core/base/hash.h"
#include "core/base/log.h"
#include "core/base/process.h"
#include "core/dist/mpi_session.h"
#include "core/io/safetensors.h"
#include "training/distill.h"
#include "training/student.h"

namespace hawada {

namespace fs = std::filesystem;

std::string ReduceGatesStage::fingerprint(const StageContext& ctx) {
  Hasher h;
  h.update("reduce_gates/3");
  h.update(ctx.fingerprints.at(std::string(stage_names::train_gates)));
  fingerprint_ = hex64(h.digest());
  return fingerprint_;
}

namespace {

// A tensor train_gates wrote, checked against the gates' shape.
at::Tensor trained_tensor(const safetensors::Reader& trained, const std::string& name, const at::Tensor& like) {
  if (!trained.contains(name))
    throw CheckpointError("'" + trained.path().string() + "' has no tensor '" + name + "' (written by train_gates)");
  const at::Tensor t = trained.tensor(name).to(at::kFloat);
  if (t.sizes() != like.sizes())
    throw CheckpointError("'" + trained.path().string() + "': tensor '" + name + "' has shape " + c10::str(t.sizes()) +
                          ", the gates " + c10::str(like.sizes()));
  return t;
}

// The scores of one kind of gate ("heads", ...) appended to `out`: keep probability, evaluation value,
// activation, Fisher, importance and score; non-finite values are refused.
void add_scores(const safetensors::Reader& trained, const HardConcrete& hc, const std::string& kind,
                const at::Tensor& log_alpha, std::vector<safetensors::NamedTensor>& out) {
  if (!log_alpha.defined()) return;
  auto normalised = [](const at::Tensor& t) { return t / t.mean(-1, true).clamp_min(1e-30); };
  const at::Tensor activation = trained_tensor(trained, kind + ".activation", log_alpha);
  const at::Tensor fisher = trained_tensor(trained, kind + ".fisher", log_alpha);
  const at::Tensor keep = hc.keep_probability(log_alpha).contiguous();
  const at::Tensor importance = (normalised(activation) * normalised(fisher).sqrt()).contiguous();
  const at::Tensor score = (keep * (importance + 1e-6)).contiguous();
  const at::Tensor eval = hc.evaluation(log_alpha).contiguous();
  for (const auto& [name, t] : {std::pair<const char*, at::Tensor>{"keep_probability", keep},
                                {"evaluation", eval},
                                {"activation", activation.contiguous()},
                                {"fisher", fisher.contiguous()},
                                {"importance", importance},
                                {"score", score}}) {
    if (!at::isfinite(t).all().item<bool>())
      throw NumericError("reduce_gates: " + kind + "." + name + " holds non-finite values (from '" +
                         trained.path().string() + "'); nothing is published");
    out.push_back({kind + "." + name, t});
  }
}

}  // namespace

// One global score per structure from what train_gates learned and measured (the importance there was
// already all-reduced over the ranks' samples): score = keep probability x importance, where importance =
// activation x sqrt(Fisher), each normalised per layer. Every rank computes the same bytes from the same
// file; rank 0 publishes them.
void ReduceGatesStage::run(const StageContext& ctx) {
  const Config& c = ctx.config;
  const LoadedModel lm = load_model(c, /*weights=*/false);
  const GatesConfig gates_config = effective_gates(c, lm.shape);
  HardConcrete hc;
  hc.beta = c.gates.temperature;
  GateParameters gates(gates_config, GateShape{lm.arch.layers, lm.arch.heads, lm.arch.ffn, lm.arch.hidden});
  const safetensors::Reader trained(RunLayout(ctx.run_dir).trained_gates());
  gates.load(trained);
  at::NoGradGuard no_grad;

  std::vector<safetensors::NamedTensor> out;
  add_scores(trained, hc, "heads", gates.heads, out);
  add_scores(trained, hc, "ffn", gates.ffn, out);
  add_scores(trained, hc, "hidden", gates.hidden, out);
  add_scores(trained, hc, "layers", gates.layers, out);

  Hasher h;
  for (const auto& t : out) h.update(t.tensor.data_ptr(), static_cast<size_t>(t.tensor.nbytes()));
  const uint64_t mine = h.digest(), root = world::broadcast(mine);
  if (world::sum(mine != root ? 1 : 0) > 0)
    throw CommError("reduce_gates: the global scores differ across ranks (this rank " + hex64(mine) + ", rank 0 " +
                    hex64(root) + ")");
  if (process_info().rank == 0) {
    fs::create_directories(RunLayout(ctx.run_dir).gate_scores().parent_path());
    safetensors::write_file(RunLayout(ctx.run_dir).gate_scores(), out,
                            {{"fingerprint", fingerprint_}, {"scores_hash", hex64(mine)}});
  }
  log::info("reduce_gates: scores of " + std::to_string(gates.flat.numel()) +
            " structures (keep probability x activation x sqrt(Fisher)), hash " + hex64(mine));
}

}  // namespace hawada
