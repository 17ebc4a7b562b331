#include "pipeline/tools/profile.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <set>

#include <nlohmann/json.hpp>

#include "adapters/adapter.h"
#include "core/base/errors.h"
#include "core/base/fs.h"
#include "core/base/log.h"
#include "core/dist/device.h"
#include "core/io/checkpoint.h"
#include "core/prune/shape_search.h"

namespace hawada {
namespace {

// Median seconds of fn() over `repeats` runs after one warm-up; item() waits for the device.
template <class F>
double time_median(F fn, int repeats) {
  fn().sum().template item<float>();
  std::vector<double> t;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    fn().sum().template item<float>();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// What every timed block runs on: B samples of T tokens (a decode step against a KV cache of C tokens when C > 0).
struct Bench {
  int64_t B, T, C, head_dim;
  at::TensorOptions opts;
  const ShapeTraits& traits;
  int repeats;
};

// The distinct attention (hidden, heads, kv heads), MLP (hidden, FFN) and hidden widths of the legal shapes.
struct Blocks {
  std::set<std::tuple<int64_t, int64_t, int64_t>> attention;
  std::set<std::pair<int64_t, int64_t>> mlp;
  std::set<int64_t> hidden;
};

// The shape search's rules, from the command's options.
SearchRules search_rules(const ProfileOptions& o, const ShapeTraits& traits) {
  SearchRules rules;
  rules.ffn_multiple = o.ffn_multiple;
  rules.hidden_multiple = o.hidden_multiple;
  rules.prune_kv_groups = o.prune_kv_groups;
  rules.hidden = traits.hidden_is_heads || o.hidden;
  return rules;
}

// The blocks to time: those of every legal shape of the dense model under `rules`.
Blocks distinct_blocks(const ModelShape& dense, const SearchRules& rules) {
  Blocks b;
  for (const ModelShape& s : legal_shapes(dense, rules)) {
    b.attention.insert({s.hidden, s.heads, s.kv_heads});
    b.mlp.insert({s.hidden, s.ffn});
    b.hidden.insert(s.hidden);
  }
  return b;
}

// table.attention: the median time of each attention block (projections, attention, output projection).
void time_attention(LatencyTable& table, const std::set<std::tuple<int64_t, int64_t, int64_t>>& attention,
                    const Bench& b) {
  const int64_t B = b.B, T = b.T, C = b.C, hd = b.head_dim;
  const auto& opts = b.opts;
  const ShapeTraits& traits = b.traits;
  for (const auto& [h, n, k] : attention) {
    const at::Tensor x = at::randn({B, T, h}, opts), wq = at::randn({n * hd, h}, opts) * 0.02,
                     wk = at::randn({k * hd, h}, opts) * 0.02, wv = at::randn({k * hd, h}, opts) * 0.02,
                     wo = at::randn({h, n * hd}, opts) * 0.02;
    // A decode step appends its key and value to a KV cache of C tokens and attends to all of them.
    const at::Tensor cache_k = C > 0 ? at::randn({B, k, C, hd}, opts) : at::Tensor();
    const at::Tensor cache_v = C > 0 ? at::randn({B, k, C, hd}, opts) : at::Tensor();
    table.attention[{h, n, k}] = time_median(
        [&] {
          const at::Tensor q = at::linear(x, wq).view({B, T, n, hd}).transpose(1, 2);
          at::Tensor kk = at::linear(x, wk).view({B, T, k, hd}).transpose(1, 2);
          at::Tensor v = at::linear(x, wv).view({B, T, k, hd}).transpose(1, 2);
          if (C > 0) kk = at::cat({cache_k, kk}, 2), v = at::cat({cache_v, v}, 2);
          const at::Tensor a = at::scaled_dot_product_attention(q, kk, v, std::nullopt, 0.0,
                                                                /*is_causal=*/traits.causal && C == 0, std::nullopt,
                                                                /*enable_gqa=*/n != k);
          return at::linear(a.transpose(1, 2).reshape({B, T, n * hd}), wo);
        },
        b.repeats);
  }
}

// table.mlp: the median time of each MLP block (gated unless the architecture has two matrices).
void time_mlp(LatencyTable& table, const std::set<std::pair<int64_t, int64_t>>& mlp, const Bench& b) {
  const int64_t B = b.B, T = b.T;
  const auto& opts = b.opts;
  const ShapeTraits& traits = b.traits;
  for (const auto& [h, f] : mlp) {
    const at::Tensor x = at::randn({B, T, h}, opts), w1 = at::randn({f, h}, opts) * 0.02,
                     w2 = at::randn({f, h}, opts) * 0.02, w3 = at::randn({h, f}, opts) * 0.02;
    table.mlp[{h, f}] = time_median(
        [&] {
          if (traits.mlp_matrices == 2) return at::linear(at::gelu(at::linear(x, w1)), w3);
          return at::linear(at::silu(at::linear(x, w1)) * at::linear(x, w2), w3);
        },
        b.repeats);
  }
}

// table.other: the median time of the products outside the layers at each hidden width (0 when there are none).
void time_outer_products(LatencyTable& table, const std::set<int64_t>& hidden, const Bench& b) {
  const int64_t B = b.B, T = b.T;
  const auto& opts = b.opts;
  const ShapeTraits& traits = b.traits;
  for (int64_t h : hidden) {
    // The matrix products outside the layers (LM head, patch embedding, classifier, ...), one after another.
    std::vector<std::pair<at::Tensor, at::Tensor>> products;
    for (const auto* list : {&traits.before, &traits.after})
      for (const OuterProduct& p : *list) {
        const auto rows = static_cast<int64_t>(p.rows_per_token * static_cast<double>(B * T) +
                                               p.rows_per_sample * static_cast<double>(B));
        const int64_t in = p.in == 0 ? h : p.in, outw = p.out == 0 ? h : p.out;
        products.emplace_back(at::randn({std::max<int64_t>(rows, 1), in}, opts), at::randn({outw, in}, opts) * 0.02);
      }
    if (products.empty()) {
      table.other[h] = 0;
      continue;
    }
    table.other[h] = time_median(
        [&] {
          at::Tensor sum = at::zeros({}, opts);
          for (const auto& [x, w] : products) sum = sum + at::linear(x, w).sum();
          return sum;
        },
        b.repeats);
  }
}

}  // namespace

void profile_command(const std::filesystem::path& model_dir, const std::filesystem::path& out,
                     const ProfileOptions& o) {
  const HfCheckpoint ckpt = HfCheckpoint::open(model_dir);
  const auto config_file = model_dir / "config.json";
  const ArchSummary arch = adapter_for(ckpt.config(), config_file).summarize_checkpoint(ckpt);
  const ModelShape dense = model_shape(arch);
  const ShapeTraits& traits = dense.traits;
  const at::Device device = pick_device(DeviceRequest::auto_, 0);
  const std::string dtype_name = !o.dtype.empty() ? o.dtype : device.is_cuda() ? "bf16" : "fp32";
  if (dtype_name != "bf16" && dtype_name != "fp32")
    throw UsageError("--dtype must be bf16 or fp32, got '" + dtype_name + "'");
  const auto opts = at::TensorOptions().device(device).dtype(dtype_name == "bf16" ? at::kBFloat16 : at::kFloat);
  const int64_t C = o.decode_context;
  if (C > 0 && !traits.causal) throw UsageError("--decode needs a causal language model");
  const int64_t B = o.batch;
  const int64_t T = C > 0 ? 1 : o.tokens > 0 ? o.tokens : traits.tokens_per_sample > 0 ? traits.tokens_per_sample : 512;

  const Blocks blocks = distinct_blocks(dense, search_rules(o, traits));
  log::info("profile: " + std::to_string(blocks.attention.size()) + " attention, " + std::to_string(blocks.mlp.size()) +
            " MLP and " + std::to_string(blocks.hidden.size()) + " head widths on " + device.str() + " (" + dtype_name +
            "), batch " + std::to_string(B) + " x " + std::to_string(T) + " tokens" +
            (C > 0 ? " (a decode step against a KV cache of " + std::to_string(C) + " tokens)" : std::string()));

  at::NoGradGuard no_grad;
  const Bench bench{B, T, C, dense.head_dim, opts, traits, o.repeats};
  LatencyTable table;
  table.device = device.is_cuda() ? "cuda" : "cpu";
  table.dtype = dtype_name;
  table.batch = B;
  table.tokens = T;
  table.context = C;
  const auto t0 = std::chrono::steady_clock::now();
  time_attention(table, blocks.attention, bench);
  time_mlp(table, blocks.mlp, bench);
  time_outer_products(table, blocks.hidden, bench);
  atomic_write_text(out, latency_table_to_json(table).dump(1) + "\n");
  log::info("profile: " + out.string() + " written in " +
            std::to_string(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()).substr(0, 6) +
            " s");
}

}  // namespace hawada
