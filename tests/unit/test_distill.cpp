// distill_backward on a tiny LLaMA against the ATen losses and autograd end to end: the fused loss side
// (core/prune/logit_tail.h distill_kl_grad, taken on the CPU for sampled and top-k caches) gives the gates
// the gradients and the loss that backpropagating sampled_kl_loss / topk_kl_loss through the whole model
// gives, padded tokens left out.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "adapters/adapter.h"
#include "core/base/errors.h"
#include "core/io/checkpoint.h"
#include "core/io/safetensors.h"
#include "core/prune/distill_loss.h"
#include "core/prune/logit_tail.h"
#include "tests/unit/test_util.h"
#include "training/distill.h"
#include "training/training_loop.h"

#include <cmath>
#include <cstdio>
#include <sstream>

namespace hawada {
namespace {

const std::string kData = HAWADA_TEST_DATA_DIR;

struct Gates {
  GateValues values;
  std::vector<at::Tensor> grads() const { return {values.heads.grad(), values.ffn.grad(), values.hidden.grad()}; }
  void zero() {
    for (at::Tensor* t : {&values.heads, &values.ffn, &values.hidden}) t->mutable_grad() = at::Tensor();
  }
};

Gates random_gates(const GateShape& s) {
  Gates g{{at::rand({s.layers, s.heads}) * 0.5 + 0.5, at::rand({s.layers, s.ffn}) * 0.5 + 0.5,
           at::rand({s.hidden}) * 0.5 + 0.5, at::ones({s.layers})}};
  for (at::Tensor* t : {&g.values.heads, &g.values.ffn, &g.values.hidden}) t->requires_grad_(true);
  return g;
}

TEST(DistillBackward, FusedLossEqualsAutogradThroughTheModel) {
  auto ckpt = HfCheckpoint::open(kData + "/tiny-llama");
  auto model = adapter_for(ckpt.config(), ckpt.dir() / "config.json").load(ckpt, {.dtype = at::kFloat});
  at::manual_seed(3);
  Batch batch{at::randint(0, 64, {2, 9}, at::kLong), at::ones({2, 9}, at::kLong), {}};
  batch.attention_mask[1].slice(0, 6).zero_();
  at::Tensor teacher_logits;
  {
    at::NoGradGuard no_grad;
    teacher_logits = model->logits(batch) * 1.5;  // a teacher that differs from the gated student
  }
  const int64_t V = teacher_logits.size(-1), N = 2 * 9;
  const at::Tensor flat = teacher_logits.reshape({N, V});
  const LogitTail tail = logit_tail(flat, {8, at::rand({N, 12})});
  CacheChunk sampled, topk;
  sampled.sampled_ids = tail.sampled.ids.view({2, 9, 12});
  sampled.sampled_counts = tail.sampled.counts.view({2, 9, 12});
  sampled.entropy = tail.sampled.entropy.view({2, 9});
  topk.topk_values = tail.topk_values.to(at::kBFloat16).view({2, 9, 8});
  topk.topk_indices = tail.topk_indices.view({2, 9, 8});
  topk.logsumexp = tail.logsumexp.view({2, 9});
  const at::Tensor mask = batch.attention_mask.reshape({N});

  Gates g = random_gates(model->gate_shape());
  for (const bool is_sampled : {true, false}) {
    const CacheChunk& chunk = is_sampled ? sampled : topk;
    g.zero();
    const LossParts parts = distill_backward(*model, batch, chunk, &g.values, 1.0, 0.0, 0.5);
    const std::vector<at::Tensor> ours = g.grads();
    g.zero();
    const at::Tensor s = model->logits(batch, &g.values).reshape({N, V});
    const at::Tensor loss =
        is_sampled ? sampled_kl_loss(s, tail.sampled.ids, tail.sampled.counts, tail.sampled.entropy, mask)
                   : topk_kl_loss(s, topk.topk_values.view({N, 8}), tail.topk_indices, tail.logsumexp, 1.0, mask);
    (loss * 0.5).backward();
    EXPECT_NEAR(parts.kl, loss.item<double>(), 1e-5 * std::max(1.0, loss.item<double>()));
    EXPECT_EQ(parts.tokens, 15);
    const std::vector<at::Tensor> ref = g.grads();
    for (size_t i = 0; i < ref.size(); ++i) {
      ASSERT_TRUE(ours[i].defined()) << i;
      const double scale = ref[i].abs().max().item<double>();
      EXPECT_GT(scale, 0.0);
      EXPECT_LE((ours[i] - ref[i]).abs().max().item<double>(), 1e-4 * scale)
          << (is_sampled ? "sampled" : "top-k") << " gate group " << i;
    }
  }
}

// heal's intermediate-state term: loss and gradient in every student block equal an independent torch reference
// (tests/unit/boundary_loss_reference.py), with a narrower student (hidden channels cut) and a padded token.
TEST(BoundaryStateLoss, MatchesTorchReference) {
  if (!std::filesystem::exists(HAWADA_PYTHON)) GTEST_SKIP() << "no project venv python at " << HAWADA_PYTHON;
  testing::TempDir dir;
  at::manual_seed(11);
  const int64_t B = 2, L = 5, D = 12, kept = 9, blocks = 3;
  const at::Tensor channels = std::get<0>(at::randperm(D).narrow(0, 0, kept).sort());
  at::Tensor mask = at::ones({B, L}, at::kLong);
  mask[1][4] = 0;
  BoundaryStates states;
  states.channels = channels;
  std::vector<at::Tensor> students;
  std::vector<safetensors::NamedTensor> in{{"mask", mask.to(at::kFloat)}, {"channels", channels}};
  for (int64_t j = 0; j < blocks; ++j) {
    const at::Tensor t = at::randn({B, L, D}) * (j + 1);
    const at::Tensor s = (t.index_select(-1, channels) + at::randn({B, L, kept}) * 0.5).requires_grad_(true);
    states.teacher.push_back(t);
    students.push_back(s);
    in.push_back({"s" + std::to_string(j), s.detach()});
    in.push_back({"t" + std::to_string(j), t});
  }
  safetensors::write_file(dir.path() / "in.safetensors", in);
  auto [code, out] = testing::run_capture(
      std::string(HAWADA_PYTHON) + " " + HAWADA_TEST_DATA_DIR + "/../unit/boundary_loss_reference.py " +
      (dir.path() / "in.safetensors").string() + " " + (dir.path() / "grad.safetensors").string());
  ASSERT_EQ(code, 0) << out;
  double ref = 0;
  std::istringstream(out) >> ref;
  const at::Tensor loss = boundary_state_loss(students, states, mask);
  loss.backward();
  std::printf("boundary loss: ours %.9g, torch reference %.9g\n", loss.item<double>(), ref);
  EXPECT_NEAR(loss.item<double>(), ref, 1e-5 * std::max(1.0, ref));
  const safetensors::Reader grads(dir.path() / "grad.safetensors");
  for (int64_t j = 0; j < blocks; ++j) {
    const at::Tensor want = grads.tensor("g" + std::to_string(j));
    const double diff = (students[j].grad() - want).abs().max().item<double>();
    std::printf("block %lld: max gradient difference %.3g (max %.3g)\n", static_cast<long long>(j), diff,
                want.abs().max().item<double>());
    EXPECT_LE(diff, 1e-5 * want.abs().max().item<double>()) << "block " << j;
  }
  // A count that does not match the boundaries is refused.
  students.pop_back();
  EXPECT_THROW(boundary_state_loss(students, states, mask), UsageError);
}

// AdamW on a flat vector longer than one of its slices (the denominator is made a slice at a time, to bound the
// temporary): the same bits as the textbook update computed on the whole vector at once.
TEST(Adam, SlicedUpdateEqualsTheWholeVectorsBitForBit) {
  at::manual_seed(0);
  const int64_t n = (int64_t{1} << 22) * 2 + 1001;
  const at::Tensor start = at::randn({n});
  at::Tensor params = start.clone();
  Adam adam(params);
  at::Tensor m = at::zeros({n}), v = at::zeros({n}), p = start.clone();
  for (int64_t step = 1; step <= 3; ++step) {
    const at::Tensor grad = at::randn({n});
    adam.step(params, grad, 1e-3, step, 0.01);
    m.mul_(0.9).add_(grad, 0.1);
    v.mul_(0.999).addcmul_(grad, grad, 0.001);
    const double c1 = 1 - std::pow(0.9, step), c2 = 1 - std::pow(0.999, step);
    p.mul_(1 - 1e-3 * 0.01);
    p.addcdiv_(m, (v / c2).sqrt_().add_(1e-8), -1e-3 / c1);
  }
  EXPECT_TRUE(at::equal(params, p));
  EXPECT_FALSE(at::equal(params, start));
}

}  // namespace
}  // namespace hawada
