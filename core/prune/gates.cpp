#include "core/prune/gates.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "core/base/errors.h"

namespace hawada {

at::Tensor HardConcrete::sample(const at::Tensor& log_alpha, const at::Generator& generator) const {
  // u away from 0 and 1 so both logarithms stay finite.
  return sample_from_uniform(log_alpha, at::empty_like(log_alpha).uniform_(1e-6, 1.0 - 1e-6, generator));
}

at::Tensor HardConcrete::sample_from_uniform(const at::Tensor& log_alpha, const at::Tensor& u) const {
  const at::Tensor s = at::sigmoid((at::log(u) - at::log1p(-u) + log_alpha) / beta);
  return at::clamp(s * (zeta - gamma) + gamma, 0.0, 1.0);
}

at::Tensor HardConcrete::deterministic(const at::Tensor& log_alpha) const {
  return at::clamp(at::sigmoid(log_alpha) * (zeta - gamma) + gamma, 0.0, 1.0);
}

at::Tensor HardConcrete::keep_probability(const at::Tensor& log_alpha) const {
  return at::sigmoid(log_alpha - beta * std::log(-gamma / zeta));
}

at::Tensor HardConcrete::evaluation(const at::Tensor& log_alpha) const {
  at::NoGradGuard no_grad;
  const at::Tensor la = log_alpha.detach().to(at::kFloat);
  const at::Tensor kept = at::round(keep_probability(la).sum(-1, /*keepdim=*/true)).to(at::kLong);
  // Rank of every structure within its row by descending log_alpha (stable: ties keep index order).
  const at::Tensor order = std::get<1>(la.sort(/*stable=*/true, -1, /*descending=*/true));
  const at::Tensor rank =
      at::empty_like(order).scatter_(-1, order, at::arange(la.size(-1), order.options()).expand_as(order));
  // A kept structure whose deterministic value rounds to 0 would silently drop below the expected
  // count; it keeps at least a small positive value so the count holds.
  const at::Tensor value = at::clamp_min(deterministic(la), 1e-3);
  return at::where(rank < kept, value, at::zeros_like(value)).to(log_alpha.scalar_type());
}

double HardConcrete::log_alpha_for(double p) const {
  HAWADA_ASSERT(p > 0 && p < 1, "keep probability in (0, 1)");
  return std::log(p / (1 - p)) + beta * std::log(-gamma / zeta);
}

}  // namespace hawada
