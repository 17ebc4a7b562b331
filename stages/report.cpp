#include "stages/report.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/base/errors.h"
#include "core/base/fs.h"
#include "core/base/hash.h"
#include "core/base/json_input.h"
#include "core/base/log.h"
#include "core/base/process.h"
#include "core/dist/mpi_session.h"
#include "core/io/checkpoint.h"

namespace hawada {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A number field as text, "n/a" when absent, null or not a number (a report never dies on a value).
std::string escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<')
      o += "&lt;";
    else if (c == '>')
      o += "&gt;";
    else if (c == '&')
      o += "&amp;";
    else if (c == '"')
      o += "&quot;";
    else
      o += c;
  }
  return o;
}

// A human number: 1.24e9 -> "1.24 G".
std::string human(double v) {
  const char* units[] = {"", " k", " M", " G", " T", " P"};
  int u = 0;
  while (std::abs(v) >= 1000 && u < 5) v /= 1000, ++u;
  return fmt::format("{:.{}f}", v, v < 10 ? 2 : v < 100 ? 1 : 0) + units[u];
}

struct Series {
  std::string name, color;
  std::vector<double> x, y;
};

constexpr int kW = 560, kH = 260, kL = 60, kR = 20, kT = 30, kB = 40;

// Axes box with min/max tick labels; maps data to pixels.
struct Frame {
  double x0, x1, y0, y1;
  double px(double x) const { return kL + (x - x0) / std::max(x1 - x0, 1e-300) * (kW - kL - kR); }
  double py(double y) const { return kH - kB - (y - y0) / std::max(y1 - y0, 1e-300) * (kH - kT - kB); }
  std::string axes(const std::string& title, const std::string& xlabel) const {
    std::ostringstream o;
    o << "<text x='" << kW / 2 << "' y='18' text-anchor='middle' class='title'>" << escape(title) << "</text>";
    o << "<rect x='" << kL << "' y='" << kT << "' width='" << kW - kL - kR << "' height='" << kH - kT - kB
      << "' fill='none' stroke='#999'/>";
    o << "<text x='" << kL << "' y='" << kH - kB + 15 << "' class='tick'>" << fmt::format("{:.4g}", x0) << "</text>";
    o << "<text x='" << kW - kR << "' y='" << kH - kB + 15 << "' text-anchor='end' class='tick'>"
      << fmt::format("{:.4g}", x1) << "</text>";
    o << "<text x='" << kW / 2 << "' y='" << kH - 8 << "' text-anchor='middle' class='tick'>" << escape(xlabel)
      << "</text>";
    o << "<text x='" << kL - 4 << "' y='" << kT + 10 << "' text-anchor='end' class='tick'>" << fmt::format("{:.4g}", y1)
      << "</text>";
    o << "<text x='" << kL - 4 << "' y='" << kH - kB << "' text-anchor='end' class='tick'>" << fmt::format("{:.4g}", y0)
      << "</text>";
    return o.str();
  }
};

Frame frame_of(const std::vector<Series>& series) {
  Frame f{1e300, -1e300, 1e300, -1e300};
  for (const auto& s : series)
    for (size_t i = 0; i < s.x.size(); ++i) {
      f.x0 = std::min(f.x0, s.x[i]), f.x1 = std::max(f.x1, s.x[i]);
      f.y0 = std::min(f.y0, s.y[i]), f.y1 = std::max(f.y1, s.y[i]);
    }
  if (f.x0 > f.x1) f = {0, 1, 0, 1};
  if (f.y1 - f.y0 < 1e-12) f.y1 = f.y0 + 1e-12 + std::abs(f.y0) * 0.1, f.y0 -= std::abs(f.y0) * 0.1;
  return f;
}

std::string line_chart(const std::string& id, const std::string& title, const std::vector<Series>& series) {
  const Frame f = frame_of(series);
  std::ostringstream o;
  o << "<svg id='" << id << "' class='chart' width='" << kW << "' height='" << kH << "' viewBox='0 0 " << kW << " "
    << kH << "' xmlns='http://www.w3.org/2000/svg'>" << f.axes(title, "step");
  int legend = 0;
  for (const auto& s : series) {
    o << "<polyline class='series' fill='none' stroke='" << s.color << "' stroke-width='1.5' points='";
    for (size_t i = 0; i < s.x.size(); ++i)
      o << fmt::format("{:.1f}", f.px(s.x[i])) << "," << fmt::format("{:.1f}", f.py(s.y[i])) << " ";
    o << "'/>";
    o << "<text x='" << kW - kR - 4 << "' y='" << kT + 14 + 14 * legend++ << "' text-anchor='end' fill='" << s.color
      << "' class='tick'>" << escape(s.name) << "</text>";
  }
  o << "</svg>";
  return o.str();
}

