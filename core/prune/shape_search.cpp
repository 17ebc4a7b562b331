#include "core/prune/shape_search.h"

#include <algorithm>
#include <map>
#include <numeric>
#include <tuple>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/base/errors.h"
#include "core/base/hash.h"
#include "core/base/json_input.h"

namespace hawada {
namespace {

// Indices of the n largest values (ties: lower index first), returned in ascending index order.
std::vector<int64_t> top_indices(const std::vector<double>& v, int64_t n) {
  std::vector<int64_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return v[a] > v[b]; });
  idx.resize(static_cast<size_t>(std::min<int64_t>(n, static_cast<int64_t>(v.size()))));
  std::sort(idx.begin(), idx.end());
  return idx;
}

// Prefix sums of the values sorted in descending order: prefix[k] = sum of the k largest.
std::vector<double> sorted_prefix(std::vector<double> v) {
  std::sort(v.begin(), v.end(), std::greater<>());
  std::vector<double> p(v.size() + 1, 0.0);
  for (size_t i = 0; i < v.size(); ++i) p[i + 1] = p[i] + v[i];
  return p;
}

// Widths a kind may take: multiples of `multiple` up to dense, and dense itself.
std::vector<int64_t> widths(int64_t dense, int64_t multiple, bool gated) {
  if (!gated) return {dense};
  std::vector<int64_t> w;
  for (int64_t k = multiple; k < dense; k += multiple) w.push_back(k);
  w.push_back(dense);
  return w;
}

// Query heads per kv group; without kv groups every head is its own group.
bool grouped(const ModelShape& s) { return s.traits.kv_groups; }
int64_t group_size(const ModelShape& s) { return grouped(s) ? s.heads / s.kv_heads : 1; }
int64_t groups(const ModelShape& s) { return grouped(s) ? s.kv_heads : s.heads; }

// Kept-importance evaluation of counts, from sorted prefix sums computed once.
class Importance {
 public:
  Importance(const ModelShape& dense, const StructureScores& s) : dense_(dense) {
    if (!s.heads.empty()) {
      const int64_t g = groups(dense), q = group_size(dense);
      for (const auto& layer : s.heads) {
        std::vector<std::vector<double>> per_group;
        for (int64_t k = 0; k < g; ++k)
          per_group.push_back(sorted_prefix(std::vector<double>(layer.begin() + k * q, layer.begin() + (k + 1) * q)));
        head_prefix_.push_back(std::move(per_group));
        head_total_ += std::accumulate(layer.begin(), layer.end(), 0.0);
        head_count_ += static_cast<double>(layer.size());
      }
    }
    for (const auto& layer : s.ffn) {
      ffn_prefix_.push_back(sorted_prefix(layer));
      ffn_total_ += ffn_prefix_.back().back();
      ffn_count_ += static_cast<double>(layer.size());
    }
    if (!s.hidden.empty()) hidden_prefix_ = sorted_prefix(s.hidden);
    if (!s.layers.empty()) layer_prefix_ = sorted_prefix(s.layers);
  }

  // A block that goes takes its heads and channels with it: the kept fraction of the layer scores times
  // the widths' kept importance.
  double operator()(int64_t layers, int64_t kv, int64_t per_group, int64_t ffn, int64_t hidden) const {
    const double width = width_importance(kv, per_group, ffn, hidden);
    if (layer_prefix_.empty()) return width;
    const double total = layer_prefix_.back();
    const double kept = total > 0 ? layer_prefix_[static_cast<size_t>(layers)] / total
                                  : static_cast<double>(layers) / static_cast<double>(dense_.layers);
    return kept * width;
  }

 private:
  double width_importance(int64_t kv, int64_t per_group, int64_t ffn, int64_t hidden) const {
    double sum = 0;
    int kinds = 0;
    if (!head_prefix_.empty()) {
      double kept = 0;
      for (const auto& layer : head_prefix_) {
        std::vector<double> value;
        for (const auto& g : layer) value.push_back(g[static_cast<size_t>(per_group)]);
        std::sort(value.begin(), value.end(), std::greater<>());
        kept += std::accumulate(value.begin(), value.begin() + kv, 0.0);
      }
      sum += head_total_ > 0 ? kept / head_total_ : static_cast<double>(kv * per_group * dense_.layers) / head_count_;
      ++kinds;
    }
    if (!ffn_prefix_.empty()) {
      double kept = 0;
      for (const auto& p : ffn_prefix_) kept += p[static_cast<size_t>(ffn)];
      sum += ffn_total_ > 0 ? kept / ffn_total_ : static_cast<double>(ffn * dense_.layers) / ffn_count_;
      ++kinds;
    }
    if (!hidden_prefix_.empty()) {
      const double total = hidden_prefix_.back();
      sum += total > 0 ? hidden_prefix_[static_cast<size_t>(hidden)] / total
                       : static_cast<double>(hidden) / static_cast<double>(dense_.hidden);
      ++kinds;
    }
    return kinds ? sum / kinds : 1.0;
  }

