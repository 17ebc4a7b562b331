// The fused logit tail against ATen's ops (logsumexp, topk, sample_logits) on the same rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/prune/logit_tail.h"

namespace hawada {
namespace {

at::Tensor random_logits(int64_t n, int64_t v, double scale, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn({n, v}, gen) * scale;
}

// Odd sizes: not a multiple of the vector lanes, nor of the sampler's 256-token blocks.
TEST(LogitTail, TopKAndLogSumExpEqualAten) {
  for (const int64_t V : {1, 7, 1000, 4099}) {
    const at::Tensor z = random_logits(37, V, 4.0, 11 + V);
    const int64_t k = std::min<int64_t>(V, 64);
    const LogitTail t = logit_tail(z, {k, {}});
    EXPECT_TRUE(at::allclose(t.logsumexp, at::logsumexp(z, -1), 1e-6, 1e-5)) << "V " << V;
    auto [values, indices] = z.topk(k, -1, true, true);
    EXPECT_TRUE(at::equal(t.topk_indices, indices.to(at::kInt))) << "V " << V;
    EXPECT_TRUE(at::equal(t.topk_values, values)) << "V " << V;
  }
}

TEST(LogitTail, KEqualToTheVocabularyKeepsEveryToken) {
  const at::Tensor z = random_logits(5, 300, 3.0, 3);
  const LogitTail t = logit_tail(z, {300, {}});
  EXPECT_TRUE(at::equal(std::get<0>(t.topk_indices.sort(-1)), at::arange(300, at::kInt).expand({5, 300})));
}

TEST(LogitTail, TiesKeepTheLowerIdFirst) {
  at::Tensor z = at::zeros({1, 40});
  z.index_put_({0, 9}, 2.0);
  const LogitTail t = logit_tail(z, {3, {}});
  EXPECT_EQ(t.topk_indices[0][0].item<int>(), 9);
  EXPECT_EQ(t.topk_indices[0][1].item<int>(), 0);
  EXPECT_EQ(t.topk_indices[0][2].item<int>(), 1);
}

// The draws of one row, in ascending order, from distinct ids and their counts.
std::vector<int64_t> expand(const at::Tensor& ids, const at::Tensor& counts) {
  std::vector<int64_t> out;
  for (int64_t s = 0; s < ids.size(0); ++s)
    for (int64_t c = 0; c < counts[s].item<int64_t>(); ++c) out.push_back(ids[s].item<int64_t>());
  return out;
}

// Against the exact inverse CDF (fp64): every draw is the exact one, or the uniform lies within fp32
// rounding of the boundary between the two tokens. The entropy against fp64 as well: ATen's fp32
// lse - sum p z cancels digits at large logits (ours works with z - max).
TEST(LogitTail, DrawsAndEntropyEqualTheExactOnes) {
  int64_t draws = 0, at_boundary = 0;
  for (const int64_t V : {5, 1000, 49157}) {
    for (const double scale : {0.5, 3.0, 8.0}) {
      const at::Tensor z = random_logits(29, V, scale, 17 + V);
      auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
      const at::Tensor u = at::rand({29, 12}, gen);
      const LogitTail t = logit_tail(z, {0, u});
      const at::Tensor z64 = z.to(at::kDouble);
      const at::Tensor p64 = at::softmax(z64, -1);
      const at::Tensor h64 = at::logsumexp(z64, -1) - (p64 * z64).sum(-1);
      EXPECT_TRUE(at::allclose(t.sampled.entropy.to(at::kDouble), h64, 1e-5, 1e-6)) << "V " << V << " scale " << scale;
      EXPECT_TRUE(at::equal(t.sampled.counts.sum(-1), at::full({29}, 12, at::kLong)));
      const at::Tensor cdf = p64.cumsum(-1);
      for (int64_t r = 0; r < 29; ++r) {
        const std::vector<int64_t> ours = expand(t.sampled.ids[r], t.sampled.counts[r]);
        const at::Tensor us = std::get<0>(u[r].to(at::kDouble).sort());
        const at::Tensor exact = at::searchsorted(cdf[r], us, false, true).clamp_max(V - 1);
        for (int64_t d = 0; d < 12; ++d, ++draws) {
          const int64_t e = exact[d].item<int64_t>(), o = ours[static_cast<size_t>(d)];
          if (e == o) continue;
          const double boundary = cdf[r][std::min(e, o)].item<double>();
          EXPECT_NEAR(boundary, us[d].item<double>(), 1e-5)
              << "V " << V << " row " << r << ": drew " << o << ", exact " << e;
          ++at_boundary;
        }
      }
    }
  }
  EXPECT_LE(at_boundary, draws / 100) << at_boundary << " of " << draws << " draws on a boundary";
}

// The same as sample_logits (the ATen reference) but for boundary cases.
TEST(LogitTail, DrawsAsSampleLogitsDoes) {
  const at::Tensor z = random_logits(64, 3000, 3.0, 8);
  const at::Tensor u = at::rand({64, 12});
  const LogitTail t = logit_tail(z, {0, u});
  const SampledLogits ref = sample_logits(z, u);
  const at::Tensor same = (t.sampled.ids == ref.ids).logical_and(t.sampled.counts == ref.counts).all(-1);
  EXPECT_GE(same.sum().item<int64_t>(), 62);
}

TEST(LogitTail, APeakedRowDrawsItsPeakAndHasNoEntropy) {
  at::Tensor z = random_logits(2, 5000, 1.0, 9);
  z.index_put_({0, 4321}, 200.0);
  const LogitTail t = logit_tail(z, {1, at::full({2, 8}, 0.999f)});
  EXPECT_EQ(t.sampled.ids[0][0].item<int>(), 4321);
  EXPECT_EQ(t.sampled.counts[0][0].item<int>(), 8);
  EXPECT_NEAR(t.sampled.entropy[0].item<float>(), 0.0, 1e-6);
  EXPECT_NEAR(t.logsumexp[0].item<float>(), 200.0, 1e-4);
}

TEST(LogitTail, NonFiniteRowsStayNonFinite) {
  at::Tensor z = random_logits(3, 700, 2.0, 4);
  z.index_put_({1, 100}, std::nan(""));
  const LogitTail t = logit_tail(z, {4, at::rand({3, 6})});
  EXPECT_TRUE(std::isnan(t.logsumexp[1].item<float>()));
  EXPECT_TRUE(std::isnan(t.sampled.entropy[1].item<float>()));
  EXPECT_TRUE(std::isfinite(t.logsumexp[0].item<float>()));
}

TEST(LogitTail, ThreadsDoNotChangeTheResult) {
  const at::Tensor z = random_logits(64, 3001, 5.0, 21);
  const at::Tensor u = at::rand({64, 16});
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const LogitTail one = logit_tail(z, {16, u});
  at::set_num_threads(2);
  const LogitTail two = logit_tail(z, {16, u});
  at::set_num_threads(threads);
  EXPECT_TRUE(at::equal(one.logsumexp, two.logsumexp));
  EXPECT_TRUE(at::equal(one.topk_indices, two.topk_indices));
  EXPECT_TRUE(at::equal(one.sampled.ids, two.sampled.ids));
  EXPECT_TRUE(at::equal(one.sampled.entropy, two.sampled.entropy));
}

// The student's side: distill_kl_grad against autograd through the ATen losses (topk_kl_loss,
// sampled_kl_loss), per row and for the weighted sum, on rows with a tiny top-k tail, padded draw slots
// and a skipped row.
struct Reference {
  at::Tensor kl, grad;
};
Reference autograd_reference(const at::Tensor& z, const TeacherRow& t, const at::Tensor& w) {
  const auto loss = [&](const at::Tensor& s, int64_t a, int64_t b, const at::Tensor& mask) {
    return t.sampled
               ? sampled_kl_loss(s, t.indices.slice(0, a, b), t.values.slice(0, a, b), t.scalar.slice(0, a, b), mask)
               : topk_kl_loss(s, t.values.slice(0, a, b), t.indices.slice(0, a, b), t.scalar.slice(0, a, b), 1.0, mask);
  };
  const int64_t n = z.size(0);
  Reference ref{at::zeros({n}), {}};
  for (int64_t r = 0; r < n; ++r) ref.kl[r] = loss(z.slice(0, r, r + 1), r, r + 1, {}).item<float>();
  const at::Tensor s = z.detach().clone().requires_grad_(true);
  // loss() is sum(w kl) / max(sum w, 1): with sum w >= 1, times sum w is the weighted sum.
  (loss(s, 0, n, w) * w.sum()).backward();
  ref.grad = s.grad();
  return ref;
}

void expect_same_loss_and_grad(const at::Tensor& z, const TeacherRow& t, const at::Tensor& w, const char* what) {
  const KlGrad ours = distill_kl_grad(z, t, w);
  const Reference ref = autograd_reference(z, t, w);
  const at::Tensor live = w.ne(0);
  EXPECT_TRUE(at::allclose(ours.kl.masked_select(live), ref.kl.masked_select(live), 1e-4, 1e-5))
      << what << ": " << ours.kl << ref.kl;
  const double scale = ref.grad.abs().max().item<double>();
  EXPECT_LE((ours.grad - ref.grad).abs().max().item<double>(), 1e-5 * scale + 1e-6) << what;  // V = 1: exactly 0
}

TEST(StudentLoss, SampledKlAndGradientEqualAutograd) {
  at::manual_seed(12);
  for (const int64_t V : {1, 7, 1000, 4099}) {
    const at::Tensor teacher = random_logits(9, V, 3.0, 40 + V), z = random_logits(9, V, 3.0, 50 + V);
    const SampledLogits draws = logit_tail(teacher, {0, at::rand({9, 12})}).sampled;  // slots past the distinct ids: 0
    at::Tensor w = at::rand({9}) + 0.5;
    w[4] = 0.0;
    expect_same_loss_and_grad(z, {true, draws.ids, draws.counts, draws.entropy}, w, "sampled");
  }
}

TEST(StudentLoss, TopKKlAndGradientEqualAutograd) {
  at::manual_seed(13);
  for (const int64_t V : {7, 1000, 4099}) {
    const at::Tensor teacher = random_logits(9, V, 3.0, 60 + V);
    at::Tensor z = random_logits(9, V, 3.0, 70 + V);
    const LogitTail t = logit_tail(teacher, {std::min<int64_t>(V - 1, 16), {}});
    // Row 2: the student's top-k holds all but ~1e-6 of its mass (the tail's own sum, not 1 - top).
    z[2].index_put_({t.topk_indices[2].to(at::kLong)}, 30.0);
    at::Tensor w = at::rand({9}) + 0.5;
    w[5] = 0.0;
    expect_same_loss_and_grad(z, {false, t.topk_indices, t.topk_values, t.logsumexp}, w, "top-k");
  }
}

TEST(StudentLoss, NonFiniteLogitsGiveANonFiniteRow) {
  at::Tensor z = random_logits(3, 500, 2.0, 5);
  z.index_put_({1, 17}, std::nan(""));
  const SampledLogits draws = logit_tail(random_logits(3, 500, 2.0, 6), {0, at::rand({3, 4})}).sampled;
  const KlGrad g = distill_kl_grad(z, {true, draws.ids, draws.counts, draws.entropy}, at::ones({3}));
  EXPECT_TRUE(std::isnan(g.kl[1].item<float>()));
  EXPECT_TRUE(std::isfinite(g.kl[0].item<float>()) && std::isfinite(g.kl[2].item<float>()));
}

TEST(StudentLoss, ATokenOutsideTheVocabularyIsRefused) {
  const at::Tensor ids = at::full({2, 3}, 600, at::kInt);
  EXPECT_THROW(
      distill_kl_grad(random_logits(2, 500, 1.0, 7), {true, ids, at::ones({2, 3}), at::zeros({2})}, at::ones({2})),
      c10::Error);
}

}  // namespace
}  // namespace hawada
