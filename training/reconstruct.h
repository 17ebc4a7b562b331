// Least-squares reconstruction of a pruned student's output projections (calibrate.reconstruct).
#pragma once

#include <cstdint>
#include <vector>

#include "adapters/model.h"
#include "core/dist/communicator.h"
#include "core/prune/batch.h"

namespace hawada {

/// What reconstruct_projections did: the projections refitted and the calibration tokens they were fitted on.
struct ReconstructStats {
  int64_t projections = 0;  ///< attention + mlp
  int64_t attention = 0;    ///< attention output projections (o_proj) refitted
  int64_t mlp = 0;          ///< MLP down projections refitted
  int64_t spans = 0;        ///< of them, those refitted to the end of a span of dropped blocks
  int64_t tokens = 0;       ///< summed over ranks
};

/// What reconstruct_projections refits.
struct ReconstructOptions {
  double ridge = 1e-4;    ///< x the mean diagonal of the Gram matrix
  bool width = true;      ///< the projections whose inputs the plan narrows, to the dense projection's output
  bool attention = true;  ///< with `width`: the attention output projections too (false: MLP down only)
  /// The MLP down projection of each kept block followed by dropped blocks, to what the span added: from the kept
  /// FFN channels it reproduces the teacher's residual stream at the span's end (the input of the next kept block)
  /// minus the residual the MLP output is added to. Models whose MLP output passes an output norm get the plain
  /// refit (a warning says so).
  bool spans = false;
};

/// Refits the student's output projections layer after layer, from the first kept block to the last: each kept
/// block's attention output (o_proj) and then its MLP down projection are solved, in fp64 normal equations
/// with a ridge of `ridge` x the mean diagonal, so that from the kept heads' / FFN channels' activations
/// alone they reproduce what the dense projection computes from all of them, on the student's own inputs
/// (which carry the refits of the layers before). The bias, where the projection has one, is refitted too.
/// This is what one-shot structured pruners do to recover without gradient steps (the channels a cut removes
/// are not independent of the ones it keeps); the kept structures' scales are absorbed into the weights.
///
/// `model` is the dense model, in fp32, whose projections (Model::output_projections) are changed in place;
/// `gates` are the student's (student_gates) on the model's device: afterwards every kept head and FFN
/// channel of a refitted projection has gate 1 and its output scales are 1. `batches` are this rank's
/// calibration inputs (padding excluded); the Gram matrices are summed over `comm`'s ranks and rank 0's
/// solution is broadcast, so every rank ends with the same weights. NumericError naming the layer when a
/// solution is not finite.
/// A projection whose inputs the plan keeps in full is left as it is (with its gates and output scales): its
/// least-squares solution would be the dense projection itself; unless it stands before a span (`o.spans`), where
/// the target is the teacher's stream at the span's end (the teacher's stream is run alongside, one pass per block).
ReconstructStats reconstruct_projections(const Model& model, GateValues& gates, const std::vector<Batch>& batches,
                                         const ReconstructOptions& o, Communicator& comm);

}  // namespace hawada