  ModelShape dense_;
  std::vector<std::vector<std::vector<double>>> head_prefix_;
  std::vector<std::vector<double>> ffn_prefix_;
  std::vector<double> hidden_prefix_, layer_prefix_;
  double head_total_ = 0, head_count_ = 0, ffn_total_ = 0, ffn_count_ = 0;
};

Candidate price(const ModelShape& s, const CostSpec& cost) {
  Candidate c;
  c.shape = s;
  c.parameters = static_cast<double>(parameter_count(s));
  c.flops = forward_cost(s, cost.batch, cost.tokens).flops;
  c.latency_s =
      cost.table ? cost.table->latency(s) : latency_seconds(s, cost.batch, cost.tokens, cost.rates, 2, cost.context);
  return c;
}

std::string ratio_text(double v) { return fmt::format("{:.4f}", v); }

// What the budget counts of a priced shape.
double metric_cost(const Candidate& c, const CostSpec& cost) {
  switch (cost.metric) {
    case BudgetMetric::params:
      return c.parameters;
    case BudgetMetric::non_embedding_params:
      return static_cast<double>(parameter_count(c.shape, ParameterScope::non_embedding));
    case BudgetMetric::latency:
      return c.latency_s;
  }
  return c.parameters;
}

}  // namespace

double LatencyTable::latency(const ModelShape& s) const {
  auto missing = [&](const std::string& what) {
    return ConfigError("latency table '" + file + "' has no " + what +
                       "; profile again with this config's [search] multiples (hawada-pipeline profile)");
  };
  const auto a = attention.find({s.hidden, s.heads, s.kv_heads});
  if (a == attention.end())
    throw missing("attention block at hidden " + std::to_string(s.hidden) + ", " + std::to_string(s.heads) +
                  " heads, " + std::to_string(s.kv_heads) + " kv heads");
  const auto m = mlp.find({s.hidden, s.ffn});
  if (m == mlp.end())
    throw missing("MLP block at hidden " + std::to_string(s.hidden) + ", FFN " + std::to_string(s.ffn));
  const auto o = other.find(s.hidden);
  if (o == other.end()) throw missing("head/embedding timing at hidden " + std::to_string(s.hidden));
  return static_cast<double>(s.layers) * (a->second + m->second) + o->second;
}

nlohmann::json latency_table_to_json(const LatencyTable& t) {
  nlohmann::json att = nlohmann::json::array(), mlp = nlohmann::json::array(), other = nlohmann::json::array();
  for (const auto& [k, v] : t.attention)
    att.push_back(
        {{"hidden", std::get<0>(k)}, {"heads", std::get<1>(k)}, {"kv_heads", std::get<2>(k)}, {"seconds", v}});
  for (const auto& [k, v] : t.mlp) mlp.push_back({{"hidden", k.first}, {"ffn", k.second}, {"seconds", v}});
  for (const auto& [k, v] : t.other) other.push_back({{"hidden", k}, {"seconds", v}});
  nlohmann::json j = {{"format_version", 1}, {"device", t.device}, {"dtype", t.dtype},
                      {"batch", t.batch},    {"tokens", t.tokens}, {"context", t.context},
                      {"attention", att},    {"mlp", mlp},         {"other", other}};
  Hasher h;  // of everything above: a flipped bit in a timing is found when the table is read
  h.update(j.dump());
  j["xxh64"] = hex64(h.digest());
  return j;
}

