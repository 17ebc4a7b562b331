#include "training/distill.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <chrono>
#include <cmath>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "core/base/clock.h"
#include "core/base/errors.h"
#include "core/base/fs.h"
#include "core/base/hash.h"
#include "core/base/log.h"
#include "core/base/process.h"
#include "core/dist/device.h"
#include "core/dist/mpi_session.h"
#include "core/prune/distill_loss.h"
#include "core/prune/logit_tail.h"
#include "core/prune/matmul_precision.h"
#include "training/student.h"

namespace hawada {
namespace {

namespace fs = std::filesystem;

// Logits of one piece of tokens are at most this many bytes of fp32 [tokens, vocab]: small on the
// CPU (cache-friendly, bounded memory), larger on a GPU (fewer, fuller launches).
int64_t logit_piece_bytes(const at::Device& device) { return device.is_cuda() ? (1ll << 30) : (256ll << 20); }

// An LM teacher's cached rows, flattened to [tokens, k] on the device: top-k (logit values, tokens and the
// log-sum-exp) or sampled (counts, drawn tokens and the entropy).
struct TeacherRows {
  bool sampled = false;
  at::Tensor values, indices, scalar;

  TeacherRows(const CacheChunk& t, int64_t tokens, const at::Device& dev) : sampled(t.sampled_ids.defined()) {
    const int64_t k = sampled ? t.sampled_ids.size(-1) : t.topk_values.size(-1);
    values = (sampled ? t.sampled_counts : t.topk_values).to(dev).view({tokens, k}).to(at::kFloat);
    indices = (sampled ? t.sampled_ids : t.topk_indices).to(dev).view({tokens, k}).to(at::kLong);
    scalar = (sampled ? t.entropy : t.logsumexp).to(dev).view({tokens});
  }
  // Mean KL over the valid tokens of rows [a, b) (sampled: the unbiased estimate; top-k: top-k + tail at T).
  at::Tensor kl(const at::Tensor& logits, int64_t a, int64_t b, double T, const at::Tensor& mask) const {
    if (sampled)
      return sampled_kl_loss(logits, indices.slice(0, a, b), values.slice(0, a, b), scalar.slice(0, a, b), mask);
    return topk_kl_loss(logits, values.slice(0, a, b), indices.slice(0, a, b), scalar.slice(0, a, b), T, mask);
  }
  TeacherRow rows(int64_t a, int64_t b) const {
    return {sampled, indices.slice(0, a, b), values.slice(0, a, b), scalar.slice(0, a, b)};
  }
  // Whether the fused loss and gradient (core/prune/logit_tail.h) computes this loss: on the CPU, for the
  // sampled estimate and for top-k + tail at temperature 1 without the MSE term (the defaults).
  bool fused(const at::Device& dev, int64_t vocab, double T, double mse_weight) const {
    return dev.is_cpu() && (sampled || (T == 1.0 && mse_weight <= 0 && indices.size(-1) < vocab));
  }
};

}  // namespace

uint64_t mix_seed(std::initializer_list<uint64_t> values, std::string_view tag) {
  Hasher h;
  h.update(tag);
  for (uint64_t v : values) h.update_u64(v);
  return h.digest();
}

SampleOrder::SampleOrder(int64_t samples, int64_t seed, std::string_view tag)
    : samples_(samples), seed_(seed), tag_(tag) {
  HAWADA_ASSERT(samples > 0, "a sample order over at least one sample");
}

int64_t SampleOrder::at(int64_t position) {
  const int64_t epoch = position / samples_;
  auto it = epochs_.find(epoch);
  if (it == epochs_.end()) {
    if (epochs_.size() > 2) epochs_.erase(epochs_.begin());
    auto gen = at::make_generator<at::CPUGeneratorImpl>(
        mix_seed({static_cast<uint64_t>(seed_), static_cast<uint64_t>(epoch)}, tag_));
    it = epochs_.emplace(epoch, at::randperm(samples_, gen, at::kLong)).first;
  }
  return it->second[position % samples_].item<int64_t>();
}

std::vector<int64_t> SampleOrder::micro_batch(int64_t step, int64_t g, int64_t micros, int64_t micro_batch) {
  std::vector<int64_t> samples;
  for (int64_t j = 0; j < micro_batch; ++j) samples.push_back(at((step * micros + g) * micro_batch + j));
  return samples;
}

namespace {

// An LM against its cached teacher rows: the KL over the micro-batch's valid tokens, the LM head run a piece
// of tokens at a time, each piece's loss back-propagated into `detached`'s gradient at once.
void lm_loss_backward(const Model& model, const Batch& batch, const at::Tensor& detached, const CacheChunk& teacher,
                      double T, double mse_weight, double scale, LossParts& parts) {
  const at::Device dev = detached.device();
  const int64_t B = detached.size(0), L = detached.size(1), D = detached.size(2);
  const at::Tensor flat = detached.view({B * L, D});
  const TeacherRows rows(teacher, B * L, dev);
  // Token weights on the host (no device round trip per piece), and on the device for the loss.
  const at::Tensor host_mask = batch.attention_mask.defined()
                                   ? batch.attention_mask.cpu().reshape({B * L}).ne(0).to(at::kDouble)
                                   : at::ones({B * L}, at::kDouble);
  const at::Tensor host_cumsum = at::cat({at::zeros({1}, at::kDouble), host_mask.cumsum(0)});
  const double* cum = host_cumsum.data_ptr<double>();
  const at::Tensor mask = host_mask.to(at::kFloat).to(dev);
  const double valid = cum[B * L];
  if (valid == 0) throw DataError("a micro-batch has no unmasked token to learn from");
  const int64_t vocab = model.head(flat.slice(0, 0, 1)).size(-1);
  const int64_t piece = std::max<int64_t>(1, logit_piece_bytes(dev) / (vocab * 4));
  const bool fused = rows.fused(dev, vocab, T, mse_weight);
  at::Tensor kl_sum = at::zeros({}, at::TensorOptions().dtype(at::kDouble).device(dev));
  at::Tensor mse_sum = at::zeros_like(kl_sum);
  for (int64_t a = 0; a < B * L; a += piece) {
    const int64_t b = std::min(B * L, a + piece);
    const at::Tensor m = mask.slice(0, a, b);
    const double w = (cum[b] - cum[a]) / valid;
    if (w == 0) continue;
    const HeadMatmulScope head_precision;  // the head's forward and backward (model.head_matmul)
    const at::Tensor s = model.head(flat.slice(0, a, b));
    if (fused) {  // the loss's gradient in the logits in one pass per row, then back through the head
      KlGrad g;
      {
        at::NoGradGuard no_grad;
        g = distill_kl_grad(s.detach(), rows.rows(a, b), m * static_cast<float>(scale / valid));
      }
      s.backward(g.grad.to(s.scalar_type()));
      kl_sum += (g.kl * m).sum().to(at::kDouble) / valid;
      continue;
    }
    const at::Tensor kl = rows.kl(s, a, b, T, m) * w;
    at::Tensor loss = kl;
    if (mse_weight > 0 && !rows.sampled) {
      // MSE on the logits the cache holds (the teacher's top-k).
      at::Tensor mse =
          (s.to(at::kFloat).gather(-1, rows.indices.slice(0, a, b)) - rows.values.slice(0, a, b)).pow(2).mean(-1);
      mse = (mse * m).sum() / valid;
      loss = loss + mse * mse_weight;
      mse_sum += mse.detach().to(at::kDouble);
    }
    (loss * scale).backward();
    kl_sum += kl.detach().to(at::kDouble);
  }
  parts.kl = kl_sum.item<double>();
  parts.mse = mse_sum.item<double>();
  parts.tokens = static_cast<int64_t>(valid);
}

}  // namespace

at::Tensor boundary_state_loss(const std::vector<at::Tensor>& student_blocks, const BoundaryStates& states,
                               const at::Tensor& mask) {
  if (student_blocks.size() != states.teacher.size())
    throw UsageError("the intermediate-state loss compares " + std::to_string(student_blocks.size()) +
                     " student blocks with " + std::to_string(states.teacher.size()) + " teacher boundaries");
  at::Tensor total;
  for (size_t j = 0; j < student_blocks.size(); ++j) {
    const at::Tensor& s = student_blocks[j];
    const at::Tensor t = hidden_state_loss(s, states.teacher[j].to(s.device()), mask, states.channels).token;
    total = total.defined() ? total + t : t;
  }
  return total / static_cast<double>(std::max<size_t>(1, student_blocks.size()));
}

LossParts distill_backward(const Model& model, const Batch& batch, const CacheChunk& teacher, const GateValues* gates,
                           double T, double mse_weight, double scale, const BoundaryStates* states) {
  LossParts parts;
  auto t = Clock::now();
  std::vector<at::Tensor> blocks;
  GateValues with_blocks = gates ? *gates : GateValues{};
  if (states) with_blocks.block_outputs = &blocks;
  const at::Tensor features = model.features(batch, states ? &with_blocks : gates);
  const at::Tensor detached = features.detach().requires_grad_(true);
  const at::Device dev = features.device();
  synchronize(dev);  // phase times are wall times of finished device work
  parts.forward_s = since(t);
  t = Clock::now();
  if (teacher.hidden_states.defined()) {  // encoder: the teacher's last hidden states
    const at::Tensor s = model.head(detached);
    const HiddenStateLoss l =
        hidden_state_loss(s, teacher.hidden_states.to(s.device()), batch.attention_mask, teacher.hidden_channels);
    (l.loss * scale).backward();
    parts.kl = l.loss.item<double>();
    parts.mse = l.token.item<double>();
    parts.tokens =
        batch.attention_mask.defined() ? batch.attention_mask.ne(0).sum().item<int64_t>() : s.size(0) * s.size(1);
  } else if (teacher.logits.defined()) {  // classifier: the full teacher distribution
    const at::Tensor s = model.head(detached).to(at::kFloat), tl = teacher.logits.to(s.device());
    const at::Tensor kl =
        (at::softmax(tl / T, -1) * (at::log_softmax(tl / T, -1) - at::log_softmax(s / T, -1))).sum(-1).mean() * (T * T);
    at::Tensor loss = kl;
    const at::Tensor mse = (s - tl).pow(2).mean();
    if (mse_weight > 0) loss = loss + mse * mse_weight;
    (loss * scale).backward();
    parts.kl = kl.item<double>();
    parts.mse = mse.item<double>();
    parts.tokens = s.size(0);
  } else {
    lm_loss_backward(model, batch, detached, teacher, T, mse_weight, scale, parts);
  }
  parts.loss_s = since(t);
  t = Clock::now();
  if (states) {
    // One backward pass for both terms: the head's gradient enters at the features, the states' term at the blocks.
    const at::Tensor term = boundary_state_loss(blocks, *states, batch.attention_mask);
    parts.states = term.item<double>();
    at::Tensor surrogate = term * (states->weight * scale);
    if (features.requires_grad())
      surrogate = surrogate + (features.to(at::kFloat) * detached.grad().to(at::kFloat)).sum();
    if (surrogate.requires_grad()) surrogate.backward();
  } else if (features.requires_grad()) {
    features.backward(detached.grad());
  }
  synchronize(dev);
  parts.backward_s = since(t);
  return parts;
}

double nll_backward(const Model& model, const Batch& batch, const at::Tensor& targets, const GateValues* gates) {
  const at::Tensor features = model.features(batch, gates);
  const at::Tensor detached = features.detach().requires_grad_(true);
  const at::Device dev = features.device();
  at::Tensor total = at::zeros({}, at::TensorOptions().dtype(at::kDouble).device(dev));
  if (at::isFloatingType(targets.scalar_type())) {
    // Encoder: targets are hidden states drawn around the teacher's (sample_teacher_targets); the
    // negative log-likelihood of a Gaussian whose variance per token is proportional to the target's
    // mean square, over the real tokens.
    const at::Tensor s = model.head(detached).to(at::kFloat), y = targets.to(dev).to(at::kFloat);
    const at::Tensor m = batch.attention_mask.defined() ? batch.attention_mask.to(dev).ne(0).to(at::kFloat)
                                                        : at::ones({s.size(0), s.size(1)}, s.options());
    const at::Tensor var = y.pow(2).mean(-1).clamp_min(1e-12);
    const at::Tensor nll = (0.5 * (s - y).pow(2).sum(-1) / var * m).sum();
    nll.backward();
    total += nll.detach().to(at::kDouble);
  } else if (features.dim() == 2) {  // classifier: [B, hidden] -> [B, labels]
    const at::Tensor lp = at::log_softmax(model.head(detached).to(at::kFloat), -1);
    const at::Tensor nll = -lp.gather(-1, targets.to(dev).view({-1, 1})).sum();
    nll.backward();
    total += nll.detach().to(at::kDouble);
  } else {
    const int64_t B = features.size(0), L = features.size(1), D = features.size(2);
    const at::Tensor flat = detached.view({B * L, D});
    const at::Tensor y = targets.to(dev).reshape({B * L, 1});
    const int64_t vocab = model.head(flat.slice(0, 0, 1)).size(-1);
    const int64_t piece = std::max<int64_t>(1, logit_piece_bytes(dev) / (vocab * 4));
    for (int64_t a = 0; a < B * L; a += piece) {
      const int64_t b = std::min(B * L, a + piece);
      const at::Tensor lp = at::log_softmax(model.head(flat.slice(0, a, b)).to(at::kFloat), -1);
      const at::Tensor nll = -lp.gather(-1, y.slice(0, a, b)).sum();
      nll.backward();
      total += nll.detach().to(at::kDouble);
    }
  }
  if (features.requires_grad()) features.backward(detached.grad());
  return total.item<double>();
}

at::Tensor sample_teacher_targets(const CacheChunk& teacher, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  if (teacher.hidden_states.defined()) {
    // The teacher's hidden states plus Gaussian noise of each token's own root mean square: the
    // sampled-Fisher targets of the relative squared error.
    const at::Tensor t = teacher.hidden_states.cpu().to(at::kFloat);
    const at::Tensor rms = t.pow(2).mean(-1, /*keepdim=*/true).sqrt();
    return t + at::randn(t.sizes(), gen, at::TensorOptions().dtype(at::kFloat)) * rms;
  }
  if (teacher.logits.defined()) {
    const at::Tensor p = at::softmax(teacher.logits.cpu().to(at::kDouble), -1);
    return at::multinomial(p, 1, false, gen).view({-1});
  }
  if (teacher.sampled_ids.defined()) {  // one of the cached draws, by its count
    const int64_t k = teacher.sampled_ids.size(-1);
    const at::Tensor w = teacher.sampled_counts.cpu().to(at::kDouble).reshape({-1, k});
    const at::Tensor pick = at::multinomial(w, 1, false, gen);
    const at::Tensor idx = teacher.sampled_ids.cpu().to(at::kLong).reshape({-1, k});
    return idx.gather(-1, pick).view(teacher.sampled_ids.sizes().slice(0, teacher.sampled_ids.dim() - 1));
  }
  const int64_t k = teacher.topk_values.size(-1);
  const at::Tensor v = teacher.topk_values.cpu().to(at::kFloat).reshape({-1, k});
  const at::Tensor p = at::softmax(v.to(at::kDouble), -1);  // the top-k, renormalised
  const at::Tensor pick = at::multinomial(p, 1, false, gen);
  const at::Tensor idx = teacher.topk_indices.cpu().to(at::kLong).reshape({-1, k});
  return idx.gather(-1, pick).view(teacher.topk_indices.sizes().slice(0, teacher.topk_indices.dim() - 1));
}

double distill_loss(const Model& model, const Batch& batch, const CacheChunk& teacher, const GateValues* gates,
                    double T) {
  at::NoGradGuard no_grad;
  const at::Tensor features = model.features(batch, gates);
  const at::Device dev = features.device();
  if (teacher.hidden_states.defined()) {
    const at::Tensor s = model.head(features);
    return hidden_state_loss(s, teacher.hidden_states.to(dev), batch.attention_mask, teacher.hidden_channels)
        .loss.item<double>();
  }
  if (teacher.logits.defined()) {
    const at::Tensor s = model.head(features).to(at::kFloat), tl = teacher.logits.to(dev);
    return ((at::softmax(tl / T, -1) * (at::log_softmax(tl / T, -1) - at::log_softmax(s / T, -1))).sum(-1).mean() *
            (T * T))
        .item<double>();
  }
  const int64_t B = features.size(0), L = features.size(1), D = features.size(2);
  const at::Tensor flat = features.reshape({B * L, D});
  const TeacherRows rows(teacher, B * L, dev);
  const at::Tensor mask = batch.attention_mask.defined()
                              ? batch.attention_mask.to(dev).reshape({B * L}).ne(0).to(at::kFloat)
                              : at::ones({B * L}, at::TensorOptions().device(dev));
  const int64_t vocab = model.head(flat.slice(0, 0, 1)).size(-1);
  const int64_t piece = std::max<int64_t>(1, logit_piece_bytes(dev) / (vocab * 4));
  at::Tensor sum = at::zeros({}, at::TensorOptions().dtype(at::kDouble).device(dev));
  for (int64_t a = 0; a < B * L; a += piece) {
    const int64_t b = std::min(B * L, a + piece);
    const at::Tensor m = mask.slice(0, a, b);
    const HeadMatmulScope head_precision;
    const at::Tensor kl = rows.kl(model.head(flat.slice(0, a, b)), a, b, T, m);
    sum += kl.to(at::kDouble) * m.sum().to(at::kDouble);
  }
  return sum.item<double>() / std::max(1.0, mask.sum().item<double>());
}

DistillData::DistillData(const Config& c, const ArchSummary& arch, const fs::path& cache_dir, int64_t global_batch,
                         const std::string& stage)
    : DistillData(c, data_spec(c), c.train.holdout, arch, cache_dir, global_batch, stage) {}

DistillData::DistillData(const Config& c, const DataSpec& spec, int64_t holdout, const ArchSummary& arch,
                         const fs::path& cache_dir, int64_t global_batch, const std::string& stage)
    : data_(open_data_spec(spec, arch, c.model.path)), layout_(read_cache_index(cache_dir)), cache_dir_(cache_dir) {
  if (layout_.samples != data_->size())
    throw CacheError("'" + cache_dir.string() + "' holds " + std::to_string(layout_.samples) + " samples, the data " +
                     std::to_string(data_->size()) + " ('" + spec.path.string() + "')");
  train_samples_ = data_->size() - holdout;
  if (train_samples_ < global_batch) {
    const std::string file = "'" + spec.path.string() + "'";
    const std::string total = std::to_string(data_->size());
    const std::string what = holdout > 0 ? "train.holdout = " + std::to_string(holdout) + " leaves " +
                                               std::to_string(std::max<int64_t>(0, train_samples_)) + " of the " +
                                               total + " samples of " + file
                                         : file + " holds only " + total + " samples";
    throw ConfigError(
        c.source.string() + ": " + what + " for " + stage +
        ", fewer than one global batch (micro_batch x grad_accum x ranks = " + std::to_string(global_batch) + ")");
  }
}

Batch DistillData::batch(const std::vector<int64_t>& samples, const at::Device& device) const {
  return to_device(read_samples(*data_, samples), device);
}

CacheChunk DistillData::teacher(const std::vector<int64_t>& samples) const {
  return read_cache_samples(cache_dir_, layout_, samples);
}

CacheChunk for_student(CacheChunk teacher, const Plan& plan) {
  if (teacher.hidden_states.defined() && static_cast<int64_t>(plan.hidden.size()) < teacher.hidden_states.size(-1))
    teacher.hidden_channels = at::tensor(plan.hidden, at::kLong);
  return teacher;
}

double heldout_kl(const Model& model, const Plan& plan, const DistillData& data, const std::vector<int64_t>& samples,
                  double kd_temperature, const at::Device& device, Communicator& comm) {
  const auto& proc = process_info();
  double sum = 0, tokens = 0;
  for (size_t i = static_cast<size_t>(proc.rank); i < samples.size(); i += static_cast<size_t>(proc.size)) {
    const Batch b = data.batch({samples[i]}, device);
    const double n = b.attention_mask.defined() ? b.attention_mask.ne(0).sum().item<double>()
                     : b.input_ids.defined()    ? static_cast<double>(b.input_ids.numel())
                                                : 1.0;
    sum += distill_loss(model, b, for_student(data.teacher({samples[i]}), plan), nullptr, kd_temperature) * n;
    tokens += n;
  }
  at::Tensor t = at::tensor({sum, tokens}, at::kDouble).to(device);
  comm.all_reduce(t, Communicator::Op::sum);
  const at::Tensor h = t.cpu();
  return h[0].item<double>() / std::max(1.0, h[1].item<double>());
}

}  // namespace hawada
