// Hard-concrete gates (distribution checks) and the top-k + tail distillation loss against an
// independent torch reference (tests/unit/distill_loss_reference.py) and against full KL when k = V.
#include <gtest/gtest.h>

#include <limits>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <sstream>

#include "core/io/safetensors.h"
#include "core/prune/distill_loss.h"
#include "core/prune/gates.h"
#include "tests/unit/test_util.h"

namespace hawada {
namespace {

TEST(HardConcrete, DeterministicValuesAndKeepProbability) {
  HardConcrete hc;
  const at::Tensor la = at::linspace(-8, 8, 33);
  const at::Tensor z = hc.deterministic(la);
  EXPECT_TRUE((z >= 0).all().item<bool>() && (z <= 1).all().item<bool>());
  EXPECT_EQ(hc.deterministic(at::full({1}, 10.0)).item<float>(), 1.0f);
  EXPECT_EQ(hc.deterministic(at::full({1}, -10.0)).item<float>(), 0.0f);
  for (double p : {0.05, 0.5, 0.9, 0.99})
    EXPECT_NEAR(hc.keep_probability(at::full({1}, hc.log_alpha_for(p), at::kDouble)).item<double>(), p, 1e-12);
}

TEST(HardConcrete, SampledNonzeroFractionIsTheKeepProbability) {
  HardConcrete hc;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1234);
  for (double la : {-1.0, 0.0, 2.0}) {
    const at::Tensor z = hc.sample(at::full({200000}, la), gen);
    const double nonzero = (z > 0).to(at::kDouble).mean().item<double>();
    const double expected = hc.keep_probability(at::full({1}, la)).item<double>();
    EXPECT_NEAR(nonzero, expected, 0.005) << "log_alpha " << la;
    EXPECT_GT((z == 1).sum().item<int64_t>(), 0) << "exact ones must occur";
  }
  at::Tensor la = at::zeros({16}).requires_grad_(true);
  hc.sample(la, gen).sum().backward();
  EXPECT_TRUE(la.grad().defined());
}

TEST(TopkKl, MatchesTorchReference) {
  if (!std::filesystem::exists(HAWADA_PYTHON)) GTEST_SKIP() << "no project venv python at " << HAWADA_PYTHON;
  testing::TempDir dir;
  at::manual_seed(3);
  const int64_t N = 12, V = 50, k = 8;
  const at::Tensor teacher = at::randn({N, V}) * 3;
  auto [values, indices] = teacher.topk(k, -1);
  const at::Tensor student = at::randn({N, V}) * 3;
  const at::Tensor lse = at::logsumexp(teacher, -1);
  const at::Tensor mask = (at::arange(N) % 3 != 0).to(at::kFloat);
  safetensors::write_file(
      dir.path() / "in.safetensors",
      {{"student", student}, {"values", values}, {"indices", indices.to(at::kInt)}, {"lse", lse}, {"mask", mask}});
  auto [code, out] =
      testing::run_capture(std::string(HAWADA_PYTHON) + " " + HAWADA_TEST_DATA_DIR +
                           "/../unit/distill_loss_reference.py " + (dir.path() / "in.safetensors").string());
  ASSERT_EQ(code, 0) << out;
  std::istringstream lines(out);
  double ref[4];
  for (double& r : ref) lines >> r;
  const double ours[4] = {topk_kl_loss(student, values, indices, lse, 1.0).item<double>(),
                          topk_kl_loss(student, values, indices, lse, 2.0).item<double>(),
                          topk_kl_loss(student, values, indices, lse, 0.5).item<double>(),
                          topk_kl_loss(student, values, indices, lse, 1.0, mask).item<double>()};
  for (int i = 0; i < 4; ++i) {
    std::printf("case %d: ours %.9g, torch reference %.9g\n", i, ours[i], ref[i]);
    EXPECT_NEAR(ours[i], ref[i], 1e-5 * std::max(1.0, std::abs(ref[i])));
  }
}

// A student that puts almost all its mass on the teacher's top-k has a tail near 1e-7, where
// 1 - sum(top-k) in fp32 would lose every digit: those rows take the exact log-sum-exp path. The
// loss and its gradient match the same formula in fp64.
TEST(TopkKl, TinyStudentTailsKeepTheirPrecision) {
  at::manual_seed(5);
  const int64_t N = 6, V = 40, k = 5;
  const at::Tensor teacher = at::randn({N, V}, at::kDouble) * 2;
  auto [values, indices] = teacher.topk(k, -1);
  const at::Tensor lse = at::logsumexp(teacher, -1);
  at::Tensor student64 = at::randn({N, V}, at::kDouble);
  student64.scatter_add_(-1, indices, at::full({N, k}, 18.0, at::kDouble));           // tails ~ e^-18
  student64.index_put_({at::indexing::Slice(0, 2)}, at::randn({2, V}, at::kDouble));  // two ordinary rows
  const at::Tensor student = student64.to(at::kFloat).requires_grad_(true);
  const at::Tensor ours = topk_kl_loss(student, values.to(at::kFloat), indices, lse.to(at::kFloat));
  ours.backward();

  const at::Tensor s = student64.clone().requires_grad_(true);
  const at::Tensor t_top = values - lse.unsqueeze(-1);
  const at::Tensor t = at::cat({t_top, at::log(1.0 - at::exp(t_top).sum(-1, true))}, -1);
  const at::Tensor s_lse = at::logsumexp(s, -1, true);
  const at::Tensor others = s.scatter(-1, indices, -std::numeric_limits<double>::infinity());
  const at::Tensor q = at::cat({s.gather(-1, indices) - s_lse, at::logsumexp(others, -1, true) - s_lse}, -1);
  const at::Tensor exact = (at::exp(t) * (t - q)).sum(-1).mean();
  exact.backward();
  EXPECT_NEAR(ours.item<double>(), exact.item<double>(), 1e-5 * std::max(1.0, exact.item<double>()));
  EXPECT_LT((student.grad().to(at::kDouble) - s.grad()).abs().max().item<double>(), 1e-5);
}

TEST(TopkKl, ZeroForTheTeacherAndFullKlWhenKIsTheVocabulary) {
  at::manual_seed(4);
  const at::Tensor teacher = at::randn({6, 20}) * 2;
  const at::Tensor lse = at::logsumexp(teacher, -1);
  auto [v5, i5] = teacher.topk(5, -1);
  EXPECT_NEAR(topk_kl_loss(teacher, v5, i5, lse).item<double>(), 0.0, 1e-6);
  const at::Tensor student = at::randn({6, 20}).requires_grad_(true);
  auto [vall, iall] = teacher.topk(20, -1);
  const at::Tensor ours = topk_kl_loss(student, vall, iall, lse);
  const at::Tensor full = at::kl_div(at::log_softmax(student, -1), at::log_softmax(teacher, -1), at::Reduction::None,
                                     /*log_target=*/true)
                              .sum(-1)
                              .mean();
  EXPECT_NEAR(ours.item<double>(), full.item<double>(), 1e-5);
  ours.backward();
  EXPECT_TRUE(at::isfinite(student.grad()).all().item<bool>());
}

}  // namespace
}  // namespace hawada

