// The teacher cache's tail on LM-head logits: the fused logit tail (core/prune/logit_tail.h) against the
// ATen ops it replaced (logsumexp + topk; sample_logits: softmax, cumsum, searchsorted, entropy), on the
// same fp32 rows, one thread. Prints one JSON line per shape with both times and the ratio.
// The student's side as well: the sampled-12 loss and its backward through a hidden-576 LM head (what a
// heal or gate step runs per piece of tokens), autograd through sampled_kl_loss against distill_kl_grad,
// with and without the head's GEMMs.
//   bench_logit_tail [ROWS] [VOCAB ...]     (default 1024 rows; vocabularies 32000 49152 262144)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "core/prune/logit_tail.h"

namespace {

double best_seconds(const std::function<void()>& f, int repeats = 3) {
  double best = 1e30;
  for (int i = 0; i < repeats; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace hawada;
  at::set_num_threads(1);
  const int64_t rows = argc > 1 ? std::atoll(argv[1]) : 1024;
  std::vector<int64_t> vocabs;
  for (int i = 2; i < argc; ++i) vocabs.push_back(std::atoll(argv[i]));
  if (vocabs.empty()) vocabs = {32000, 49152, 262144};
  for (const int64_t V : vocabs) {
    const int64_t n = std::max<int64_t>(16, rows * 49152 / V);  // about the same bytes per shape
    const at::Tensor z = at::randn({n, V}) * 3.0;
    const at::Tensor u = at::rand({n, 12});
    const double aten_topk = best_seconds([&] {
      at::logsumexp(z, -1);
      z.topk(64, -1, true, true);
    });
    const double ours_topk = best_seconds([&] { logit_tail(z, {64, {}}); });
    const double aten_sampled = best_seconds([&] { sample_logits(z, u); });
    const double ours_sampled = best_seconds([&] { logit_tail(z, {0, u}); });
    // The student: hidden [n, 576] -> logits through a trainable head, the loss, the gradient back.
    const at::Tensor x = at::randn({n, 576}).requires_grad_(true),
                     head = (at::randn({V, 576}) * 0.05).requires_grad_(true);
    const SampledLogits drawn = logit_tail(z, {0, u}).sampled;
    const TeacherRow row{true, drawn.ids, drawn.counts, drawn.entropy};
    const at::Tensor w = at::full({n}, 1.0f / static_cast<float>(n));
    const at::Tensor s0 = at::randn({n, V}) * 3.0;
    const double aten_loss = best_seconds([&] {
      const at::Tensor s = s0.clone().requires_grad_(true);
      sampled_kl_loss(s, drawn.ids, drawn.counts, drawn.entropy).backward();
    });
    const double ours_loss = best_seconds([&] { distill_kl_grad(s0, row, w); });
    const double aten_step =
        best_seconds([&] { sampled_kl_loss(x.mm(head.t()), drawn.ids, drawn.counts, drawn.entropy).backward(); });
    const double ours_step = best_seconds([&] {
      const at::Tensor s = x.mm(head.t());
      KlGrad g;
      {
        at::NoGradGuard no_grad;
        g = distill_kl_grad(s.detach(), row, w);
      }
      s.backward(g.grad);
    });
    std::printf(
        "{\"rows\": %lld, \"vocab\": %lld, \"student_loss_aten_s\": %.4f, \"student_loss_ours_s\": %.4f, "
        "\"student_loss_speedup\": %.2f, \"student_head_step_aten_s\": %.4f, \"student_head_step_ours_s\": %.4f, "
        "\"student_head_step_speedup\": %.2f}\n",
        static_cast<long long>(n), static_cast<long long>(V), aten_loss, ours_loss, aten_loss / ours_loss, aten_step,
        ours_step, aten_step / ours_step);
    std::printf(
        "{\"rows\": %lld, \"vocab\": %lld, \"topk64_aten_s\": %.4f, \"topk64_ours_s\": %.4f, \"topk64_speedup\": %.2f, "
        "\"sampled12_aten_s\": %.4f, \"sampled12_ours_s\": %.4f, \"sampled12_speedup\": %.2f}\n",
        static_cast<long long>(n), static_cast<long long>(V), aten_topk, ours_topk, aten_topk / ours_topk, aten_sampled,
        ours_sampled, aten_sampled / ours_sampled);
  }
  return 0;
}