// Rows = layers, columns = structures; value = kept (1) or not (0), or a kept fraction of a bin.
std::string heat_map(const std::string& id, const std::string& title, const std::vector<std::vector<double>>& rows) {
  const int cols = rows.empty() ? 0 : static_cast<int>(rows[0].size());
  const int cell_w = std::max(2, std::min(24, 480 / std::max(cols, 1))), cell_h = 16;
  const int w = 60 + cols * cell_w + 10, h = 30 + static_cast<int>(rows.size()) * cell_h + 10;
  std::ostringstream o;
  o << "<svg id='" << id << "' class='heatmap' width='" << w << "' height='" << h
    << "' xmlns='http://www.w3.org/2000/svg'>"
    << "<text x='4' y='16' class='title'>" << escape(title) << "</text>";
  for (size_t l = 0; l < rows.size(); ++l) {
    o << "<text x='4' y='" << 30 + (l + 1) * cell_h - 4 << "' class='tick'>layer " << l << "</text>";
    for (int c = 0; c < cols; ++c) {
      const double v = rows[l][static_cast<size_t>(c)];
      const int shade = static_cast<int>(std::lround(235 - v * 180));
      o << "<rect class='cell' x='" << 60 + c * cell_w << "' y='" << 30 + l * cell_h << "' width='" << cell_w - 1
        << "' height='" << cell_h - 1 << "' fill='rgb(" << shade << "," << std::min(255, shade + 20) << ",255)'>"
        << "<title>layer " << l << ", " << c << ": " << fmt::format("{:.2f}", v) << "</title></rect>";
    }
  }
  o << "</svg>";
  return o.str();
}

std::vector<json> read_metrics(const fs::path& file) {
  std::vector<json> out;
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    auto j = json::parse(line, nullptr, false);
    if (!j.is_discarded()) out.push_back(j);
  }
  return out;
}

std::vector<std::vector<std::string>> read_csv(const fs::path& file) {
  std::vector<std::vector<std::string>> rows;
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    std::vector<std::string> cells;
    std::stringstream ss(line);
    std::string cell;
    while (std::getline(ss, cell, ',')) cells.push_back(cell);
    rows.push_back(cells);
  }
  return rows;
}

// Curves: loss, KL and expected cost against its target while the gates train (train/metrics.jsonl).
std::string training_section(const RunLayout& layout) {
  const auto metrics = read_metrics(RunLayout::metrics(layout.train()));
  if (metrics.empty()) return "<h2>Gate training</h2><p>No metrics yet (train/metrics.jsonl).</p>";
  Series loss{"loss", "#1f77b4", {}, {}}, kl{"KL", "#d62728", {}, {}}, cost{"expected cost", "#2ca02c", {}, {}},
      target{"target", "#7f7f7f", {}, {}};
  for (const auto& m : metrics) {
    const double s = m.value("step", 0.0);
    loss.x.push_back(s), loss.y.push_back(m.value("loss", 0.0));
    if (!m["kl"].is_number() || !m["expected_cost"].is_number()) continue;  // a broken line
    kl.x.push_back(s), kl.y.push_back(m.value("kl", 0.0));
    cost.x.push_back(s), cost.y.push_back(m.value("expected_cost", 0.0));
    target.x.push_back(s), target.y.push_back(m.value("target", 0.0));
  }
  return "<h2>Gate training</h2><div class='row'>" + line_chart("loss-curve", "loss (KL + MSE)", {loss}) +
         line_chart("kl-curve", "KL(teacher || student)", {kl}) +
         line_chart("cost-curve", "expected cost (ratio of dense)", {cost, target}) + "</div>";
}

