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

// Solves for the kept input columns (and the bias) of `p` from the summed Gram matrix `gram` (see gram_of):
// argmin over W', b' of the sum over tokens of |W x + b - (W' x_kept + b')|^2 + ridge terms. The solution
// [kept (+1), out] in fp64.
at::Tensor solve(const Projection& p, const at::Tensor& gram, const at::Tensor& kept, double ridge) {
  const int64_t n = gram.size(0) - 1, k = kept.numel();
  const at::Tensor idx = p.bias.defined() ? at::cat({kept, at::full({1}, n, kept.options())}) : kept;
  at::Tensor bias = p.bias.defined() ? p.bias.to(at::kDouble) : at::zeros({p.weight.size(0)}, gram.options());
  const at::Tensor w_aug = at::cat({p.weight.to(at::kDouble), bias.unsqueeze(1)}, 1);  // [out, n + 1]
  const at::Tensor rows = gram.index_select(0, idx);
  at::Tensor g = rows.index_select(1, idx);
  const at::Tensor target = rows.mm(w_aug.t());  // [kept (+1), out]
  at::Tensor diag = g.diagonal().narrow(0, 0, k);
  diag.add_(ridge * std::max(diag.mean().item<double>(), 1e-30));
  return at::linalg_solve(g, target);
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
                                         double ridge, bool attention, Communicator& comm) {
  at::NoGradGuard no_grad;
  ReconstructStats stats;
  const int64_t layers = model.gate_shape().layers;
  Stream stream{batches, std::vector<at::Tensor>(batches.size())};
  for (int64_t i = 0; i < layers; ++i) {
    if (gates.layers.defined() && gates.layers[i].item<double>() == 0) continue;  // a dropped block
    auto [attn, mlp] = model.output_projections(i);
    for (const Kind kind : {Kind::heads, Kind::ffn}) {
      if (kind == Kind::heads && !attention) continue;
      const Projection& p = kind == Kind::heads ? attn : mlp;
      at::Tensor& g = kind == Kind::heads ? gates.heads : gates.ffn;
      at::Tensor layer_gates = g.defined() ? g[i] : at::ones({p.weight.size(1)}, p.weight.options());
      const at::Tensor kept = kept_columns(layer_gates, p.weight.size(1)).to(p.weight.device());
      // A branch the plan removes entirely has nothing to refit; one that keeps every input has nothing to
      // reconstruct (its solution is the dense projection again), and refitting it would only undo its scales.
      if (kept.numel() == 0 || kept.numel() == p.weight.size(1)) continue;
      int64_t tokens = 0;
      at::Tensor gram = gram_of(model, gates, stream, i, kind, tokens);
      comm.all_reduce(gram, Communicator::Op::sum);
      at::Tensor t = at::tensor({static_cast<double>(tokens)}, gram.options());
      comm.all_reduce(t, Communicator::Op::sum);
      at::Tensor solution = solve(p, gram, kept, ridge).contiguous();
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
    log::info("calibrate: reconstruct: layer " + std::to_string(i + 1) + "/" + std::to_string(layers) + " refitted");
  }
  return stats;
}

}  // namespace hawada
