#include "stages/reduce_gates.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "core/communicator.h"
#include "core/errors.h"
#include "core/fs.h"
#include "core/hash.h"
#include "core/log.h"
#include "core/mpi_session.h"
#include "core/process.h"
#include "core/safetensors.h"
#include "stages/student.h"

namespace hawada {

namespace fs = std::filesystem;

std::string ReduceGatesStage::fingerprint(const StageContext& ctx) {
  const Config& c = ctx.config;
  Hasher h;
  h.update("reduce_gates/1");
  h.update(ctx.fingerprints.at("train_gates"));
  h.update_u64(static_cast<uint64_t>(c.train.importance_batches));
  fingerprint_ = hex64(h.digest());
  return fingerprint_;
}

void ReduceGatesStage::run(const StageContext& ctx) {
  const Config& c = ctx.config;
  const auto& proc = process_info();
  const at::Device device = run_device(c);
  LoadedModel lm = load_model(c, true, device);
  const GatesConfig gates_config = effective_gates(c, lm.arch);
  const auto data = open_data(c, lm.arch);
  HardConcrete hc;
  hc.beta = c.gates.temperature;
  GateParameters gates(gates_config, lm.model->gate_shape());
  {
    const safetensors::Reader trained(trained_gates_file(ctx.run_dir));
    gates.load(trained);
  }
  at::NoGradGuard no_grad;
  const GateValues eval{gates.heads.defined() ? hc.evaluation(gates.heads) : at::Tensor(),
                        gates.ffn.defined() ? hc.evaluation(gates.ffn) : at::Tensor(),
                        gates.hidden.defined() ? hc.evaluation(gates.hidden) : at::Tensor()};
  auto on_device = [&](const at::Tensor& t) { return t.defined() ? t.to(device) : t; };
  GateValues values{on_device(eval.heads), on_device(eval.ffn), on_device(eval.hidden)};

  // Importance sums in one flat bucket laid out like the gates, on the compute device.
  at::Tensor bucket = at::zeros({gates.flat.numel()}, at::TensorOptions().dtype(at::kFloat).device(device));
  const GateParameters::Views dev_sums = gates.views_of(bucket);
  ActivationImportance imp{dev_sums.heads, dev_sums.ffn, dev_sums.hidden, 0};
  values.importance = &imp;
  const int64_t train_samples = std::max<int64_t>(1, data->size() - c.train.holdout);
  const int64_t mb = std::min<int64_t>(c.train.micro_batch, train_samples);
  for (int64_t b = proc.rank; b < c.train.importance_batches; b += proc.size) {
    std::vector<int64_t> samples;
    for (int64_t j = 0; j < mb; ++j) samples.push_back((b * mb + j) % train_samples);
    const Batch batch = to_device(with_context("reduce_gates: ", [&] { return read_samples(*data, samples); }), device);
    lm.model->features(batch, &values);
  }
  // One all-reduce of the sums and the token count, on the device (NCCL on GPUs, MPI on CPUs).
  at::Tensor all = at::cat({bucket, at::full({1}, static_cast<float>(imp.tokens), bucket.options())});
  auto comm = run_communicator(c, device);
  comm->all_reduce(all, Communicator::Op::sum);
  const at::Tensor host = all.cpu();
  const double tokens = std::max(1.0, static_cast<double>(host[-1].item<float>()));
  const GateParameters::Views sums = gates.views_of(host.narrow(0, 0, gates.flat.numel()));

  std::vector<safetensors::NamedTensor> out;
  const int64_t blocks = 2 * lm.arch.layers;  // hidden importance is summed over every block's input
  auto add = [&](const char* kind, const at::Tensor& log_alpha, const at::Tensor& eval, const at::Tensor& sum,
                 double per) {
    if (!log_alpha.defined()) return;
    const at::Tensor keep = hc.keep_probability(log_alpha).contiguous();
    const at::Tensor importance = (sum / (tokens * per)).contiguous();
    const at::Tensor score = keep * (importance / importance.mean().clamp_min(1e-30) + 1e-3);
    out.push_back({std::string(kind) + ".keep_probability", keep});
    out.push_back({std::string(kind) + ".evaluation", eval.contiguous()});
    out.push_back({std::string(kind) + ".importance", importance});
    out.push_back({std::string(kind) + ".score", score.contiguous()});
  };
  add("heads", gates.heads, eval.heads, sums.heads, 1.0);
  add("ffn", gates.ffn, eval.ffn, sums.ffn, 1.0);
  add("hidden", gates.hidden, eval.hidden, sums.hidden, static_cast<double>(blocks));

  // Every rank must hold the same bytes.
  Hasher h;
  for (const auto& t : out) h.update(t.tensor.data_ptr(), static_cast<size_t>(t.tensor.nbytes()));
  const uint64_t mine = h.digest(), root = world::broadcast(mine);
  if (world::sum(mine != root ? 1 : 0) > 0)
    throw CommError("reduce_gates: the global scores differ across ranks (this rank " + hex64(mine) + ", rank 0 " +
                    hex64(root) + ")");
  if (proc.rank == 0) {
    fs::create_directories(gate_scores_file(ctx.run_dir).parent_path());
    safetensors::write_file(gate_scores_file(ctx.run_dir), out, {{"fingerprint", fingerprint_}, {"scores_hash", hex64(mine)}});
  }
  log::info("reduce_gates: scores of " + std::to_string(gates.flat.numel()) + " structures over " +
            std::to_string(static_cast<int64_t>(tokens)) + " tokens, hash " + hex64(mine));
}

}  // namespace hawada