// Calibration and heal curves: KL on the training batches (and, while healing, on held-out samples).
std::string calibration_section(const RunLayout& layout) {
  const auto cal = read_metrics(RunLayout::metrics(layout.calibrate()));
  const auto heal = read_metrics(RunLayout::metrics(layout.heal()));
  if (cal.empty() && heal.empty()) return "";
  std::ostringstream body;
  body << "<h2>Calibration and heal</h2><div class='row'>";
  if (!cal.empty()) {
    Series kl{"KL (training batch)", "#d62728", {}, {}};
    for (const auto& m : cal) kl.x.push_back(m.value("step", 0.0)), kl.y.push_back(m.value("kl", 0.0));
    body << line_chart("calibrate-curve", "calibration: KL(teacher || student), weights frozen", {kl});
  }
  if (!heal.empty()) {
    Series kl{"KL (training batch)", "#d62728", {}, {}}, held{"held-out KL", "#1f77b4", {}, {}};
    for (const auto& m : heal) {
      kl.x.push_back(m.value("step", 0.0)), kl.y.push_back(m.value("kl", 0.0));
      if (m.contains("heldout_kl"))
        held.x.push_back(m.value("step", 0.0)), held.y.push_back(m["heldout_kl"].get<double>());
    }
    body << line_chart("heal-curve", "heal: KL(teacher || student)", {kl, held});
  }
  body << "</div>";
  return body.str();
}

// What each layer of a plan keeps: per query head 1 or 0, and per bin of FFN channels the kept fraction.
struct KeptMaps {
  std::vector<std::vector<double>> head_rows, ffn_rows;
  int64_t channels_per_bin = 0;
};

// The kept maps of `plan` (read from `plan_file`, which errors name); a CheckpointError on implausible counts
// or indices.
KeptMaps kept_maps(const json& plan, const fs::path& plan_file) {
  const json& d = plan.at("dense");
  const int64_t heads = json_int(d.at("num_attention_heads")), ffn = json_int(d.at("intermediate_size"));
  auto index = [&](int64_t i, int64_t n, const char* what) {
    if (i < 0 || i >= n)
      throw CheckpointError("'" + plan_file.string() + "': " + what + " index " + std::to_string(i) + " outside [0, " +
                            std::to_string(n) + ")");
    return static_cast<size_t>(i);
  };
  if (heads < 1 || heads > (int64_t{1} << 20) || ffn < 1 || ffn > (int64_t{1} << 24))
    throw CheckpointError("'" + plan_file.string() + "': implausible dense counts");
  KeptMaps maps;
  const int64_t bins = std::min<int64_t>(ffn, 64);
  maps.channels_per_bin = ffn / bins;
  std::vector<int64_t> kept_layers;  // plans before layer gates keep every layer
  if (plan.contains("kept_layers")) kept_layers = json_ints(plan.at("kept_layers"));
  int64_t layer_index = -1;
  for (const auto& layer : plan.at("layers")) {
    std::vector<double> hr(static_cast<size_t>(heads), 0.0), fr(static_cast<size_t>(bins), 0.0);
    ++layer_index;
    if (plan.contains("kept_layers") &&
        std::find(kept_layers.begin(), kept_layers.end(), layer_index) == kept_layers.end()) {
      maps.head_rows.push_back(hr);  // a dropped block: nothing kept
      maps.ffn_rows.push_back(fr);
      continue;
    }
    for (int64_t h : json_ints(layer.at("heads"))) hr[index(h, heads, "heads")] = 1.0;
    for (int64_t c : json_ints(layer.at("ffn")))
      fr[index(c, ffn, "ffn") * static_cast<size_t>(bins) / static_cast<size_t>(ffn)] += 1.0;
    for (int64_t b = 0; b < bins; ++b) {
      const int64_t lo = (b * ffn + bins - 1) / bins, hi = ((b + 1) * ffn + bins - 1) / bins;
      fr[static_cast<size_t>(b)] /= static_cast<double>(std::max<int64_t>(1, hi - lo));
    }
    maps.head_rows.push_back(hr);
    maps.ffn_rows.push_back(fr);
  }
  return maps;
}

// A row of the before/after table: dense, exported and their ratio (seconds when `time`).
std::string before_after_row(const char* what, double before, double after, bool time = false) {
  const std::string b = time ? fmt::format("{:.3g} s", before) : human(before),
                    a = time ? fmt::format("{:.3g} s", after) : human(after);
  return "<tr><td>" + std::string(what) + "</td><td>" + b + "</td><td>" + a + "</td><td>" +
         fmt::format("{:.3f}", after / std::max(before, 1e-300)) + "</td></tr>";
}

