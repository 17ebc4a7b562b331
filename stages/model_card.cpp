#include "stages/model_card.h"

#include <cmath>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/base/fs.h"
#include "core/base/json_input.h"
#include "core/base/process.h"
#include "core/io/checkpoint.h"
#include "stages/layout.h"
#include "training/student.h"

namespace hawada {
namespace {

using json = nlohmann::json;

// A YAML double-quoted scalar (escapes quotes, backslashes and control characters).
std::string yaml_string(const std::string& s) {
  std::string out = "\"";
  for (const unsigned char ch : s) {
    if (ch == '"' || ch == '\\')
      out += '\\', out += static_cast<char>(ch);
    else if (ch < 0x20)
      out += fmt::format("\\x{:02x}", ch);
    else
      out += static_cast<char>(ch);
  }
  return out + "\"";
}

// The Hub's front matter (base model, library, pipeline tag, tags).
std::string front_matter(const std::string& base, ModelOutput out) {
  const char* tag = out == ModelOutput::token_logits    ? "text-generation"
                    : out == ModelOutput::hidden_states ? "feature-extraction"
                                                        : "image-classification";
  std::ostringstream o;
  o << "---\n"
    << "base_model: " << yaml_string(base) << "\n"
    << "library_name: transformers\n"
    << "pipeline_tag: " << tag << "\n"
    << "tags:\n  - hawada-pipeline\n  - pruned\n  - structured-pruning\n  - distillation\n"
    << "---\n\n";
  return o.str();
}

// The refit's sentence: which output projections calibrate.reconstruct solved again (calibrate's summary.json
// counts them: only those whose inputs the plan cut), and whether before or after the scales.
std::string refit_sentence(const Config& c, const std::filesystem::path& run_dir) {
  const std::filesystem::path file = RunLayout(run_dir).calibrate_summary();
  const json r = std::filesystem::exists(file) ? read_json_file(file).value("reconstruct", json::object()) : json();
  const int64_t attention = r.value("attention_projections", int64_t{-1}),
                mlp = r.value("mlp_projections", int64_t{-1});
  std::ostringstream o;
  o << (c.calibrate.reconstruct_order == RefitOrder::after_scales ? " After the scales" : " Before the scales")
    << ", the output projections of the blocks whose heads or FFN channels were cut";
  if (attention >= 0 && mlp >= 0)
    o << " (" << attention << " o_proj, " << mlp << " down_proj)";
  else
    o << (c.calibrate.reconstruct_attention ? " (o_proj, down_proj)" : " (down_proj)");
  o << " were refitted by least squares so that the kept heads and channels reproduce the original projections' "
       "outputs on calibration text.";
  return o.str();
}

// Heal: what trained, on how much text (distinct tokens against tokens read), and which step's weights were kept.
std::string heal_sentence(const Config& c, const std::filesystem::path& run_dir) {
  std::ostringstream o;
  o << " Finally the weights of the pruned model (" << c.heal.train
    << ") were trained by distillation from the original model (heal)";
  const std::filesystem::path file = RunLayout(run_dir).heal_summary();
  if (!std::filesystem::exists(file)) return o.str() + ".";
  const json h = read_json_file(file);
  o << fmt::format(" on {} tokens of text, {} of them distinct", h.value("tokens_read", int64_t{0}),
                   h.value("distinct_tokens", int64_t{0}));
  if (h.value("repeated_reads", int64_t{0}) > 0)
    o << fmt::format(" ({} windows were read more than once)", h.value("repeated_reads", int64_t{0}));
  if (h.value("hidden_weight", 0.0) > 0)
    o << fmt::format(
        ", with the residual stream after each kept block drawn towards the original's at the same "
        "depth (weight {})",
        h.value("hidden_weight", 0.0));
  if (h.contains("kept_heldout_kl"))
    o << fmt::format("; the weights kept are those of step {} of {}, the lowest held-out KL measured ({:.4f})",
                     h.value("kept_step", int64_t{0}), h.value("steps", int64_t{0}), h.value("kept_heldout_kl", 0.0));
  return o.str() + ".";
}

// How it was made: gates learned by distillation within the budget, the shape probed, the scales
// calibrated (and, on healed runs, every weight trained).
std::string how_it_was_made(const Config& c, ModelOutput out, const json& summary,
                            const std::filesystem::path& run_dir) {
  std::ostringstream o;
  o << "## How it was made\n\n"
    << "Gates on attention heads and FFN channels" << (c.gates.hidden ? ", hidden channels" : "")
    << (c.gates.layers ? " and whole blocks (layers)" : "")
    << " were learned by distillation from the cached outputs of "
    << (c.teacher.model.empty() || c.teacher.model == c.model.path
            ? std::string("the original model")
            : "the teacher model " + c.teacher.model.filename().string() +
                  " (the model pruned: " + c.model.path.filename().string() + ")")
    << " ("
    << (out != ModelOutput::token_logits             ? std::string("its")
        : c.teacher.logits == TeacherLogits::sampled ? "tokens sampled from the"
                                                     : "top-" + std::to_string(c.teacher.top_k))
    << (out == ModelOutput::hidden_states ? " last hidden states" : " logits")
    << "), starting from one-shot importance (activation x Fisher information); a budget of "
    << summary.value("parameters", 0.0) / std::max(1.0, summary.value("dense_parameters", 1.0))
    << " of the parameters (" << metric_name(c.budget.metric) << " budget " << c.budget.target
    << ") chose the shape, whose candidates were compared by a short calibrated probe; the kept structures' "
    << "scales were then fitted to the original model with every weight frozen (" << c.calibrate.steps
    << " steps) and folded into the output projections.";
  if (std::filesystem::exists(RunLayout(run_dir).reconstructed_weights())) o << refit_sentence(c, run_dir);
  if (std::filesystem::exists(RunLayout(run_dir).healed_weights())) o << heal_sentence(c, run_dir);
  o << "\n\n";
  return o.str();
}

// The shape: the original's against this model's.
std::string shape_table(const ModelShape& d, const json& shape, const json& summary) {
  std::ostringstream o;
  o << "## Shape\n\n| | original | this model |\n| --- | --- | --- |\n"
    << "| hidden_size | " << d.hidden << " | " << shape.value("hidden_size", 0) << " |\n"
    << "| num_attention_heads | " << d.heads << " | " << shape.value("num_attention_heads", 0) << " |\n"
    << "| num_key_value_heads | " << d.kv_heads << " | " << shape.value("num_key_value_heads", 0) << " |\n"
    << "| intermediate_size | " << d.ffn << " | " << shape.value("intermediate_size", 0) << " |\n"
    << "| num_hidden_layers | " << d.layers << " | " << shape.value("num_hidden_layers", 0) << " |\n"
    << "| parameters | " << static_cast<int64_t>(summary.value("dense_parameters", 0.0)) << " | "
    << static_cast<int64_t>(summary.value("parameters", 0.0)) << " |\n\n";
  return o.str();
}

// Quality (when evaluated, `q` the export's): perplexity, embedding similarity, or KL and top-1 agreement
// against the original.
std::string quality_section(const json& ev, const json& q) {
  if (q.empty()) return "";
  std::ostringstream o;
  o << "## Quality\n\nOn " << q.value("samples", 0) << " samples of " << ev.value("data", std::string("held-out data"))
    << ", in fp32:\n\n| metric | value |\n| --- | --- |\n";
  if (q.contains("student_ppl"))
    o << "| perplexity, original | " << json_number_text(q, "teacher_ppl") << " |\n| perplexity, this model | "
      << json_number_text(q, "student_ppl") << " |\n";
  if (q.contains("cosine"))
    o << "| cosine similarity of mean-pooled embeddings to the original's (mean) | "
      << json_number_text(q, "cosine", "{:.4f}") << " |\n"
      << "| the same, lowest sample | " << json_number_text(q, "min_cosine", "{:.4f}") << " |\n"
      << "| the same, on the hidden channels this model kept | "
      << json_number_text(q, "cosine_kept_channels", "{:.4f}") << " |\n"
      << "| correlation of pairwise sentence similarities with the original's | "
      << json_number_text(q, "similarity_correlation", "{:.4f}") << " |\n"
      << "| cosine similarity per token (mean) | " << json_number_text(q, "token_cosine", "{:.4f}") << " |\n\n";
  else
    o << "| KL(original \\|\\| this model) per token | " << json_number_text(q, "kl") << " |\n"
      << "| top-1 agreement with the original | " << json_number_text(q, "top1_agreement", "{:.3f}") << " |\n\n";
  return o.str();
}

// Speed (when evaluated): the measured forward latency against the prediction, and generation (causal LMs).
std::string speed_section(const json& ev) {
  std::ostringstream o;
  if (ev.contains("latency")) {
    const json& l = ev["latency"];
    o << "## Speed\n\nForward pass of " << l.value("batch", 0) << " x " << l.value("tokens", 0) << " tokens in "
      << l.value("dtype", std::string()) << " on " << ev.value("device", std::string()) << ": original "
      << json_number_text(l, "dense_s", "{:.4g}") << " s, this model " << json_number_text(l, "export_s", "{:.4g}")
      << " s (measured speedup " << json_number_text(l, "measured_speedup", "{:.2f}") << "x; the cost model predicted "
      << json_number_text(l, "predicted_speedup", "{:.2f}") << "x).\n\n";
  }
  if (ev.contains("generation")) {
    const json& g = ev["generation"];
    o << "Generation (batch 1, greedy, KV cache, " << g.value("dtype", std::string())
      << ", hawada-pipeline's runtime): a " << g.value("prompt_tokens", 0) << "-token prompt is prefilled "
      << json_number_text(g, "prefill_speedup", "{:.2f}") << "x faster than the original, and "
      << g.value("new_tokens", 0) << " new tokens decode at "
      << json_number_text(g, "export_decode_tokens_per_s", "{:.1f}") << " tokens/s against "
      << json_number_text(g, "dense_decode_tokens_per_s", "{:.1f}") << " ("
      << json_number_text(g, "decode_speedup", "{:.2f}") << "x).\n\n";
  }
  return o.str();
}

// GGUF files (export.gguf) and, when evaluate ran llama.cpp, one row per type: this model against the original
// converted and quantized the same way, in llama.cpp's own tools.
std::string llama_cpp_section(const json& summary, const json& ev) {
  if (!summary.contains("gguf")) return "";
  std::ostringstream o;
  o << "## llama.cpp\n\nGGUF files beside this directory, made by llama.cpp's own converter and llama-quantize:";
  for (const json& g : summary["gguf"])
    o << " `" << std::filesystem::path(g.value("file", std::string())).filename().string() << "` ("
      << fmt::format("{:.1f}", g.value("bytes", 0.0) / 1e6) << " MB)";
  o << ".\n\n";
  if (!ev.contains("llama_cpp")) return o.str();
  const json& l = ev["llama_cpp"];
  const int threads = l.value("threads", 0);
  o << "Measured with llama.cpp's own tools on this machine's CPU, " << threads
    << (threads == 1 ? " thread" : " threads") << ": llama-bench (batch 1, a " << l.value("prompt_tokens", 0)
    << "-token prompt, then " << l.value("new_tokens", 0) << " new tokens decoded after it, mean of "
    << l.value("repetitions", 0) << "), and llama-perplexity on " << l.value("windows", 0) << " windows of "
    << l.value("window_tokens", 0) << " tokens of " << ev.value("data", std::string("held-out data"))
    << " (the second half of each window: " << l.value("predictions", 0) << " predictions; in fp32 the original scores "
    << json_number_text(l["fp32"], "original_ppl") << " there and this model "
    << json_number_text(l["fp32"], "export_ppl") << "). Each type against the "
    << "original model in the same type:\n\n"
    << "| type | size, original -> this | decode tokens/s, original -> this | prefill tokens/s, original -> this | "
       "perplexity, original -> this |\n| --- | --- | --- | --- | --- |\n";
  for (const json& t : l["types"]) {
    const json &a = t["original"], &b = t["export"];
    o << "| " << t.value("type", std::string()) << " | " << fmt::format("{:.1f}", a.value("bytes", 0.0) / 1e6)
      << " MB -> " << fmt::format("{:.1f}", b.value("bytes", 0.0) / 1e6) << " MB | "
      << json_number_text(a, "decode_tokens_per_s", "{:.1f}") << " -> "
      << json_number_text(b, "decode_tokens_per_s", "{:.1f}") << " (" << json_number_text(t, "decode_speedup", "{:.2f}")
      << "x) | " << json_number_text(a, "prefill_tokens_per_s", "{:.1f}") << " -> "
      << json_number_text(b, "prefill_tokens_per_s", "{:.1f}") << " ("
      << json_number_text(t, "prefill_speedup", "{:.2f}") << "x) | " << json_number_text(a, "ppl") << " -> "
      << json_number_text(b, "ppl") << " (" << json_number_text(t, "ppl_ratio", "{:.3f}") << "x) |\n";
  }
  o << "\n";
  return o.str();
}

// Reproduce (the command and the resolved configuration) and use (from_pretrained).
std::string reproduce_and_use(const Config& c, ModelOutput out, const std::filesystem::path& run_dir) {
  const char* auto_class = out == ModelOutput::token_logits ? "AutoModelForCausalLM" : "AutoModel";
  std::ostringstream o;
  o << "## Reproduce\n\n```\nmpirun -np " << process_info().size << " hawada-pipeline " << c.source.filename().string()
    << "\n```\n\nwith this configuration (resolved):\n\n```toml\n"
    << read_text_file(RunLayout(run_dir).resolved_config()) << "```\n\n"
    << "## Use\n\n```python\nfrom transformers import " << auto_class << "\nmodel = " << auto_class
    << ".from_pretrained(\"path/to/" << c.export_.name << "\")\n```\n";
  return o.str();
}

}  // namespace

std::string model_card(const Config& c, const LoadedModel& dense, const json& summary,
                       const std::filesystem::path& run_dir) {
  const std::string base = c.export_.base_model.empty() ? c.model.path.filename().string() : c.export_.base_model;
  const json& shape = summary.at("shape");
  const json& ev = summary.value("evaluate", json::object());
  const json& q = ev.value("export", json::object());
  const ModelOutput out = dense.shape.traits.output;
  std::ostringstream o;
  o << front_matter(base, out) << "# " << c.export_.name << "\n\n"
    << "A structurally pruned version of `" << base << "` (" << dense.arch.architecture << "), made with "
    << "hawada-pipeline. It is a plain Hugging Face checkpoint: load it with `from_pretrained`, no custom code.\n\n"
    << how_it_was_made(c, out, summary, run_dir) << shape_table(dense.shape, shape, summary) << quality_section(ev, q)
    << speed_section(ev) << llama_cpp_section(summary, ev) << reproduce_and_use(c, out, run_dir);
  return o.str();
}

}  // namespace hawada
