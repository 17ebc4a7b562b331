#include "core/format/plan.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "core/base/errors.h"
#include "core/base/json_input.h"

namespace hawada {
namespace {

nlohmann::json candidate_json(const Candidate& c) {
  return {{"layers", c.shape.layers},
          {"hidden_size", c.shape.hidden},
          {"num_attention_heads", c.shape.heads},
          {"num_key_value_heads", c.shape.kv_heads},
          {"head_dim", c.shape.head_dim},
          {"intermediate_size", c.shape.ffn},
          {"parameters", c.parameters},
          {"flops", c.flops},
          {"latency_s", c.latency_s},
          {"cost_ratio", c.cost_ratio},
          {"importance", c.importance}};
}

// The plan's "dense" entry, checked against the model's dense shape (hidden, FFN and query heads).
Candidate dense_candidate(const nlohmann::json& d, const ModelShape& dense, const std::string& file) {
  Candidate c;
  c.shape = dense;
  c.parameters = d.at("parameters").get<double>();
  c.flops = d.at("flops").get<double>();
  c.latency_s = d.at("latency_s").get<double>();
  c.cost_ratio = 1.0;
  c.importance = 1.0;
  if (json_int(d.at("hidden_size")) != dense.hidden || json_int(d.at("intermediate_size")) != dense.ffn ||
      json_int(d.at("num_attention_heads")) != dense.heads)
    throw CheckpointError("'" + file + "': the plan was made for another model (its dense shape differs)");
  return c;
}

// The plan's "shape" entry: the chosen counts on top of the dense shape, and their costs.
Candidate chosen_candidate(const nlohmann::json& s, const ModelShape& dense) {
  Candidate c;
  c.shape = dense;
  c.shape.hidden = json_int(s.at("hidden_size"));
  c.shape.heads = json_int(s.at("num_attention_heads"));
  c.shape.kv_heads = json_int(s.at("num_key_value_heads"));
  c.shape.ffn = json_int(s.at("intermediate_size"));
  c.parameters = s.at("parameters").get<double>();
  c.flops = s.at("flops").get<double>();
  c.latency_s = s.at("latency_s").get<double>();
  c.cost_ratio = s.at("cost_ratio").get<double>();
  c.importance = s.at("importance").get<double>();
  c.shape.layers = json_int(s.at("layers"));
  return c;
}

// Throws unless v (named `what` in the message) holds n sorted, distinct indices in [0, bound).
void check_indices(const std::vector<int64_t>& v, int64_t n, int64_t bound, const std::string& what,
                   const std::string& file) {
  if (static_cast<int64_t>(v.size()) != n || !std::is_sorted(v.begin(), v.end()) ||
      std::adjacent_find(v.begin(), v.end()) != v.end() || (!v.empty() && (v.front() < 0 || v.back() >= bound)))
    throw CheckpointError("'" + file + "': " + what + " must be " + std::to_string(n) + " distinct indices in [0, " +
                          std::to_string(bound) + ")");
}

// Checks one layer's query heads against the chosen shape and its kept kv heads; `at` is "layers[l].".
void check_query_heads(const std::vector<int64_t>& heads, const std::vector<int64_t>& kv_heads, const ModelShape& shape,
                       const ModelShape& dense, const std::string& at, const std::string& file) {
  // Query heads: distinct, in range, and (kv groups) the same number from each kept kv group.
  std::vector<int64_t> sorted = heads;
  std::sort(sorted.begin(), sorted.end());
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end() ||
      (!sorted.empty() && (sorted.front() < 0 || sorted.back() >= dense.heads)))
    throw CheckpointError("'" + file + "': " + at + "heads must be " + std::to_string(shape.heads) +
                          " distinct indices in [0, " + std::to_string(dense.heads) + ")");
  if (dense.traits.kv_groups && dense.kv_heads > 0 && shape.kv_heads > 0) {
    const int64_t q = dense.heads / dense.kv_heads, per = shape.heads / shape.kv_heads;
    for (int64_t g : kv_heads) {
      const auto n = std::count_if(sorted.begin(), sorted.end(), [&](int64_t h) { return h / q == g; });
      if (n != per)
        throw CheckpointError("'" + file + "': " + at + "heads holds " + std::to_string(n) +
                              " query heads of kv group " + std::to_string(g) + ", the shape needs " +
                              std::to_string(per) + " from each kept group");
    }
  }
}

// The plan's per-layer kept heads, kv heads and FFN channels into p, checked against p.chosen and the dense model.
void read_layers(const nlohmann::json& layers, const ModelShape& dense, const std::string& file, Plan& p) {
  if (static_cast<int64_t>(layers.size()) != dense.layers)
    throw CheckpointError("'" + file + "': " + std::to_string(layers.size()) + " layers, the model has " +
                          std::to_string(dense.layers));
  for (size_t l = 0; l < layers.size(); ++l) {
    p.heads.push_back(json_ints(layers[l].at("heads")));
    p.kv_heads.push_back(json_ints(layers[l].at("kv_heads")));
    p.ffn.push_back(json_ints(layers[l].at("ffn")));
    const std::string at = "layers[" + std::to_string(l) + "].";
    if (static_cast<int64_t>(p.heads.back().size()) != p.chosen.shape.heads)
      throw CheckpointError("'" + file + "': " + at + "heads has " + std::to_string(p.heads.back().size()) +
                            " entries, the shape says " + std::to_string(p.chosen.shape.heads));
    if (dense.traits.kv_groups)
      check_indices(p.kv_heads.back(), p.chosen.shape.kv_heads, dense.kv_heads, at + "kv_heads", file);
    check_indices(p.ffn.back(), p.chosen.shape.ffn, dense.ffn, at + "ffn", file);
    check_query_heads(p.heads.back(), p.kv_heads.back(), p.chosen.shape, dense, at, file);
  }
}

}  // namespace