// Plan: heat maps and before/after.
std::string plan_section(const json& plan, const fs::path& plan_file) {
  const json& s = plan.at("shape");
  const json& d = plan.at("dense");
  const KeptMaps maps = kept_maps(plan, plan_file);
  std::ostringstream body;
  body << "<h2>What each layer keeps</h2><div class='row'>"
       << heat_map("heatmap-heads", "query heads kept (dark = kept)", maps.head_rows)
       << heat_map("heatmap-ffn",
                   "FFN channels kept (fraction per bin of " + std::to_string(maps.channels_per_bin) + ")",
                   maps.ffn_rows)
       << "</div>";
  body << "<h2>Before and after</h2><table "
          "id='before-after'><tr><th></th><th>dense</th><th>exported</th><th>ratio</th></tr>"
       << before_after_row("parameters", d.at("parameters"), s.at("parameters"))
       << before_after_row("FLOPs per forward", d.at("flops"), s.at("flops"))
       << before_after_row("predicted latency", d.at("latency_s"), s.at("latency_s"), true)
       << "<tr><td>shape</td><td>layers " << d.at("layers") << ", hidden " << d.at("hidden_size") << ", heads "
       << d.at("num_attention_heads") << " (kv " << d.at("num_key_value_heads") << "), FFN "
       << d.at("intermediate_size") << "</td><td>layers " << s.at("layers") << ", hidden " << s.at("hidden_size")
       << ", heads " << s.at("num_attention_heads") << " (kv " << s.at("num_key_value_heads") << "), FFN "
       << s.at("intermediate_size") << "</td><td></td></tr></table>"
       << "<p>Budget: " << escape(plan.at("metric").get<std::string>()) << " "
       << fmt::format("{:.3f}", plan.at("target").get<double>()) << " of the dense model; kept importance "
       << fmt::format("{:.3f}", s.at("importance").get<double>()) << ".</p>";
  return body.str();
}

// The probed shapes.
std::string probes_section(const json& plan) {
  if (!plan.contains("probes") || plan["probes"].empty()) return "";
  std::ostringstream body;
  body << "<h2>Probed shapes</h2><table id='probes'><tr><th>layers</th><th>hidden</th><th>heads "
          "(kv)</th><th>FFN</th><th>cost</th>"
       << "<th>kept importance</th><th>KL after a short calibration</th></tr>";
  for (const auto& p : plan["probes"])
    body << "<tr><td>" << p.value("num_hidden_layers", 0) << "</td><td>" << p.value("hidden_size", 0) << "</td><td>"
         << p.value("num_attention_heads", 0) << " (" << p.value("num_key_value_heads", 0) << ")</td><td>"
         << p.value("intermediate_size", 0) << "</td><td>" << fmt::format("{:.4f}", p.value("cost_ratio", 0.0))
         << "</td><td>" << fmt::format("{:.4f}", p.value("importance", 0.0)) << "</td><td>"
         << json_number_text(p, "kl", "{:.4f}") << "</td></tr>";
  body << "</table>";
  return body.str();
}

// Pareto front: kept importance against predicted latency (plan/candidates.csv), the chosen shape circled.
std::string pareto_section(const RunLayout& layout) {
  const auto csv = read_csv(layout.candidates());
  if (csv.size() <= 1) return "";
  const auto& head = csv[0];
  auto col = [&](const char* name) {
    return static_cast<size_t>(std::find(head.begin(), head.end(), name) - head.begin());
  };
  const size_t lat = col("latency_s"), imp = col("importance"), chosen = col("chosen");
  Series front{"Pareto front", "#1f77b4", {}, {}};
  double cx = 0, cy = 0;
  for (size_t i = 1; i < csv.size(); ++i) {
    if (csv[i].size() <= std::max({lat, imp, chosen})) continue;
    const double x = std::stod(csv[i][lat]) * 1e3, y = std::stod(csv[i][imp]);
    front.x.push_back(x), front.y.push_back(y);
    if (csv[i][chosen] == "1") cx = x, cy = y;
  }
  const Frame f = frame_of({front});
  std::ostringstream o;
  o << "<svg id='pareto' class='chart' width='" << kW << "' height='" << kH << "' xmlns='http://www.w3.org/2000/svg'>"
    << f.axes("kept importance against predicted latency", "predicted latency (ms)");
  for (size_t i = 0; i < front.x.size(); ++i)
    o << "<circle class='candidate' cx='" << fmt::format("{:.1f}", f.px(front.x[i])) << "' cy='"
      << fmt::format("{:.1f}", f.py(front.y[i])) << "' r='3' fill='#1f77b4'/>";
  o << "<circle id='chosen' cx='" << fmt::format("{:.1f}", f.px(cx)) << "' cy='" << fmt::format("{:.1f}", f.py(cy))
    << "' r='7' fill='none' stroke='#d62728' stroke-width='2'><title>chosen</title></circle></svg>";
  return "<h2>Shapes</h2>" + o.str();
}

