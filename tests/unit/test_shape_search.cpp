// The rounding search: legal shapes only (a property test over random models, rules, scores and
// budgets), the budget met, the highest scores kept, the plan round-trips through JSON, and an
// unreachable budget names the smallest reachable cost.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "adapters/adapter.h"
#include "core/base/errors.h"
#include "core/prune/shape_search.h"

namespace hawada {
namespace {

// Shapes as the adapters describe them from a config.json (their traits included).
ModelShape llama(int64_t layers, int64_t hidden, int64_t heads, int64_t kv, int64_t ffn) {
  const nlohmann::json c = {{"model_type", "llama"},        {"num_hidden_layers", layers}, {"hidden_size", hidden},
                            {"num_attention_heads", heads}, {"num_key_value_heads", kv},   {"intermediate_size", ffn},
                            {"vocab_size", 1000},           {"tie_word_embeddings", true}};
  return model_shape(adapter_for(c, "config.json").summarize(c, "config.json"));
}

ModelShape vit(int64_t layers, int64_t heads, int64_t head_size, int64_t ffn) {
  const nlohmann::json c = {{"model_type", "vit"},
                            {"architectures", {"ViTForImageClassification"}},
                            {"num_hidden_layers", layers},
                            {"hidden_size", heads * head_size},
                            {"num_attention_heads", heads},
                            {"intermediate_size", ffn},
                            {"num_labels", 10},
                            {"image_size", 32},
                            {"patch_size", 8}};
  return model_shape(adapter_for(c, "config.json").summarize(c, "config.json"));
}

StructureScores random_scores(const ModelShape& s, const SearchRules& r, std::mt19937& rng) {
  std::uniform_real_distribution<double> u(0, 1);
  StructureScores sc;
  for (int64_t l = 0; l < s.layers; ++l) {
    if (r.heads)
      sc.heads.emplace_back(s.heads),
          std::generate(sc.heads.back().begin(), sc.heads.back().end(), [&] { return u(rng); });
    if (r.ffn)
      sc.ffn.emplace_back(s.ffn), std::generate(sc.ffn.back().begin(), sc.ffn.back().end(), [&] { return u(rng); });
  }
  if (r.hidden) sc.hidden.resize(s.hidden), std::generate(sc.hidden.begin(), sc.hidden.end(), [&] { return u(rng); });
  if (r.layers) sc.layers.resize(s.layers), std::generate(sc.layers.begin(), sc.layers.end(), [&] { return u(rng); });
  return sc;
}

TEST(ShapeSearch, Llama1BAtFullHiddenAllowsOnly8_16_32Heads) {
  const ModelShape s = llama(16, 2048, 32, 8, 8192);
  SearchRules r;
  r.ffn = false;
  std::set<int64_t> heads;
  for (const ModelShape& c : legal_shapes(s, r)) heads.insert(c.heads);
  EXPECT_EQ(heads, (std::set<int64_t>{8, 16, 32}));
  // Hidden pruning opens other counts (hidden 1536 with 24 heads), and kv-group pruning others still.
  r.hidden = true;
  bool found = false;
  for (const ModelShape& c : legal_shapes(s, r)) found = found || (c.hidden == 1536 && c.heads == 24);
  EXPECT_TRUE(found);
}

TEST(ShapeSearch, RandomModelsBudgetsAndRulesNeverGiveAnIllegalPlan) {
  std::mt19937 rng(7);
  int plans = 0, unreachable = 0;
  for (int trial = 0; trial < 300; ++trial) {
    const bool is_vit = trial % 3 == 0;
    std::uniform_int_distribution<int> pick(0, 3);
    ModelShape s;
    if (is_vit) {
      const int64_t heads = std::vector<int64_t>{2, 4, 6, 12}[pick(rng)];
      s = vit(1 + pick(rng), heads, std::vector<int64_t>{8, 16, 32, 64}[pick(rng)], 32 * (1 + pick(rng)));
    } else {
      const int64_t kv = std::vector<int64_t>{1, 2, 4, 8}[pick(rng)];
      const int64_t heads = kv * std::vector<int64_t>{1, 2, 3, 4}[pick(rng)];
      const int64_t head_dim = std::vector<int64_t>{4, 8, 16, 64}[pick(rng)];
      s = llama(1 + pick(rng), heads * head_dim, heads, kv, 32 * (1 + pick(rng) * 3));
    }
    SearchRules r;
    r.heads = pick(rng) != 0, r.ffn = pick(rng) != 0, r.hidden = !is_vit && pick(rng) == 0;
    if (is_vit) r.hidden = r.heads;
    r.prune_kv_groups = pick(rng) == 0;
    r.layers = pick(rng) == 0;
    r.ffn_multiple = std::vector<int64_t>{8, 16, 32, 256}[pick(rng)];
    r.hidden_multiple = std::vector<int64_t>{8, 16, 32, 128}[pick(rng)];
    CostSpec cost;
    cost.metric = std::vector<BudgetMetric>{BudgetMetric::params, BudgetMetric::non_embedding_params,
                                            BudgetMetric::latency, BudgetMetric::latency}[pick(rng)];
    cost.target = std::uniform_real_distribution<double>(0.05, 1.0)(rng);
    cost.tokens = is_vit ? 17 : 64;
    if (!is_vit && pick(rng) == 0) cost.tokens = 1, cost.context = 64;  // a decode step
    cost.rates.layer_overhead_s = pick(rng) == 0 ? 1e-5 : 0.0;
    const StructureScores scores = random_scores(s, r, rng);
    SearchResult res;
    try {
      res = search_shape(s, scores, r, cost);
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("smallest reachable cost"), std::string::npos) << e.what();
      ++unreachable;
      continue;
    }
    ++plans;
    const Plan& p = res.plan;
    const ModelShape& c = p.chosen.shape;
    ASSERT_EQ(transformers_violation(c, s), "") << "trial " << trial;
    EXPECT_LE(p.chosen.cost_ratio, cost.target * (1 + 1e-12));
    if (cost.metric == BudgetMetric::non_embedding_params) {
      EXPECT_DOUBLE_EQ(p.chosen.cost_ratio, static_cast<double>(parameter_count(c, ParameterScope::non_embedding)) /
                                                static_cast<double>(parameter_count(s, ParameterScope::non_embedding)));
    }
    if (!r.heads) {
      EXPECT_EQ(c.heads, s.heads);
    }
    if (!r.ffn) {
      EXPECT_EQ(c.ffn, s.ffn);
    }
    if (r.ffn && c.ffn != s.ffn) {
      EXPECT_EQ(c.ffn % r.ffn_multiple, 0);
    }
    if (!is_vit && c.hidden != s.hidden) {
      EXPECT_EQ(c.hidden % r.hidden_multiple, 0);
    }
    if (!is_vit && !r.prune_kv_groups && s.kv_heads < s.heads) {  // single-head groups go with their heads
      EXPECT_EQ(c.kv_heads, s.kv_heads);
    }
    if (!r.layers) {
      EXPECT_EQ(c.layers, s.layers);
    }
    ASSERT_EQ(static_cast<int64_t>(p.layers.size()), c.layers);
    EXPECT_TRUE(std::is_sorted(p.layers.begin(), p.layers.end()));
    EXPECT_TRUE(std::adjacent_find(p.layers.begin(), p.layers.end()) == p.layers.end());
    EXPECT_GE(p.layers.front(), 0);
    EXPECT_LT(p.layers.back(), s.layers);
    // Kept indices agree with the shape; query heads come whole kv groups at a time, in group order.
    for (int64_t l = 0; l < s.layers; ++l) {
      const auto& h = p.heads[static_cast<size_t>(l)];
      ASSERT_EQ(static_cast<int64_t>(h.size()), c.heads);
      if (!is_vit) {
        const int64_t q = s.heads / s.kv_heads, per = c.heads / c.kv_heads;
        for (size_t j = 0; j < h.size(); ++j)
          EXPECT_EQ(h[j] / q, p.kv_heads[static_cast<size_t>(l)][j / static_cast<size_t>(per)]);
      }
      EXPECT_EQ(static_cast<int64_t>(p.ffn[static_cast<size_t>(l)].size()), c.ffn);
    }
    EXPECT_EQ(static_cast<int64_t>(p.hidden.size()), c.hidden);
    // The JSON form reads back to the same plan.
    const Plan back = plan_from_json(nlohmann::json::parse(plan_to_json(p).dump()), s, "plan.json");
    EXPECT_EQ(back.heads, p.heads);
    EXPECT_EQ(back.ffn, p.ffn);
    EXPECT_EQ(back.hidden, p.hidden);
    EXPECT_EQ(back.layers, p.layers);
    EXPECT_EQ(back.chosen.shape.heads, c.heads);
    EXPECT_EQ(back.chosen.shape.layers, c.layers);
  }
  EXPECT_GT(plans, 100);
  EXPECT_GT(unreachable, 0);
}

TEST(ShapeSearch, KeepsTheHighestScoresAndTheBestShapeWithinBudget) {
  const ModelShape s = llama(1, 64, 4, 2, 64);
  SearchRules r;
  r.heads = false;
  r.ffn_multiple = 16;
  StructureScores sc;
  sc.ffn.emplace_back(64, 0.0);
  for (int64_t c : {3, 9, 17, 40, 41, 42, 50, 63, 5, 6, 7, 8, 10, 11, 12, 13}) sc.ffn[0][static_cast<size_t>(c)] = 1.0;
  CostSpec cost;
  cost.target = 0.999;
  const SearchResult res = search_shape(s, sc, r, cost);
  // 16 channels hold every score: the search keeps exactly those and, as wider shapes keep no more
  // importance, takes the cheapest shape that keeps it all.
  EXPECT_EQ(res.plan.chosen.shape.ffn, 16);
  for (int64_t c : {3, 9, 17, 40, 41, 42, 50, 63, 5, 6, 7, 8, 10, 11, 12, 13})
    EXPECT_TRUE(std::binary_search(res.plan.ffn[0].begin(), res.plan.ffn[0].end(), c)) << c;
  EXPECT_DOUBLE_EQ(res.plan.chosen.importance, 1.0);
}

// Layer gates: the blocks with the lowest scores go, the rest keep their order; a budget that only
// depth can meet is met by depth; the probe order puts each layer count's best shape first.
TEST(ShapeSearch, LayerScoresChooseWhichBlocksGo) {
  const ModelShape s = llama(6, 64, 4, 2, 64);
  SearchRules r;
  r.heads = false, r.ffn = false, r.layers = true;
  StructureScores sc;
  sc.layers = {0.9, 0.01, 0.8, 0.7, 0.02, 0.95};
  CostSpec cost;
  cost.target = (static_cast<double>(parameter_count([&] {
                   ModelShape t = s;
                   t.layers = 4;
                   return t;
                 }())) +
                 1) /
                static_cast<double>(parameter_count(s));
  const SearchResult res = search_shape(s, sc, r, cost);
  EXPECT_EQ(res.plan.chosen.shape.layers, 4);
  EXPECT_EQ(res.plan.layers, (std::vector<int64_t>{0, 2, 3, 5}));
  EXPECT_EQ(transformers_violation(res.plan.chosen.shape, s), "");
  // Widths and depth together: the first probes are the best shape of distinct layer counts.
  r.ffn = true, r.ffn_multiple = 16;
  const SearchResult both = search_shape(s, sc, r, cost);
  ASSERT_GE(both.widest.size(), 2u);
  EXPECT_NE(both.widest[0].shape.layers, both.widest[1].shape.layers);
}

// An architecture that keeps every block (traits.drop_layers false) never gets a shallower shape, and a
// plan that asks for one is refused by name.
// Without grouped-query attention (kv heads == heads: Phi-3-mini, LLaMA-2-7B) each kv group is one head:
// removing a head removes its group, whatever search.prune_kv_groups says (else no head could go).
TEST(ShapeSearch, SingleHeadKvGroupsArePrunedAsHeads) {
  const ModelShape s = llama(2, 64, 4, 4, 64);
  SearchRules r;
  r.ffn = false;
  std::set<int64_t> heads;
  for (const ModelShape& c : legal_shapes(s, r)) {
    heads.insert(c.heads);
    EXPECT_EQ(c.kv_heads, c.heads);
  }
  EXPECT_EQ(heads, (std::set<int64_t>{1, 2, 4}));  // hidden 64 % heads == 0
}

TEST(ShapeSearch, ShallowerShapesOnlyWhereBlocksCanBeDropped) {
  ModelShape s = llama(4, 64, 4, 2, 64);
  ModelShape shallow = s;
  shallow.layers = 3;
  EXPECT_EQ(transformers_violation(shallow, s), "");
  s.traits.drop_layers = false;
  EXPECT_NE(transformers_violation(shallow, s).find("num_hidden_layers"), std::string::npos);
  SearchRules r;
  r.layers = true;
  for (const ModelShape& c : legal_shapes(s, r)) EXPECT_EQ(c.layers, 4);
}

// plan.json: kept_layers is read and checked (a plan from before layer gates keeps every layer).
TEST(ShapeSearch, PlanKeptLayersAreCheckedAndOptional) {
  const ModelShape s = llama(4, 64, 4, 2, 64);
  SearchRules r;
  r.layers = true;
  std::mt19937 rng(3);
  CostSpec cost;
  cost.target = 0.6;
  const SearchResult res = search_shape(s, random_scores(s, r, rng), r, cost);
  nlohmann::json j = plan_to_json(res.plan);
  ASSERT_LT(res.plan.chosen.shape.layers, 4) << "the budget needs a dropped block";
  // Twin: a duplicate or out-of-range layer is a CheckpointError naming kept_layers.
  for (const nlohmann::json& bad : {nlohmann::json::array({0, 0, 1}), nlohmann::json::array({0, 1, 9})}) {
    nlohmann::json b = j;
    b["kept_layers"] = bad;
    b["shape"]["layers"] = 3;
    try {
      plan_from_json(b, s, "plan.json");
      FAIL() << "accepted " << bad.dump();
    } catch (const CheckpointError& e) {
      EXPECT_NE(std::string(e.what()).find("kept_layers"), std::string::npos) << e.what();
    }
  }
  // A plan without kept_layers (written before layer gates) of a full-depth shape keeps every layer.
  CostSpec any;
  any.target = 1.0;
  const SearchResult full = search_shape(s, random_scores(s, SearchRules{}, rng), SearchRules{}, any);
  nlohmann::json old = plan_to_json(full.plan);
  old.erase("kept_layers");
  EXPECT_EQ(plan_from_json(old, s, "plan.json").layers, (std::vector<int64_t>{0, 1, 2, 3}));
}

TEST(ShapeSearch, UnreachableBudgetNamesTheSmallestCost) {
  const ModelShape s = llama(2, 64, 4, 2, 64);
  SearchRules r;
  CostSpec cost;
  cost.target = 0.01;
  StructureScores sc = random_scores(s, r, *std::make_unique<std::mt19937>(1));
  try {
    search_shape(s, sc, r, cost);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("budget.target = 0.0100 (params) is below every legal shape: the smallest "
                                         "reachable cost is 0."),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace hawada