LatencyTable latency_table_from_json(const nlohmann::json& j, const std::string& file) {
  try {
    LatencyTable t;
    t.file = file;
    if (json_int(j.at("format_version")) != 1) throw CheckpointError("'" + file + "': unknown format_version");
    t.device = j.at("device").get<std::string>();
    t.dtype = j.at("dtype").get<std::string>();
    t.batch = json_int(j.at("batch"));
    t.tokens = json_int(j.at("tokens"));
    t.context = j.contains("context") ? json_int(j.at("context")) : 0;  // tables before decode: prefill
    for (const auto& e : j.at("attention"))
      t.attention[{json_int(e.at("hidden")), json_int(e.at("heads")), json_int(e.at("kv_heads"))}] =
          e.at("seconds").get<double>();
    for (const auto& e : j.at("mlp"))
      t.mlp[{json_int(e.at("hidden")), json_int(e.at("ffn"))}] = e.at("seconds").get<double>();
    for (const auto& e : j.at("other")) t.other[json_int(e.at("hidden"))] = e.at("seconds").get<double>();
    if (j.contains("xxh64") && j["xxh64"] != latency_table_to_json(t)["xxh64"])  // tables before it: unchecked
      throw CheckpointError("'" + file +
                            "': the latency table does not match the checksum written with it (a "
                            "flipped bit, a torn write or a hand edit; to use an edited table on purpose, delete its "
                            "\"xxh64\" key)");
    return t;
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError("'" + file + "': malformed latency table: " + e.what());
  }
}

std::vector<ModelShape> legal_shapes(const ModelShape& dense, const SearchRules& r) {
  std::vector<ModelShape> out;
  const int64_t g = groups(dense), q = group_size(dense);
  std::vector<int64_t> kv_options, q_options;
  if (r.heads) {
    // A kv group of one head (kv heads == heads) goes with its head, whatever prune_kv_groups says.
    for (int64_t k = (!grouped(dense) || r.prune_kv_groups || q == 1) ? 1 : g; k <= g; ++k) kv_options.push_back(k);
    for (int64_t k = 1; k <= q; ++k) q_options.push_back(k);
  } else {
    kv_options = {g};
    q_options = {q};
  }
  const std::vector<int64_t> ffn_options = widths(dense.ffn, r.ffn_multiple, r.ffn);
  std::vector<int64_t> layer_options{dense.layers};
  if (r.layers && dense.traits.drop_layers)
    for (int64_t l = dense.layers - 1; l >= 1; --l) layer_options.push_back(l);
  for (int64_t layers : layer_options)
    for (int64_t kv : kv_options)
      for (int64_t per : q_options) {
        const int64_t heads = kv * per;
        std::vector<int64_t> hidden_options;
        if (dense.traits.hidden_is_heads) {
          // Coupled: hidden = heads x head size.
          const int64_t h = heads * dense.head_dim;
          if (h == dense.hidden || h % r.hidden_multiple == 0) hidden_options = {h};
        } else {
          hidden_options = widths(dense.hidden, r.hidden_multiple, r.hidden);
        }
        for (int64_t hidden : hidden_options)
          for (int64_t ffn : ffn_options) {
            ModelShape s = dense;
            s.layers = layers;
            s.heads = heads;
            s.kv_heads = grouped(dense) ? kv : heads;
            s.hidden = hidden;
            s.ffn = ffn;
            if (transformers_violation(s, dense).empty()) out.push_back(s);
          }
      }
  return out;
}

