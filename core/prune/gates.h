// Hard-concrete (L0) gates (Louizos, Welling and Kingma, "Learning Sparse Neural Networks through L0
// Regularization", 2018): each structure has a learnable log_alpha; training samples a stretched,
// clipped concrete variable that is exactly 0 or 1 with positive probability, evaluation uses a
// deterministic value, and the probability of being nonzero is differentiable (the expected L0).
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

namespace hawada {

/// The hard-concrete distribution's constants.
struct HardConcrete {
  double beta = 2.0 / 3.0;  ///< temperature (gates.temperature)
  double gamma = -0.1;      ///< lower end of the stretch interval
  double zeta = 1.1;        ///< upper end of the stretch interval

  /// A training sample in [0, 1], differentiable in log_alpha: u ~ U(0, 1),
  /// s = sigmoid((log u - log(1 - u) + log_alpha) / beta), z = clamp(s (zeta - gamma) + gamma, 0, 1).
  at::Tensor sample(const at::Tensor& log_alpha, const at::Generator& generator) const;
  /// The same sample from given uniform noise u in (0, 1), shaped like log_alpha (noise drawn
  /// elsewhere: on the CPU from a generator keyed by step and micro-batch, for any device).
  at::Tensor sample_from_uniform(const at::Tensor& log_alpha, const at::Tensor& u) const;
  /// The evaluation value clamp(sigmoid(log_alpha) (zeta - gamma) + gamma, 0, 1).
  at::Tensor deterministic(const at::Tensor& log_alpha) const;
  /// P(z > 0) = sigmoid(log_alpha - beta log(-gamma / zeta)): the expected fraction kept.
  at::Tensor keep_probability(const at::Tensor& log_alpha) const;
  /// Evaluation gates that keep the expected number of structures (the rule of CoFi, Xia et al. 2022):
  /// per row of log_alpha [..., n], the round(sum of keep probabilities) structures with the largest
  /// log_alpha keep their deterministic value (at least 1e-3, so the count holds); the rest are 0.
  at::Tensor evaluation(const at::Tensor& log_alpha) const;
  /// The log_alpha whose keep_probability is p (for initialisation, gates.init).
  double log_alpha_for(double keep_probability) const;
};

}  // namespace hawada
