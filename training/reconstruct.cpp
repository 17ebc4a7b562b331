#include "training/reconstruct.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <string>

#include "core/base/errors.h"
#include "core/base/log.h"

namespace hawada {
namespace {

enum class Kind { heads, ffn };

// The calibration batches and, per batch, the residual stream entering the next layer to refit (undefined
// until a first block has run: the pass then starts at the embedding).
struct Stream {
  const std::vector<Batch>& batches;
  std::vector<at::Tensor> residual;
};

// One pass of every batch through block `layer` alone (from the residual entering it), calling
// `each(batch, capture)`; returns the residual streams leaving the block.
template <typename F>
std::vector<at::Tensor> pass(const Model& model, GateValues& gates, const Stream& s, int64_t layer, F&& each) {
  std::vector<at::Tensor> out;
  for (size_t b = 0; b < s.batches.size(); ++b) {
    ProjectionInputs capture;
    capture.layer = layer;
    capture.residual = s.residual[b];
    gates.capture = &capture;
    out.push_back(model.features(s.batches[b], &gates));
    gates.capture = nullptr;
    each(s.batches[b], capture);
  }
  return out;
}

// The Gram matrix [n + 1, n + 1] (fp64) of block `layer`'s captured projection inputs of `kind` over this rank's
// batches, the last row and column those of a constant 1 (for the bias); `tokens` counts the rows.
at::Tensor gram_of(const Model& model, GateValues& gates, const Stream& s, int64_t layer, Kind kind, int64_t& tokens) {
  at::Tensor gram;
  pass(model, gates, s, layer, [&](const Batch& b, const ProjectionInputs& capture) {
    at::Tensor x = kind == Kind::heads ? capture.heads : capture.ffn;
    HAWADA_ASSERT(x.defined(), "the forward pass captured the projection inputs of the layer");
    x = x.reshape({-1, x.size(-1)});
    if (b.attention_mask.defined()) x = x.index({b.attention_mask.reshape({-1}).ne(0)});
    x = at::cat({x.to(at::kDouble), at::ones({x.size(0), 1}, x.options().dtype(at::kDouble))}, 1);
    gram = gram.defined() ? gram.addmm_(x.t(), x) : x.t().mm(x);
    tokens += x.size(0);
  });
  return gram;
}

// The normal equations of a span refit over this rank's batches: the Gram matrix [n + 1, n + 1] of block `layer`'s
// captured FFN activations with a constant 1 (as gram_of), and their cross products [n + 1, hidden] with the MLP
// branch's target: `boundary[b]` (the teacher's residual stream where the span of dropped blocks after `layer` ends)
// minus the residual the branch is added to. `linear` is false when the model does not capture that residual (an
// MLP output that does not enter the stream linearly, such as Gemma's output norm). `tokens` counts the rows.
struct SpanEquations {
  bool linear = true;
  at::Tensor gram, cross;
};
SpanEquations span_equations(const Model& model, GateValues& gates, const Stream& s, int64_t layer,
                             const std::vector<at::Tensor>& boundary, int64_t& tokens) {
  at::Tensor gram, cross;
  bool linear = true;
  size_t index = 0;
  pass(model, gates, s, layer, [&](const Batch& b, const ProjectionInputs& capture) {
    const size_t i = index++;
    if (!capture.mlp_base.defined()) linear = false;
    if (!linear) return;
    HAWADA_ASSERT(capture.ffn.defined(), "the forward pass captured the FFN activations of the layer");
    at::Tensor x = capture.ffn.reshape({-1, capture.ffn.size(-1)});
    at::Tensor t = (boundary[i] - capture.mlp_base).reshape({-1, capture.mlp_base.size(-1)});
    if (b.attention_mask.defined()) {
      const at::Tensor keep = b.attention_mask.reshape({-1}).ne(0);
      x = x.index({keep}), t = t.index({keep});
    }
    x = at::cat({x.to(at::kDouble), at::ones({x.size(0), 1}, x.options().dtype(at::kDouble))}, 1);
    t = t.to(at::kDouble);
    gram = gram.defined() ? gram.addmm_(x.t(), x) : x.t().mm(x);
    cross = cross.defined() ? cross.addmm_(x.t(), t) : x.t().mm(t);
    tokens += x.size(0);
  });
  return {linear, gram, cross};
}

// The rows of the normal equations that a refit of `p` from its `kept` input columns solves: those columns and,
// where `p` has a bias, the constant's (the last of `gram`'s n + 1).
at::Tensor solved_rows(const Projection& p, const at::Tensor& gram, const at::Tensor& kept) {
  const int64_t n = gram.size(0) - 1;
  return p.bias.defined() ? at::cat({kept, at::full({1}, n, kept.options())}) : kept;
}

// Solves G x = target for the solved rows `idx` of the summed Gram matrix, with a ridge of `ridge` x the mean diagonal
// on the `k` input columns (not on the bias's row).
at::Tensor ridge_solve(const at::Tensor& gram, const at::Tensor& idx, int64_t k, const at::Tensor& target,
                       double ridge) {
  at::Tensor g = gram.index_select(0, idx).index_select(1, idx);
  at::Tensor diag = g.diagonal().narrow(0, 0, k);
  diag.add_(ridge * std::max(diag.mean().item<double>(), 1e-30));
  return at::linalg_solve(g, target);
}

// Solves for the kept input columns (and the bias) of `p` from the summed Gram matrix `gram` (see gram_of):
// argmin over W', b' of the sum over tokens of |W x + b - (W' x_kept + b')|^2 + ridge terms. The solution
// [kept (+1), out] in fp64.
at::Tensor solve(const Projection& p, const at::Tensor& gram, const at::Tensor& kept, double ridge) {
  const at::Tensor idx = solved_rows(p, gram, kept);
  at::Tensor bias = p.bias.defined() ? p.bias.to(at::kDouble) : at::zeros({p.weight.size(0)}, gram.options());
  const at::Tensor w_aug = at::cat({p.weight.to(at::kDouble), bias.unsqueeze(1)}, 1);  // [out, n + 1]
  const at::Tensor target = gram.index_select(0, idx).mm(w_aug.t());                   // [kept (+1), out]
  return ridge_solve(gram, idx, kept.numel(), target, ridge);
}

// The same least squares towards another target, given by its summed cross products `cross` [n + 1, out] with the
// inputs (span_cross_of): argmin of the sum over tokens of |target - (W' x_kept + b')|^2 + ridge terms.
at::Tensor solve_towards(const Projection& p, const at::Tensor& gram, const at::Tensor& cross, const at::Tensor& kept,
                         double ridge) {
  const at::Tensor idx = solved_rows(p, gram, kept);
  return ridge_solve(gram, idx, kept.numel(), cross.index_select(0, idx), ridge);
}

// Writes the solution into `p` (the kept columns and the bias). A loaded model's tensors may view the memory of
// its checkpoint (an fp32 file is mapped copy-on-write, and every tensor read from it shares those pages), so the
// projection gets memory of its own first: the dense checkpoint stays what it was for the rest of the process.
void write(const Projection& p, const at::Tensor& solution, const at::Tensor& kept) {
  for (const at::Tensor& t : {p.weight, p.bias})  // handles of the model's own tensors: set_ redirects those
    if (t.defined()) t.set_(t.clone());
  const int64_t k = kept.numel();
  p.weight.index_copy_(1, kept, solution.narrow(0, 0, k).t().to(p.weight.scalar_type()));
  if (p.bias.defined()) p.bias.copy_(solution[k].to(p.bias.scalar_type()));
}

// The kept input columns of one layer's projection of `kind`: per kept head its head_dim columns.
at::Tensor kept_columns(const at::Tensor& layer_gates, int64_t inputs) {
  const at::Tensor kept = layer_gates.ne(0).nonzero().reshape({-1});
  const int64_t width = inputs / layer_gates.numel();
  if (width == 1) return kept;
  return (kept.unsqueeze(1) * width + at::arange(width, kept.options()).unsqueeze(0)).reshape({-1});
}

}  // namespace

ReconstructStats reconstruct_projections(const Model& model, GateValues& gates, const std::vector<Batch>& batches,
                                         const ReconstructOptions& o, Communicator& comm) {
  at::NoGradGuard no_grad;
  ReconstructStats stats;
  const int64_t layers = model.gate_shape().layers;
  auto dropped = [&](int64_t i) { return gates.layers.defined() && gates.layers[i].item<double>() == 0; };
  int64_t last_span = -1;  // the last kept block followed by a dropped one
  for (int64_t i = 0; o.spans && i + 1 < layers; ++i)
    if (!dropped(i) && dropped(i + 1)) last_span = i;
  Stream stream{batches, std::vector<at::Tensor>(batches.size())};
  // The teacher's residual stream (no gates), run ahead of the refits: it passes every block before that block is
  // refitted, so it is the dense model's.
  Stream teacher{batches, std::vector<at::Tensor>(batches.size())};
  int64_t teacher_at = -1;  // the last block the teacher's stream has passed
  GateValues none;
  bool warned = false;
  for (int64_t i = 0; i < layers; ++i) {
    if (dropped(i)) continue;
    int64_t end = i;  // the last dropped block of the span after block i (i: none)
    while (end + 1 < layers && dropped(end + 1)) ++end;
    bool span = o.spans && end > i;
    if (i <= last_span)
      while (teacher_at < end) teacher.residual = pass(model, none, teacher, ++teacher_at, [](auto&, auto&) {});
    auto [attn, mlp] = model.output_projections(i);
    for (const Kind kind : {Kind::heads, Kind::ffn}) {
      if (kind == Kind::heads && !o.attention) continue;
      const Projection& p = kind == Kind::heads ? attn : mlp;
      at::Tensor& g = kind == Kind::heads ? gates.heads : gates.ffn;
      at::Tensor layer_gates = g.defined() ? g[i] : at::ones({p.weight.size(1)}, p.weight.options());
      const at::Tensor kept = kept_columns(layer_gates, p.weight.size(1)).to(p.weight.device());
      int64_t tokens = 0;
      at::Tensor solution;
      if (kind == Kind::ffn && span && kept.numel() > 0) {
        // The down projection of the block before a span learns what the span added to the stream.
        SpanEquations eq = span_equations(model, gates, stream, i, teacher.residual, tokens);
        if (eq.linear) {
          comm.all_reduce(eq.gram, Communicator::Op::sum);
          comm.all_reduce(eq.cross, Communicator::Op::sum);
          solution = solve_towards(p, eq.gram, eq.cross, kept, o.ridge).contiguous();
          stats.spans += 1;
        } else if (!warned) {
          warned = true;
          log::warn(
              "calibrate: the MLP output of this model does not enter the residual stream linearly (an output "
              "norm): the blocks before dropped spans get the plain refit");
        }
      }
      if (!solution.defined()) {
        // A branch the plan removes entirely has nothing to refit; one that keeps every input has nothing to
        // reconstruct (its solution is the dense projection again), and refitting it would only undo its scales.
        if (!o.width || kept.numel() == 0 || kept.numel() == p.weight.size(1)) continue;
        at::Tensor gram = gram_of(model, gates, stream, i, kind, tokens);
        comm.all_reduce(gram, Communicator::Op::sum);
        solution = solve(p, gram, kept, o.ridge).contiguous();
      }
      at::Tensor t = at::tensor({static_cast<double>(tokens)}, at::kDouble).to(p.weight.device());
      comm.all_reduce(t, Communicator::Op::sum);
      comm.broadcast(solution, 0);
      if (!at::isfinite(solution).all().item<bool>())
        throw NumericError("calibrate.reconstruct: the least-squares " +
                           std::string(kind == Kind::heads ? "attention output" : "MLP down") +
                           " projection of layer " + std::to_string(i) + " is not finite; nothing is published");
      write(p, solution, kept);
      if (g.defined()) g[i].masked_fill_(g[i].ne(0), 1.0);
      at::Tensor& out_scales = kind == Kind::heads ? gates.attn_out : gates.mlp_out;
      if (out_scales.defined()) out_scales[i].fill_(1.0);
      stats.projections += 1;
      (kind == Kind::heads ? stats.attention : stats.mlp) += 1;
      stats.tokens = static_cast<int64_t>(t.item<double>());
    }
    stream.residual = pass(model, gates, stream, i, [](const Batch&, const ProjectionInputs&) {});
    log::info("calibrate: reconstruct: layer " + std::to_string(i + 1) + "/" + std::to_string(layers) + " refitted" +
              (span ? " (to the end of the span of blocks " + std::to_string(i + 2) + "-" + std::to_string(end + 1) +
                          " it stands in for)"
                    : ""));
  }
  return stats;
}

}  // namespace hawada