SearchResult search_shape(const ModelShape& dense, const StructureScores& scores, const SearchRules& rules,
                          const CostSpec& cost) {
  const Importance importance(dense, scores);
  SearchResult result;
  Candidate dense_c = price(dense, cost);
  const double dense_cost = metric_cost(dense_c, cost);
  dense_c.cost_ratio = 1.0;
  dense_c.importance = 1.0;

  std::vector<Candidate> all;
  for (const ModelShape& s : legal_shapes(dense, rules)) {
    Candidate c = price(s, cost);
    c.cost_ratio = metric_cost(c, cost) / dense_cost;
    const int64_t kv = grouped(dense) ? s.kv_heads : s.heads;
    c.importance = importance(s.layers, kv, s.heads / kv, s.ffn, s.hidden);
    all.push_back(c);
  }
  result.legal = all.size();
  std::sort(all.begin(), all.end(), [](const Candidate& a, const Candidate& b) {
    return a.cost_ratio != b.cost_ratio ? a.cost_ratio < b.cost_ratio : a.importance > b.importance;
  });
  for (const Candidate& c : all)
    if (result.pareto.empty() || c.importance > result.pareto.back().importance) result.pareto.push_back(c);

  const Candidate* best = nullptr;
  for (const Candidate& c : result.pareto)
    if (c.cost_ratio <= cost.target * (1 + 1e-12)) best = &c;  // the front is sorted: the last one fitting wins
  if (!best)
    throw ConfigError("budget.target = " + ratio_text(cost.target) + " (" + metric_name(cost.metric) +
                      ") is below every legal shape: the smallest reachable cost is " +
                      ratio_text(all.empty() ? 1.0 : all.front().cost_ratio) + " of the dense model (" +
                      std::to_string(result.legal) + " legal shapes under [search])");

  // The widest fitting shape per (layers, hidden, heads, kv heads), by importance; then ranked so that
  // each layer count's best comes before any layer count's second best.
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t>, Candidate> widest;
  for (const Candidate& c : all) {
    if (c.cost_ratio > cost.target * (1 + 1e-12)) continue;
    const auto key = std::make_tuple(c.shape.layers, c.shape.hidden, c.shape.heads, c.shape.kv_heads);
    auto it = widest.find(key);
    if (it == widest.end() || c.importance > it->second.importance) widest[key] = c;
  }
  std::vector<Candidate> by_importance;
  for (const auto& [key, c] : widest) by_importance.push_back(c);
  std::stable_sort(by_importance.begin(), by_importance.end(),
                   [](const Candidate& a, const Candidate& b) { return a.importance > b.importance; });
  std::map<int64_t, int> rank_in_depth;
  std::vector<std::pair<int, size_t>> order;  // (rank within its layer count, position by importance)
  for (size_t i = 0; i < by_importance.size(); ++i)
    order.push_back({rank_in_depth[by_importance[i].shape.layers]++, i});
  std::stable_sort(order.begin(), order.end());
  for (const auto& [rank, i] : order) result.widest.push_back(by_importance[i]);
  result.plan = plan_for(dense, scores, *best, cost, dense_c);
  return result;
}

Plan plan_for(const ModelShape& dense, const StructureScores& scores, const Candidate& chosen, const CostSpec& cost,
              const Candidate& dense_c) {
  Plan p;
  p.chosen = chosen;
  p.dense = dense_c;
  p.metric = metric_name(cost.metric);
  p.target = cost.target;
  const ModelShape& s = chosen.shape;
  const int64_t kv = grouped(dense) ? s.kv_heads : s.heads, per = s.heads / kv, q = group_size(dense);
  for (int64_t l = 0; l < dense.layers; ++l) {
    std::vector<int64_t> heads, kv_heads;
    if (scores.heads.empty()) {
      for (int64_t h = 0; h < dense.heads; ++h) heads.push_back(h);
      for (int64_t k = 0; k < dense.kv_heads && grouped(dense); ++k) kv_heads.push_back(k);
    } else {
      const auto& layer = scores.heads[static_cast<size_t>(l)];
      std::vector<double> group_value;
      std::vector<std::vector<int64_t>> group_heads;
      for (int64_t g = 0; g < groups(dense); ++g) {
        const std::vector<double> in(layer.begin() + g * q, layer.begin() + (g + 1) * q);
        std::vector<int64_t> top = top_indices(in, per);
        double v = 0;
        for (int64_t& i : top) v += in[static_cast<size_t>(i)], i += g * q;
        group_value.push_back(v);
        group_heads.push_back(top);
      }
      for (int64_t g : top_indices(group_value, kv)) {
        heads.insert(heads.end(), group_heads[static_cast<size_t>(g)].begin(),
                     group_heads[static_cast<size_t>(g)].end());
        if (grouped(dense)) kv_heads.push_back(g);
      }
    }
    p.heads.push_back(heads);
    p.kv_heads.push_back(kv_heads);
    std::vector<int64_t> ffn;
    if (scores.ffn.empty())
      for (int64_t c = 0; c < dense.ffn; ++c) ffn.push_back(c);
    else
      ffn = top_indices(scores.ffn[static_cast<size_t>(l)], s.ffn);
    p.ffn.push_back(ffn);
  }
  if (scores.hidden.empty()) {
    for (int64_t c = 0; c < s.hidden; ++c) p.hidden.push_back(c);
  } else {
    p.hidden = top_indices(scores.hidden, s.hidden);
  }
  if (scores.layers.empty()) {
    HAWADA_ASSERT(s.layers == dense.layers, "a shape without every layer needs layer scores");
    for (int64_t l = 0; l < dense.layers; ++l) p.layers.push_back(l);
  } else {
    p.layers = top_indices(scores.layers, s.layers);
  }
  return p;
}

}  // namespace hawada