namespace hawada {
namespace {

TEST(HiddenStateLoss, ZeroForTheTeacherAndMaskedPaddingIgnored) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  const at::Tensor t = at::randn({2, 5, 8}, gen);
  const at::Tensor mask = at::tensor({1, 1, 1, 0, 0, 1, 1, 1, 1, 1}, at::kLong).view({2, 5});
  EXPECT_NEAR(hidden_state_loss(t, t, mask).loss.item<double>(), 0.0, 1e-6);
  // Garbage at padded positions changes nothing.
  at::Tensor s = t.clone();
  s[0][4] += 100;
  EXPECT_NEAR(hidden_state_loss(s, t, mask).loss.item<double>(), 0.0, 1e-6);
  EXPECT_GT(hidden_state_loss(s, t).loss.item<double>(), 0.1);
  // The token term is the relative squared error: a student at half the teacher has 0.25 on every token,
  // and the pooled cosine does not see a scale.
  const HiddenStateLoss half = hidden_state_loss(t * 0.5, t, mask);
  EXPECT_NEAR(half.token.item<double>(), 0.25, 1e-5);
  EXPECT_NEAR(half.pooled.item<double>(), 0.0, 1e-6);
}

TEST(HiddenStateLoss, NarrowStudentIsComparedInTheTeachersCoordinates) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  const at::Tensor t = at::randn({1, 4, 6}, gen);
  const at::Tensor kept = at::tensor({0, 2, 3, 5}, at::kLong);
  // The teacher's own kept channels: what is lost is exactly the dropped channels' share.
  const at::Tensor s = t.index_select(-1, kept).clone().requires_grad_(true);
  const HiddenStateLoss l = hidden_state_loss(s, t, {}, kept);
  const at::Tensor dropped = t.index_select(-1, at::tensor({1, 4}, at::kLong));
  const at::Tensor expect = (dropped.pow(2).sum(-1) / t.pow(2).sum(-1)).mean();
  EXPECT_NEAR(l.token.item<double>(), expect.item<double>(), 1e-6);
  l.loss.backward();
  ASSERT_TRUE(s.grad().defined());
  EXPECT_EQ(s.grad().sizes(), s.sizes());
  const at::Tensor wide = widen_channels(s.detach(), kept, 6);
  EXPECT_TRUE(at::equal(wide.index_select(-1, kept), s.detach()));
  EXPECT_EQ(wide.index_select(-1, at::tensor({1, 4}, at::kLong)).abs().sum().item<double>(), 0.0);
}

}  // namespace
}  // namespace hawada