std::string transformers_violation(const ModelShape& s, const ModelShape& dense) {
  if (s.layers != dense.layers && !dense.traits.drop_layers)
    return "num_hidden_layers changed (this architecture keeps every block)";
  if (s.layers < 1 || s.layers > dense.layers) return "num_hidden_layers outside [1, the dense model's]";
  if (s.head_dim != dense.head_dim) return "head_dim changed (RoPE / head size must stay)";
  if (s.heads < 1 || s.kv_heads < 1 || s.hidden < 1 || s.ffn < 1) return "a count below 1";
  if (s.heads > dense.heads || s.kv_heads > dense.kv_heads || s.hidden > dense.hidden || s.ffn > dense.ffn)
    return "a count above the dense model's";
  const ShapeTraits& t = dense.traits;
  if (t.hidden_multiple_of_heads && s.hidden % s.heads != 0) return "hidden_size % num_attention_heads != 0";
  if (t.hidden_is_heads && s.hidden != s.heads * s.head_dim) return "hidden_size != num_attention_heads x head size";
  if (t.kv_groups && s.heads % s.kv_heads != 0) return "num_attention_heads % num_key_value_heads != 0";
  if (!t.kv_groups && s.kv_heads != s.heads) return "num_key_value_heads != num_attention_heads (no kv groups)";
  if (t.rope && s.head_dim % 2 != 0) return "odd head_dim (RoPE)";
  return {};
}

nlohmann::json plan_to_json(const Plan& p) {
  nlohmann::json layers = nlohmann::json::array();
  for (size_t l = 0; l < p.heads.size(); ++l)
    layers.push_back({{"heads", p.heads[l]}, {"kv_heads", p.kv_heads[l]}, {"ffn", p.ffn[l]}});
  return {{"format_version", 1},
          {"metric", p.metric},
          {"target", p.target},
          {"shape", candidate_json(p.chosen)},
          {"dense", candidate_json(p.dense)},
          {"layers", layers},
          {"kept_layers", p.layers},
          {"hidden", p.hidden}};
}

Plan plan_from_json(const nlohmann::json& j, const ModelShape& dense, const std::string& file) {
  try {
    Plan p;
    if (json_int(j.at("format_version")) != 1) throw CheckpointError("'" + file + "': unknown plan format_version");
    p.metric = j.at("metric").get<std::string>();
    p.target = j.at("target").get<double>();
    const auto& d = j.at("dense");
    p.dense = dense_candidate(d, dense, file);
    const auto& s = j.at("shape");
    p.chosen = chosen_candidate(s, dense);
    if (json_int(d.at("layers")) != dense.layers || json_int(s.at("head_dim")) != dense.head_dim)
      throw CheckpointError("'" + file + "': the plan was made for another model (layers or head_dim differ)");
    const std::string why = transformers_violation(p.chosen.shape, dense);
    if (!why.empty())
      throw CheckpointError("'" + file + "': the planned shape is not loadable by transformers: " + why);
    read_layers(j.at("layers"), dense, file, p);
    p.hidden = json_ints(j.at("hidden"));
    check_indices(p.hidden, p.chosen.shape.hidden, dense.hidden, "hidden", file);
    // Plans written before layer gates keep every layer.
    if (j.contains("kept_layers")) {
      p.layers = json_ints(j.at("kept_layers"));
    } else {
      for (int64_t l = 0; l < dense.layers; ++l) p.layers.push_back(l);
    }
    check_indices(p.layers, p.chosen.shape.layers, dense.layers, "kept_layers", file);
    return p;
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError("'" + file + "': malformed plan: " + e.what());
  }
}

}  // namespace hawada
