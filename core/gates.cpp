#include "core/gates.h"

#include <ATen/ATen.h>

#include <cmath>

#include "core/errors.h"

namespace hawada {

at::Tensor HardConcrete::sample(const at::Tensor& log_alpha, const at::Generator& generator) const {
  // u away from 0 and 1 so both logarithms stay finite.
  const at::Tensor u = at::empty_like(log_alpha).uniform_(1e-6, 1.0 - 1e-6, generator);
  const at::Tensor s = at::sigmoid((at::log(u) - at::log1p(-u) + log_alpha) / beta);
  return at::clamp(s * (zeta - gamma) + gamma, 0.0, 1.0);
}

at::Tensor HardConcrete::deterministic(const at::Tensor& log_alpha) const {
  return at::clamp(at::sigmoid(log_alpha) * (zeta - gamma) + gamma, 0.0, 1.0);
}

at::Tensor HardConcrete::keep_probability(const at::Tensor& log_alpha) const {
  return at::sigmoid(log_alpha - beta * std::log(-gamma / zeta));
}

double HardConcrete::log_alpha_for(double p) const {
  HAWADA_ASSERT(p > 0 && p < 1, "keep probability in (0, 1)");
  return std::log(p / (1 - p)) + beta * std::log(-gamma / zeta);
}

}  // namespace hawada