// Verify: whether the export's logits equal the hard-gated student's (export/summary.json).
std::string verify_section(const json& sm) {
  const json& v = sm.at("verify");
  std::ostringstream body;
  body << "<h2>Export</h2><p id='verify' class='" << (v.at("passed").get<bool>() ? "pass" : "fail") << "'>"
       << escape(sm.at("export").get<std::string>()) << ": on " << v.at("samples") << " "
       << (v.at("held_out").get<bool>() ? "held-out" : "training") << " samples the export's logits are "
       << (v.at("passed").get<bool>() ? "equal to" : "DIFFERENT from") << " the hard-gated student's (max |diff| "
       << json_number_text(v, "max_abs_diff", "{:.3g}") << ", relative L2 "
       << json_number_text(v, "relative_l2", "{:.3g}") << ", tolerance " << json_number_text(v, "tolerance", "{:.0e}")
       << "). Load it with "
       << "<code>AutoModel*.from_pretrained(\"" << escape(sm.at("export").get<std::string>()) << "\")</code>.</p>";
  return body.str();
}

// A row of the encoder quality table: one model's embeddings against the teacher's.
std::string encoder_row(const char* name, const json& j) {
  return std::string("<tr><td>") + name + "</td><td>" + json_number_text(j, "cosine", "{:.4f}") + "</td><td>" +
         json_number_text(j, "min_cosine", "{:.4f}") + "</td><td>" +
         json_number_text(j, "cosine_kept_channels", "{:.4f}") + "</td><td>" +
         json_number_text(j, "similarity_correlation", "{:.4f}") + "</td><td>" +
         json_number_text(j, "token_cosine", "{:.4f}") + "</td><td>" + json_number_text(j, "relative_mse", "{:.4f}") +
         "</td></tr>";
}

// The quality of an encoder: embeddings against the teacher's.
std::string encoder_quality(const json& ev) {
  const json& q = ev["export"];
  std::ostringstream body;
  body << "<h2>Quality</h2><p>On " << q.value("samples", 0) << " samples of " << escape(ev.value("data", std::string()))
       << " (fp32), mean-pooled embeddings against the teacher's:</p><table id='quality'><tr><th>model</th>"
       << "<th>cosine (mean)</th><th>cosine (min)</th><th>cosine on the kept channels</th>"
       << "<th>pairwise-similarity correlation</th><th>token cosine</th><th>relative MSE</th></tr>";
  if (ev.contains("unhealed")) body << encoder_row("pruned, calibrated (before heal)", ev["unhealed"]);
  body << encoder_row("export", q) << "</table>";
  return body.str();
}

