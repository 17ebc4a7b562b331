#include "training/student.h"

#include "core/prune/matmul_precision.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>

#include <nlohmann/json.hpp>

#include "core/base/cpu_features.h"
#include "core/base/errors.h"
#include "core/base/process.h"
#include "core/data/teacher_cache.h"
#include "core/dist/device.h"
#include "core/io/safetensors.h"
#include "core/prune/slicing.h"

namespace hawada {

namespace fs = std::filesystem;

DataSpec data_spec(const Config& c) {
  DataSpec s;
  s.format = c.data.format == DataFormat::tokens_h5    ? DataSpec::Format::tokens_h5
             : c.data.format == DataFormat::tokens_bin ? DataSpec::Format::tokens_bin
                                                       : DataSpec::Format::images_h5;
  s.path = c.data.path;
  s.seq_len = c.data.seq_len;
  s.samples = c.data.samples;
  s.token_bytes = c.data.token_dtype == TokenDtype::uint16 ? 2 : 4;
  return s;
}

DataSpec heal_data_spec(const Config& c) {
  DataSpec s = data_spec(c);
  s.path = c.heal.data;
  s.samples = c.heal.samples;
  s.samples_key = "heal.samples";
  return s;
}

HealBatch heal_batch(const Config& c) {
  HealBatch b;
  b.micro_batch = c.heal.micro_batch > 0 ? c.heal.micro_batch : c.train.micro_batch;
  b.accum = c.heal.grad_accum > 0 ? c.heal.grad_accum : c.train.grad_accum;
  b.global_micros = static_cast<int64_t>(process_info().size) * b.accum;
  return b;
}

at::ScalarType compute_dtype(const Config& c) {
  return c.model.dtype == ComputeDtype::bf16 ? at::kBFloat16 : at::kFloat;
}

bool bf16_head(const Config& c) {
  if (c.model.dtype != ComputeDtype::fp32 || c.model.head_matmul == HeadMatmul::fp32) return false;
  return run_device(c).is_cpu() && cpu_has_native_bf16_matmul() && bf16_head_matmul_engages();
}

std::string precision_key(const Config& c) {
  return std::string(c10::toString(compute_dtype(c))) + (bf16_head(c) ? "+bf16-head" : "");
}

std::unique_ptr<DataSource> open_data(const Config& c, const ArchSummary& arch) {
  return open_data_spec(data_spec(c), arch, c.model.path);
}

std::unique_ptr<DataSource> open_data_spec(const DataSpec& spec, const ArchSummary& arch, const fs::path& model_dir) {
  DataExpectations expect;
  expect.vocab_size = arch.vocab_size;
  expect.image_size = arch.image_size;
  // Only image data reads preprocessor_config.json (a text model's is none of our business).
  return DataSource::open(
      spec, expect,
      spec.format == DataSpec::Format::images_h5 ? read_pixel_normalization(model_dir) : PixelNormalization{});
}

fs::path run_cache_dir(const Config& c, const std::map<std::string, std::string>& fp) {
  const std::string& f = fp.at("teacher_cache");
  return c.teacher.cache_root / f.substr(0, f.find('+'));
}

fs::path heal_cache_dir(const Config& c, const std::map<std::string, std::string>& fp) {
  const std::string& f = fp.at("teacher_cache");
  const size_t plus = f.find('+');
  return plus == std::string::npos ? fs::path() : c.teacher.cache_root / f.substr(plus + 1);
}

Batch read_samples(const DataSource& data, const std::vector<int64_t>& samples) {
  std::vector<at::Tensor> ids, mask, pixels;
  for (int64_t s : samples) {
    Batch b = data.read(s, 1);
    if (b.input_ids.defined()) ids.push_back(b.input_ids);
    if (b.attention_mask.defined()) mask.push_back(b.attention_mask);
    if (b.pixel_values.defined()) pixels.push_back(b.pixel_values);
  }
  Batch out;
  if (!ids.empty()) out.input_ids = at::cat(ids);
  if (!mask.empty()) out.attention_mask = at::cat(mask);
  if (!pixels.empty()) out.pixel_values = at::cat(pixels);
  return out;
}

at::Device run_device(const Config& c) { return pick_device(c.run.device, process_info().local_rank); }

std::unique_ptr<Communicator> run_communicator(const Config& c, const at::Device& device) {
  const char* backend = c.dist.backend == DistBackend::nccl  ? "nccl"
                        : c.dist.backend == DistBackend::mpi ? "mpi"
                                                             : "auto";
  return make_communicator(backend, device, c.dist.timeout_s);
}

Batch to_device(const Batch& b, const at::Device& device) {
  Batch out;
  if (b.input_ids.defined()) out.input_ids = b.input_ids.to(device);
  if (b.attention_mask.defined()) out.attention_mask = b.attention_mask.to(device);
  if (b.pixel_values.defined()) out.pixel_values = b.pixel_values.to(device);
  return out;
}

LoadedModel load_model(const Config& c, bool weights, const at::Device& device) {
  LoadedModel m{with_context("loading model: ", [&] { return HfCheckpoint::open(c.model.path); })};
  const auto config_file = c.model.path / "config.json";
  m.adapter = &adapter_for(m.checkpoint.config(), config_file);
  m.arch = m.adapter->summarize_checkpoint(m.checkpoint);
  m.shape = model_shape(m.arch);
  if (weights)
    m.model = with_context("loading model: ", [&] {
      return m.adapter->load(m.checkpoint, {compute_dtype(c), device});
    });
  return m;
}

GatesConfig effective_gates(const Config& c, const ModelShape& shape) {
  if (!c.gates.heads && !c.gates.ffn && !c.gates.hidden && !c.gates.layers)
    throw ConfigError(c.source.string() +
                      ": [gates] turns every gate kind off (heads, ffn, hidden, layers); nothing can be pruned");
  GatesConfig g = c.gates;
  // hidden = heads x head size: a head cannot go without its hidden channels, nor they without it.
  if (shape.traits.hidden_is_heads && g.heads != g.hidden) g.heads = g.hidden = true;
  if (g.layers && !shape.traits.drop_layers)
    throw ConfigError(c.source.string() +
                      ": gates.layers = true, but this architecture cannot drop blocks "
                      "(its config has per-layer settings we cannot slice); set gates.layers = false");
  if (g.layers && shape.layers < 2)
    throw ConfigError(c.source.string() + ": gates.layers = true needs at least 2 layers; the model has " +
                      std::to_string(shape.layers) + " (set gates.layers = false)");
  return g;
}

GateParameters::GateParameters(const GatesConfig& config, const GateShape& shape)
    : shape_(shape),
      n_heads_(config.heads ? shape.layers * shape.heads : 0),
      n_ffn_(config.ffn ? shape.layers * shape.ffn : 0),
      n_hidden_(config.hidden ? shape.hidden : 0),
      n_layers_(config.layers ? shape.layers : 0) {
  HardConcrete hc;
  hc.beta = config.temperature;
  flat = at::full({n_heads_ + n_ffn_ + n_hidden_ + n_layers_}, hc.log_alpha_for(config.init), at::kFloat);
  Views v = views_of(flat);
  heads = v.heads, ffn = v.ffn, hidden = v.hidden, layers = v.layers;
}

void GateParameters::to(const at::Device& device) {
  flat = flat.to(device);
  const Views v = views_of(flat);
  heads = v.heads, ffn = v.ffn, hidden = v.hidden, layers = v.layers;
}

GateParameters::Views GateParameters::views_of(const at::Tensor& t) const {
  HAWADA_ASSERT(t.dim() == 1 && t.size(0) == flat.size(0), "a tensor laid out like the gate vector");
  Views v;
  if (n_heads_) v.heads = t.narrow(0, 0, n_heads_).view({shape_.layers, shape_.heads});
  if (n_ffn_) v.ffn = t.narrow(0, n_heads_, n_ffn_).view({shape_.layers, shape_.ffn});
  if (n_hidden_) v.hidden = t.narrow(0, n_heads_ + n_ffn_, n_hidden_);
  if (n_layers_) v.layers = t.narrow(0, n_heads_ + n_ffn_ + n_hidden_, n_layers_);
  return v;
}

GateCounts GateParameters::expected_counts(const HardConcrete& hc, const at::Tensor& t) const {
  const Views v = views_of(t);
  GateCounts c;
  if (v.heads.defined()) c.heads = hc.keep_probability(v.heads).sum(-1);
  if (v.ffn.defined()) c.ffn = hc.keep_probability(v.ffn).sum(-1);
  if (v.hidden.defined()) c.hidden = hc.keep_probability(v.hidden).sum();
  if (v.layers.defined()) c.layers = hc.keep_probability(v.layers);
  return c;
}

GateCounts GateParameters::evaluation_counts(const HardConcrete& hc, const at::Tensor& t) const {
  const Views v = views_of(t);
  GateCounts c;
  auto nonzero = [&](const at::Tensor& la) { return (hc.evaluation(la) > 0).sum(-1).to(at::kDouble); };
  if (v.heads.defined()) c.heads = nonzero(v.heads);
  if (v.ffn.defined()) c.ffn = nonzero(v.ffn);
  if (v.hidden.defined()) c.hidden = nonzero(v.hidden);
  if (v.layers.defined()) c.layers = (hc.evaluation(v.layers) > 0).to(at::kDouble);
  return c;
}

std::vector<safetensors::NamedTensor> GateParameters::named() const {
  std::vector<safetensors::NamedTensor> out;
  if (heads.defined()) out.push_back({"heads.log_alpha", heads.detach().clone()});
  if (ffn.defined()) out.push_back({"ffn.log_alpha", ffn.detach().clone()});
  if (hidden.defined()) out.push_back({"hidden.log_alpha", hidden.detach().clone()});
  if (layers.defined()) out.push_back({"layers.log_alpha", layers.detach().clone()});
  return out;
}

void GateParameters::load(const safetensors::Reader& file) {
  at::NoGradGuard no_grad;
  auto take = [&](const at::Tensor& dst, const char* name) {
    if (!dst.defined()) {
      if (file.contains(name))
        throw CheckpointError("'" + file.path().string() + "' holds '" + name + "' but [gates] turns that kind off");
      return;
    }
    if (!file.contains(name))
      throw CheckpointError("'" + file.path().string() + "' has no tensor '" + name + "' that [gates] asks for");
    const at::Tensor src = file.tensor(name);
    if (src.sizes() != dst.sizes() || src.scalar_type() != at::kFloat)
      throw CheckpointError("tensor '" + std::string(name) + "' in '" + file.path().string() + "' is " +
                            c10::toString(src.scalar_type()) + " " + c10::str(src.sizes()) + ", expected Float " +
                            c10::str(dst.sizes()));
    const_cast<at::Tensor&>(dst).copy_(src);
  };
  take(heads, "heads.log_alpha");
  take(ffn, "ffn.log_alpha");
  take(hidden, "hidden.log_alpha");
  take(layers, "layers.log_alpha");
}

CostSpec budget_spec(const Config& c, const ModelShape& shape) {
  CostSpec spec;
  spec.metric = c.budget.metric;
  spec.target = c.budget.target;
  spec.batch = c.budget.latency_batch;
  spec.rates = {c.budget.device_flops, c.budget.device_bandwidth, c.budget.layer_overhead_s};
  if (c.budget.latency_mode == LatencyMode::prefill) {
    spec.tokens = shape.traits.tokens_per_sample > 0 ? shape.traits.tokens_per_sample : c.data.seq_len;
    spec.context = 0;
    return spec;
  }
  if (!shape.traits.causal)
    throw ConfigError(c.source.string() +
                      ": budget.latency_mode = \"decode\" prices a decode step with a KV "
                      "cache, but this model is not a causal language model; use \"prefill\"");
  spec.tokens = 1;
  spec.context = c.budget.decode_context;
  return spec;
}

BudgetCost::BudgetCost(const CostSpec& budget, const ModelShape& shape) : spec_(budget), shape_(shape) {
  spec_.table = nullptr;
  dense_ = spec_.metric == BudgetMetric::latency
               ? latency_seconds(shape, spec_.batch, spec_.tokens, spec_.rates, 2, spec_.context)
               : static_cast<double>(parameter_count(shape, scope()));
}

at::Tensor BudgetCost::ratio(const GateCounts& counts) const {
  const at::Tensor cost =
      spec_.metric == BudgetMetric::latency
          ? expected_latency(shape_, counts, spec_.batch, spec_.tokens, spec_.rates, 2, spec_.context)
          : expected_parameters(shape_, counts, scope());
  return cost / dense_;
}

double BudgetCost::ratio_of(const GateCounts& counts) const {
  at::NoGradGuard no_grad;
  return ratio(counts).item<double>();
}

namespace {

// Rows of `dense` [layers, n] at the kept layers' kept indices -> [kept layers, kept].
at::Tensor gather_rows(const at::Tensor& dense, const std::vector<std::vector<int64_t>>& kept,
                       const std::vector<int64_t>& layers) {
  std::vector<at::Tensor> rows;
  for (int64_t l : layers) rows.push_back(dense[l].index_select(0, index_tensor(kept[static_cast<size_t>(l)])));
  return at::stack(rows);
}

// [kept layers, kept] -> [layers, n] with `fill` elsewhere (every entry of a dropped layer).
at::Tensor scatter_rows(const at::Tensor& sliced, const std::vector<std::vector<int64_t>>& kept,
                        const std::vector<int64_t>& layers, int64_t n, double fill) {
  at::Tensor out = at::full({static_cast<int64_t>(kept.size()), n}, fill, at::kFloat);
  const at::Tensor src = sliced.detach().cpu().to(at::kFloat);
  for (size_t k = 0; k < layers.size(); ++k)
    out[layers[k]].index_copy_(0, index_tensor(kept[static_cast<size_t>(layers[k])]), src[static_cast<int64_t>(k)]);
  return out;
}

std::vector<std::vector<int64_t>> every_layer(const std::vector<int64_t>& kept, size_t layers) {
  return std::vector<std::vector<int64_t>>(layers, kept);
}

}  // namespace

Scales Scales::ones(const Plan& plan) {
  const ModelShape& d = plan.dense.shape;
  const int64_t kept = plan.chosen.shape.layers;
  Scales s;
  s.heads = scatter_rows(at::ones({kept, plan.chosen.shape.heads}), plan.heads, plan.layers, d.heads, 0.0);
  s.ffn = scatter_rows(at::ones({kept, plan.chosen.shape.ffn}), plan.ffn, plan.layers, d.ffn, 0.0);
  return s;
}

Scales Scales::from_sliced(const Plan& plan, const GateValues& g) {
  const ModelShape& d = plan.dense.shape;
  const auto hidden = every_layer(plan.hidden, static_cast<size_t>(d.layers));
  Scales s = ones(plan);
  if (g.heads.defined()) s.heads = scatter_rows(g.heads, plan.heads, plan.layers, d.heads, 0.0);
  if (g.ffn.defined()) s.ffn = scatter_rows(g.ffn, plan.ffn, plan.layers, d.ffn, 0.0);
  if (g.attn_out.defined()) s.attn_out = scatter_rows(g.attn_out, hidden, plan.layers, d.hidden, 1.0);
  if (g.mlp_out.defined()) s.mlp_out = scatter_rows(g.mlp_out, hidden, plan.layers, d.hidden, 1.0);
  return s;
}

GateValues Scales::sliced(const Plan& plan) const {
  const auto hidden = every_layer(plan.hidden, plan.heads.size());
  GateValues g;
  g.heads = gather_rows(heads, plan.heads, plan.layers);
  g.ffn = gather_rows(ffn, plan.ffn, plan.layers);
  if (attn_out.defined()) g.attn_out = gather_rows(attn_out, hidden, plan.layers);
  if (mlp_out.defined()) g.mlp_out = gather_rows(mlp_out, hidden, plan.layers);
  return g;
}

std::vector<safetensors::NamedTensor> Scales::named() const {
  std::vector<safetensors::NamedTensor> out{{"heads", heads.contiguous()}, {"ffn", ffn.contiguous()}};
  if (attn_out.defined()) out.push_back({"attn_out", attn_out.contiguous()});
  if (mlp_out.defined()) out.push_back({"mlp_out", mlp_out.contiguous()});
  return out;
}

Scales Scales::read(const fs::path& file, const Plan& plan) {
  const safetensors::Reader r(file);
  const ModelShape& d = plan.dense.shape;
  auto take = [&](const char* name, std::vector<int64_t> shape, bool required) {
    if (!r.contains(name)) {
      if (required) throw CheckpointError("'" + file.string() + "' has no tensor '" + name + "'");
      return at::Tensor();
    }
    const at::Tensor t = r.tensor(name);
    if (t.sizes() != at::IntArrayRef(shape) || t.scalar_type() != at::kFloat)
      throw CheckpointError("tensor '" + std::string(name) + "' in '" + file.string() + "' is " +
                            c10::toString(t.scalar_type()) + " " + c10::str(t.sizes()) + ", expected Float " +
                            c10::str(at::IntArrayRef(shape)));
    if (!at::isfinite(t).all().item<bool>())
      throw NumericError("tensor '" + std::string(name) + "' in '" + file.string() + "' holds non-finite values");
    return t.clone();
  };
  Scales s;
  s.heads = take("heads", {d.layers, d.heads}, true);
  s.ffn = take("ffn", {d.layers, d.ffn}, true);
  s.attn_out = take("attn_out", {d.layers, d.hidden}, false);
  s.mlp_out = take("mlp_out", {d.layers, d.hidden}, false);
  return s;
}

GateValues student_gates(const Plan& plan, const Scales& scales) {
  GateValues v;
  v.heads = scales.heads;
  v.ffn = scales.ffn;
  v.attn_out = scales.attn_out;
  v.mlp_out = scales.mlp_out;
  if (plan.chosen.shape.hidden != plan.dense.shape.hidden)
    v.hidden = at::zeros({plan.dense.shape.hidden}, at::kFloat).index_fill_(0, index_tensor(plan.hidden), 1.0);
  if (plan.chosen.shape.layers != plan.dense.shape.layers)
    v.layers = at::zeros({plan.dense.shape.layers}, at::kFloat).index_fill_(0, index_tensor(plan.layers), 1.0);
  return v;
}

HfCheckpoint pruned_checkpoint(const LoadedModel& dense, const Plan& plan, const Scales& scales) {
  const GateValues folds = student_gates(plan, scales);
  std::vector<safetensors::NamedTensor> tensors = dense.adapter->prune_weights(dense.checkpoint, plan, folds);
  nlohmann::json config = dense.adapter->pruned_config(dense.checkpoint.config(), plan);
  return HfCheckpoint::in_memory(std::move(config), tensors, dense.checkpoint.dir() / "(pruned in memory)");
}

bool has_reconstruction(const fs::path& reconstructed, const std::string& calibrate_fingerprint) {
  if (!fs::exists(reconstructed)) return false;
  const safetensors::Reader r(reconstructed);
  const auto& meta = r.header().metadata;
  auto it = meta.find("fingerprint");
  return it != meta.end() && it->second == calibrate_fingerprint;
}

HfCheckpoint student_checkpoint(const LoadedModel& dense, const Plan& plan, const Scales& scales,
                                const fs::path& reconstructed, const std::string& calibrate_fingerprint) {
  HfCheckpoint slice = pruned_checkpoint(dense, plan, scales);
  if (!fs::exists(reconstructed)) return slice;
  if (!has_reconstruction(reconstructed, calibrate_fingerprint))
    throw CheckpointError("'" + reconstructed.string() +
                          "' was written by another calibration (its fingerprint differs): rerun calibrate");
  const safetensors::Reader r(reconstructed);
  std::vector<safetensors::NamedTensor> tensors;
  for (const std::string& name : slice.tensor_names()) {
    if (!r.contains(name)) throw CheckpointError("'" + reconstructed.string() + "' has no tensor '" + name + "'");
    at::Tensor t = r.tensor(name);
    const at::Tensor want = slice.tensor(name);
    if (t.sizes() != want.sizes())
      throw CheckpointError("'" + reconstructed.string() + "': tensor '" + name + "' has shape " + c10::str(t.sizes()) +
                            ", the plan's slice " + c10::str(want.sizes()));
    if (!at::isfinite(t).all().item<bool>())
      throw NumericError("'" + reconstructed.string() + "': tensor '" + name + "' holds non-finite values");
    tensors.push_back({name, t.clone()});  // fp32 as refitted; the reader's mapping closes
  }
  return HfCheckpoint::in_memory(slice.config(), tensors, reconstructed);
}

}  // namespace hawada