namespace hawada {
namespace {

// Sampled logits: the draws follow the teacher distribution, are packed as distinct tokens with counts
// summing to D, and the same uniforms draw the same tokens.
TEST(SampledLogits, DrawsFollowTheDistributionAndPackIntoCounts) {
  at::manual_seed(7);
  const at::Tensor logits = at::randn({3, 30}) * 2;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  const int64_t D = 12, repeats = 3000;
  at::Tensor freq = at::zeros({3, 30}, at::kDouble);
  for (int64_t r = 0; r < repeats; ++r) {
    const SampledLogits s = sample_logits(logits, at::rand({3, D}, gen));
    ASSERT_EQ(s.ids.scalar_type(), at::kInt);
    ASSERT_EQ(s.counts.scalar_type(), at::kByte);
    EXPECT_TRUE((s.counts.to(at::kLong).sum(-1) == D).all().item<bool>());
    freq.scatter_add_(1, s.ids.to(at::kLong), s.counts.to(at::kDouble));
  }
  const at::Tensor p = at::softmax(logits.to(at::kDouble), -1);
  const double err = (freq / static_cast<double>(repeats * D) - p).abs().max().item<double>();
  EXPECT_LT(err, 0.01) << "max |empirical - p| " << err;
  const at::Tensor u = at::rand({3, D}, gen);
  EXPECT_TRUE(at::equal(sample_logits(logits, u).ids, sample_logits(logits, u).ids));
  const double h = (-(p * p.log()).sum(-1)).max().item<double>();
  EXPECT_NEAR(sample_logits(logits, u).entropy.max().item<double>(), h, 1e-5);
}

// The estimator is unbiased: over many independent draws (D = 12 tokens per row), the mean of its value
// is the exact full-vocabulary KL and the mean of its gradient is the exact gradient softmax(s) - p; the
// top-k + tail loss, for contrast, has a gradient of another direction. Tolerances: about 5 standard
// errors of the means over 4,000 draws.
TEST(SampledLogits, KlEstimateAndGradientAreUnbiased) {
  at::manual_seed(8);
  const int64_t N = 4, V = 40, D = 12, repeats = 4000;
  const at::Tensor teacher = at::randn({N, V}) * 2, student = at::randn({N, V}) * 2;
  const at::Tensor logp = at::log_softmax(teacher, -1), logq = at::log_softmax(student, -1);
  const double exact_kl = (logp.exp() * (logp - logq)).sum(-1).mean().item<double>();
  const at::Tensor exact_grad = (logq.exp() - logp.exp()) / static_cast<double>(N);  // d mean KL / d s
  auto gen = at::make_generator<at::CPUGeneratorImpl>(12);
  double kl_sum = 0;
  at::Tensor grad_sum = at::zeros({N, V});
  for (int64_t r = 0; r < repeats; ++r) {
    const SampledLogits s = sample_logits(teacher, at::rand({N, D}, gen));
    const at::Tensor x = student.clone().requires_grad_(true);
    const at::Tensor loss = sampled_kl_loss(x, s.ids, s.counts, s.entropy);
    loss.backward();
    kl_sum += loss.item<double>();
    grad_sum += x.grad();
  }
  EXPECT_NEAR(kl_sum / repeats, exact_kl, 0.05 * std::max(1.0, exact_kl)) << "exact " << exact_kl;
  const at::Tensor mean_grad = grad_sum / static_cast<double>(repeats);
  const double gerr = (mean_grad - exact_grad).abs().max().item<double>();
  EXPECT_LT(gerr, 0.004) << "max |mean estimated gradient - exact| " << gerr;
  const double cos = at::cosine_similarity(mean_grad.flatten(), exact_grad.flatten(), 0).item<double>();
  EXPECT_GT(cos, 0.999);
  // Top-4 + tail: exact for its coarsened distribution, biased for the full one.
  const at::Tensor x = student.clone().requires_grad_(true);
  auto [v4, i4] = teacher.topk(4, -1);
  topk_kl_loss(x, v4, i4, at::logsumexp(teacher, -1)).backward();
  EXPECT_GT((x.grad() - exact_grad).abs().max().item<double>(), 5 * gerr);
}

}  // namespace
}  // namespace hawada