// The quality of an LM or a classifier: perplexity (LMs), KL and top-1 agreement against the teacher.
std::string logit_quality(const json& ev) {
  const json& q = ev["export"];
  const bool lm = q.contains("student_ppl");
  std::ostringstream body;
  body << "<h2>Quality</h2><p>On " << q.value("samples", 0) << " samples of " << escape(ev.value("data", std::string()))
       << " (fp32):</p><table id='quality'><tr><th>model</th>" << (lm ? "<th>perplexity</th>" : "")
       << "<th>KL(teacher || model)</th><th>top-1 agreement</th></tr>";
  if (lm)
    body << "<tr><td>dense teacher</td><td>" << json_number_text(q, "teacher_ppl", "{:.3f}")
         << "</td><td>0</td><td>1</td></tr>";
  if (ev.contains("unhealed")) {
    const json& u = ev["unhealed"];
    body << "<tr><td>pruned, calibrated (before heal)</td>"
         << (lm ? "<td>" + json_number_text(u, "student_ppl", "{:.3f}") + "</td>" : "") << "<td>"
         << json_number_text(u, "kl", "{:.4f}") << "</td><td>" << json_number_text(u, "top1_agreement", "{:.3f}")
         << "</td></tr>";
  }
  body << "<tr><td>export</td>" << (lm ? "<td>" + json_number_text(q, "student_ppl", "{:.3f}") + "</td>" : "") << "<td>"
       << json_number_text(q, "kl", "{:.4f}") << "</td><td>" << json_number_text(q, "top1_agreement", "{:.3f}")
       << "</td></tr></table>";
  return body.str();
}

// The measured forward latency of dense and export, beside the cost model's prediction.
std::string speedup_paragraph(const json& ev) {
  const json& l = ev["latency"];
  std::ostringstream body;
  body << "<p id='speedup'>Measured forward latency (" << l.value("batch", 0) << " x " << l.value("tokens", 0)
       << " tokens, " << escape(l.value("dtype", std::string())) << ", " << escape(ev.value("device", std::string()))
       << "): dense " << json_number_text(l, "dense_s", "{:.4g}") << " s, export "
       << json_number_text(l, "export_s", "{:.4g}") << " s: <b>" << json_number_text(l, "measured_speedup", "{:.2f}")
       << "x</b> measured, " << json_number_text(l, "predicted_speedup", "{:.2f}")
       << "x predicted by the cost model.</p>";
  return body.str();
}

// Quality and measured speed (evaluate).
std::string evaluate_section(const json& sm) {
  if (!sm.contains("evaluate")) return "";
  const json& ev = sm["evaluate"];
  // An encoder: embeddings against the teacher's.
  std::string out = ev["export"].contains("cosine") ? encoder_quality(ev) : logit_quality(ev);
  if (ev.contains("latency")) out += speedup_paragraph(ev);
  return out;
}

// The page: the title, the style sheet and the sections.
std::string page(const std::string& title, const std::string& body) {
  std::ostringstream html;
  html << "<!DOCTYPE html><html><head><meta charset='utf-8'><title>" << escape(title) << "</title><style>"
       << "body{font-family:sans-serif;margin:24px;color:#222} .row{display:flex;flex-wrap:wrap;gap:12px}"
       << ".title{font-size:13px;font-weight:bold} .tick{font-size:11px;fill:#555} table{border-collapse:collapse}"
       << "td,th{border:1px solid #ccc;padding:4px 10px;text-align:right} .pass{color:#2a7a2a} .fail{color:#b00}"
       << "</style></head><body><h1>" << escape(title) << "</h1>" << body << "</body></html>\n";
  return html.str();
}

}  // namespace

std::string render_report(const fs::path& run_dir, const std::string& title) {
  const RunLayout layout(run_dir);
  std::string body = training_section(layout) + calibration_section(layout);
  const fs::path plan_file = layout.plan();
  if (fs::exists(plan_file)) {
    const json plan = read_json_file(plan_file);
    body += plan_section(plan, plan_file);
    body += probes_section(plan);
  }
  body += pareto_section(layout);
  const fs::path summary_file = layout.export_summary();
  if (fs::exists(summary_file)) {
    const json sm = read_json_file(summary_file);
    body += verify_section(sm);
    body += evaluate_section(sm);
  }
  return page(title, body);
}
std::string ReportStage::fingerprint(const StageContext& ctx) {
  Hasher h;
  h.update("report/2");
  h.update(ctx.fingerprints.at(std::string(stage_names::evaluate)));
  return hex64(h.digest());
}

void ReportStage::run(const StageContext& ctx) {
  if (process_info().rank == 0) {
    const RunLayout layout(ctx.run_dir);
    const fs::path dir = layout.report();
    fs::create_directories(dir);
    atomic_write_text(layout.report_page(),
                      render_report(ctx.run_dir, "hawada-pipeline run: " + ctx.config.model.path.filename().string()));
    log::info("report: " + layout.report_page().string());
  }
  world::barrier();
}

}  // namespace hawada
