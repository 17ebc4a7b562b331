#include "pipeline/tools/make.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <nlohmann/json.hpp>

#include "adapters/adapter.h"
#include "core/base/errors.h"
#include "core/base/fs.h"
#include "core/base/json_input.h"
#include "core/base/log.h"
#include "core/data/h5.h"
#include "core/io/checkpoint.h"
#include "core/io/safetensors.h"

namespace hawada {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

json llama_config(const std::string& preset) {
  if (preset == "tiny")
    return {{"architectures", {"LlamaForCausalLM"}},
            {"model_type", "llama"},
            {"vocab_size", 512},
            {"hidden_size", 64},
            {"intermediate_size", 256},
            {"num_hidden_layers", 4},
            {"num_attention_heads", 8},
            {"num_key_value_heads", 2},
            {"head_dim", 8},
            {"hidden_act", "silu"},
            {"max_position_embeddings", 256},
            {"rms_norm_eps", 1e-6},
            {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 10000.0}}},
            {"tie_word_embeddings", true},
            {"attention_bias", false},
            {"mlp_bias", false},
            {"initializer_range", 0.1},
            {"bos_token_id", 1},
            {"eos_token_id", 2},
            {"dtype", "float32"},
            {"torch_dtype", "float32"}};
  if (preset == "llama-3.2-1b")
    return {{"architectures", {"LlamaForCausalLM"}},
            {"model_type", "llama"},
            {"vocab_size", 128256},
            {"hidden_size", 2048},
            {"intermediate_size", 8192},
            {"num_hidden_layers", 16},
            {"num_attention_heads", 32},
            {"num_key_value_heads", 8},
            {"head_dim", 64},
            {"hidden_act", "silu"},
            {"max_position_embeddings", 131072},
            {"rms_norm_eps", 1e-5},
            {"rope_parameters",
             {{"rope_type", "llama3"},
              {"rope_theta", 500000.0},
              {"factor", 32.0},
              {"low_freq_factor", 1.0},
              {"high_freq_factor", 4.0},
              {"original_max_position_embeddings", 8192}}},
            {"tie_word_embeddings", true},
            {"attention_bias", false},
            {"mlp_bias", false},
            {"initializer_range", 0.02},
            {"bos_token_id", 128000},
            {"eos_token_id", 128001},
            {"dtype", "bfloat16"},
            {"torch_dtype", "bfloat16"}};
  throw UsageError("--preset '" + preset + "' is not a llama preset (tiny, llama-3.2-1b)");
}

// Gemma 3 text models (Gemma3ForCausalLM): 270M and 1B as Google's configs give them; tiny for tests.
json gemma3_config(const std::string& preset) {
  struct Size {
    int64_t vocab, hidden, ffn, layers, heads, kv_heads, head_dim, window;
  };
  Size z;
  if (preset == "tiny")
    z = {512, 64, 256, 6, 4, 2, 16, 16};
  else if (preset == "gemma-3-270m")
    z = {262144, 640, 2048, 18, 4, 1, 256, 512};
  else if (preset == "gemma-3-1b")
    z = {262144, 1152, 6912, 26, 4, 1, 256, 512};
  else
    throw UsageError("--preset '" + preset + "' is not a gemma3_text preset (tiny, gemma-3-270m, gemma-3-1b)");
  json layer_types = json::array();
  for (int64_t i = 0; i < z.layers; ++i) layer_types.push_back((i + 1) % 6 ? "sliding_attention" : "full_attention");
  const bool tiny = preset == "tiny";
  return {{"architectures", {"Gemma3ForCausalLM"}},
          {"model_type", "gemma3_text"},
          {"vocab_size", z.vocab},
          {"hidden_size", z.hidden},
          {"intermediate_size", z.ffn},
          {"num_hidden_layers", z.layers},
          {"num_attention_heads", z.heads},
          {"num_key_value_heads", z.kv_heads},
          {"head_dim", z.head_dim},
          {"hidden_activation", "gelu_pytorch_tanh"},
          {"query_pre_attn_scalar", z.head_dim},
          {"sliding_window", z.window},
          {"layer_types", layer_types},
          {"max_position_embeddings", tiny ? 256 : 32768},
          {"rms_norm_eps", 1e-6},
          {"rope_parameters",
           {{"full_attention", {{"rope_type", "default"}, {"rope_theta", 1000000.0}}},
            {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 10000.0}}}}},
          {"attn_logit_softcapping", nullptr},
          {"final_logit_softcapping", nullptr},
          {"tie_word_embeddings", true},
          {"attention_bias", false},
          {"use_bidirectional_attention", false},
          {"initializer_range", tiny ? 0.1 : 0.02},
          {"pad_token_id", 0},
          {"bos_token_id", 2},
          {"eos_token_id", 1},
          {"dtype", tiny ? "float32" : "bfloat16"},
          {"torch_dtype", tiny ? "float32" : "bfloat16"}};
}

// Phi-3 (Phi3ForCausalLM: fused qkv_proj and gate_up_proj): Phi-3-mini-4k and Phi-4-mini (GQA, 3/4 of each
// head rotated, LongRoPE, tied) as Microsoft's configs give them; tiny (GQA, half of each head rotated,
// windowed) for tests.
json phi3_config(const std::string& preset) {
  const bool tiny = preset == "tiny";
  json c = {{"architectures", {"Phi3ForCausalLM"}},
            {"model_type", "phi3"},
            {"hidden_act", "silu"},
            {"rms_norm_eps", 1e-5},
            {"attention_dropout", 0.0},
            {"resid_pdrop", 0.0},
            {"embd_pdrop", 0.0},
            {"initializer_range", tiny ? 0.1 : 0.02},
            {"dtype", tiny ? "float32" : "bfloat16"},
            {"torch_dtype", tiny ? "float32" : "bfloat16"}};
  if (tiny) {
    c.update({{"vocab_size", 512},
              {"hidden_size", 64},
              {"intermediate_size", 128},
              {"num_hidden_layers", 2},
              {"num_attention_heads", 4},
              {"num_key_value_heads", 2},
              {"max_position_embeddings", 256},
              {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 10000.0}, {"partial_rotary_factor", 0.5}}},
              {"sliding_window", 64},
              {"tie_word_embeddings", false},
              {"bos_token_id", 1},
              {"eos_token_id", 2},
              {"pad_token_id", 0}});
  } else if (preset == "phi-3-mini") {
    c.update({{"vocab_size", 32064},
              {"hidden_size", 3072},
              {"intermediate_size", 8192},
              {"num_hidden_layers", 32},
              {"num_attention_heads", 32},
              {"num_key_value_heads", 32},
              {"max_position_embeddings", 4096},
              {"original_max_position_embeddings", 4096},
              {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 10000.0}}},
              {"sliding_window", 2047},
              {"tie_word_embeddings", false},
              {"bos_token_id", 1},
              {"eos_token_id", 32000},
              {"pad_token_id", 32000}});
  } else if (preset == "phi-4-mini") {
    // LongRoPE's factor lists (48 each: rotated channels / 2) are 1 here: make-model sizes a model with random
    // weights, it does not reproduce the trained factors.
    const std::vector<double> ones(48, 1.0);
    c.update({{"vocab_size", 200064},
              {"hidden_size", 3072},
              {"intermediate_size", 8192},
              {"num_hidden_layers", 32},
              {"num_attention_heads", 24},
              {"num_key_value_heads", 8},
              {"max_position_embeddings", 131072},
              {"original_max_position_embeddings", 4096},
              {"rope_parameters",
               {{"rope_type", "longrope"},
                {"rope_theta", 10000.0},
                {"partial_rotary_factor", 0.75},
                {"original_max_position_embeddings", 4096},
                {"short_factor", ones},
                {"long_factor", ones}}},
              {"sliding_window", 262144},
              {"tie_word_embeddings", true},
              {"bos_token_id", 199999},
              {"eos_token_id", 199999},
              {"pad_token_id", 199999}});
  } else {
    throw UsageError("--preset '" + preset + "' is not a phi3 preset (tiny, phi-3-mini, phi-4-mini)");
  }
  return c;
}

// GPT-NeoX (GPTNeoXForCausalLM: Pythia): Pythia-160M and -1B as EleutherAI's configs give them; tiny for tests.
json gpt_neox_config(const std::string& preset) {
  struct Size {
    int64_t vocab, hidden, layers, heads;
  };
  Size z;
  if (preset == "tiny")
    z = {512, 64, 2, 4};
  else if (preset == "pythia-160m")
    z = {50304, 768, 12, 12};
  else if (preset == "pythia-1b")
    z = {50304, 2048, 16, 8};
  else
    throw UsageError("--preset '" + preset + "' is not a gpt_neox preset (tiny, pythia-160m, pythia-1b)");
  const bool tiny = preset == "tiny";
  return {{"architectures", {"GPTNeoXForCausalLM"}},
          {"model_type", "gpt_neox"},
          {"vocab_size", z.vocab},
          {"hidden_size", z.hidden},
          {"intermediate_size", 4 * z.hidden},
          {"num_hidden_layers", z.layers},
          {"num_attention_heads", z.heads},
          {"hidden_act", "gelu"},
          {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 10000.0}, {"partial_rotary_factor", 0.25}}},
          {"max_position_embeddings", tiny ? 256 : 2048},
          {"layer_norm_eps", 1e-5},
          {"use_parallel_residual", true},
          {"attention_bias", true},
          {"tie_word_embeddings", false},
          {"initializer_range", tiny ? 0.1 : 0.02},
          {"bos_token_id", 0},
          {"eos_token_id", 0},
          {"dtype", tiny ? "float32" : "float16"},
          {"torch_dtype", tiny ? "float32" : "float16"}};
}

json vit_config(const std::string& preset) {
  json c;
  if (preset == "tiny")
    c = {{"hidden_size", 64},        {"num_hidden_layers", 2}, {"num_attention_heads", 4},
         {"intermediate_size", 256}, {"image_size", 32},       {"patch_size", 8},
         {"initializer_range", 0.1}, {"dtype", "float32"},     {"torch_dtype", "float32"}};
  else if (preset == "vit-base-patch16-224")
    c = {{"hidden_size", 768},        {"num_hidden_layers", 12}, {"num_attention_heads", 12},
         {"intermediate_size", 3072}, {"image_size", 224},       {"patch_size", 16},
         {"initializer_range", 0.02}, {"dtype", "float32"},      {"torch_dtype", "float32"}};
  else
    throw UsageError("--preset '" + preset + "' is not a vit preset (tiny, vit-base-patch16-224)");
  const int labels = preset == "tiny" ? 10 : 1000;
  json id2label = json::object(), label2id = json::object();
  for (int i = 0; i < labels; ++i) {
    id2label[std::to_string(i)] = "LABEL_" + std::to_string(i);
    label2id["LABEL_" + std::to_string(i)] = i;
  }
  c.update({{"architectures", {"ViTForImageClassification"}},
            {"model_type", "vit"},
            {"hidden_act", "gelu"},
            {"layer_norm_eps", 1e-12},
            {"num_channels", 3},
            {"qkv_bias", true},
            {"encoder_stride", 16},
            {"hidden_dropout_prob", 0.0},
            {"attention_probs_dropout_prob", 0.0},
            {"id2label", id2label},
            {"label2id", label2id}});
  return c;
}

json bert_config(const std::string& preset) {
  if (preset != "tiny") throw UsageError("--preset '" + preset + "' is not a bert preset (tiny)");
  return {{"architectures", {"BertModel"}},
          {"model_type", "bert"},
          {"vocab_size", 512},
          {"hidden_size", 64},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 4},
          {"intermediate_size", 256},
          {"max_position_embeddings", 128},
          {"type_vocab_size", 2},
          {"hidden_act", "gelu"},
          {"layer_norm_eps", 1e-12},
          {"position_embedding_type", "absolute"},
          {"pad_token_id", 0},
          {"hidden_dropout_prob", 0.0},
          {"attention_probs_dropout_prob", 0.0},
          {"initializer_range", 0.1},
          {"dtype", "float32"},
          {"torch_dtype", "float32"}};
}

}  // namespace

void make_model(const std::string& arch_name, const std::string& preset, int64_t seed, const fs::path& out_dir) {
  json config;
  if (arch_name == "llama")
    config = llama_config(preset);
  else if (arch_name == "vit")
    config = vit_config(preset);
  else if (arch_name == "bert")
    config = bert_config(preset);
  else if (arch_name == "gemma3_text")
    config = gemma3_config(preset);
  else if (arch_name == "phi3")
    config = phi3_config(preset);
  else if (arch_name == "gpt_neox")
    config = gpt_neox_config(preset);
  else
    throw UsageError("--arch must be llama, gemma3_text, phi3, gpt_neox, vit or bert, got '" + arch_name + "'");
  // The weights from the architecture's role table: every weight its config implies, with its shape.
  const ModelAdapter& adapter = adapter_for(config, out_dir / "config.json");
  ArchSummary arch = adapter.summarize(config, out_dir / "config.json");
  arch.pooler = arch.num_labels == 0;  // as transformers saves a bare encoder (BertModel, ViTModel): with its pooler
  auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed));
  const at::ScalarType dtype = config["dtype"] == "bfloat16"  ? at::kBFloat16
                               : config["dtype"] == "float16" ? at::kHalf
                                                              : at::kFloat;
  const auto weights = adapter.roles().random_weights(arch, config["initializer_range"].get<double>(), dtype, gen,
                                                      adapter.weight_prefixes().front());
  publish_directory(out_dir, [&](const fs::path& tmp) {
    atomic_write_text(tmp / "config.json", config.dump(2) + "\n");
    if (config.contains("bos_token_id")) {
      atomic_write_text(
          tmp / "generation_config.json",
          json{{"bos_token_id", config["bos_token_id"]}, {"eos_token_id", config["eos_token_id"]}}.dump(2) + "\n");
    }
    if (config.contains("image_size")) {
      const json pre{{"do_normalize", true},
                     {"do_rescale", true},
                     {"do_resize", true},
                     {"image_mean", {0.5, 0.5, 0.5}},
                     {"image_std", {0.5, 0.5, 0.5}},
                     {"image_processor_type", "ViTImageProcessor"},
                     {"resample", 2},
                     {"rescale_factor", 1.0 / 255},
                     {"size", {{"height", config["image_size"]}, {"width", config["image_size"]}}}};
      atomic_write_text(tmp / "preprocessor_config.json", pre.dump(2) + "\n");
    }
    safetensors::write_model_weights(tmp, weights, 5'000'000'000ULL);
  });
  uint64_t params = 0;
  for (const auto& w : weights) params += static_cast<uint64_t>(w.tensor.numel());
  log::info("make-model: " + out_dir.string() + ": " + arch_name + " " + preset + ", " + std::to_string(params) +
            " parameters, seed " + std::to_string(seed));
}

namespace {

// The BOS id every sequence starts with when the model's tokenizer puts one in front of a text
// (tokenizer_config.json: "add_bos_token": true, as Gemma's): what such a model was trained on; -1 otherwise.
int64_t leading_bos(const fs::path& model_dir, const nlohmann::json& config) {
  const fs::path file = model_dir / "tokenizer_config.json";
  if (!fs::exists(file) || !config.contains("bos_token_id") || !config["bos_token_id"].is_number_integer()) return -1;
  const std::string text = read_text_file(file);
  if (const std::string problem = json_depth_problem(text); !problem.empty())
    throw DataError("'" + file.string() + "': " + problem);
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw DataError("'" + file.string() + "': not valid JSON");
  const auto add = j.find("add_bos_token");
  return add != j.end() && add->is_boolean() && add->get<bool>() ? config["bos_token_id"].get<int64_t>() : -1;
}

}  // namespace

void make_data(const fs::path& model_dir, int64_t samples, int64_t seq_len, int64_t seed, const fs::path& out_file) {
  if (samples < 1) throw UsageError("--samples must be at least 1");
  if (fs::exists(out_file)) throw IoError("'" + out_file.string() + "' exists; make-data never overwrites");
  const HfCheckpoint ckpt = HfCheckpoint::open(model_dir);
  const auto config_file = model_dir / "config.json";
  const ArchSummary arch = adapter_for(ckpt.config(), config_file).summarize(ckpt.config(), config_file);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed));
  if (!out_file.parent_path().empty()) fs::create_directories(out_file.parent_path());
  const fs::path tmp = temp_sibling(out_file);
  try {
    h5::File f = h5::File::create(tmp);
    if (arch.vocab_size > 0) {
      if (seq_len < 1) throw UsageError("--seq-len must be at least 1 for a language model");
      const at::Tensor ids = at::randint(arch.vocab_size, {samples, seq_len}, gen, at::kInt);
      if (const int64_t bos = leading_bos(model_dir, ckpt.config()); bos >= 0) ids.select(1, 0).fill_(bos);
      f.write("input_ids", h5::Type::i32, {samples, seq_len}, ids.data_ptr());
    } else {
      // Smooth patterns (low-resolution noise, upsampled) so images have structure, as uint8.
      const int64_t s = arch.image_size;
      at::Tensor low = at::rand({samples, 3, 4, 4}, gen);
      at::Tensor img = at::upsample_bilinear2d(low, {s, s}, false);
      img = (img * 255).round().clamp(0, 255).to(at::kByte).contiguous();
      f.write("pixel_values", h5::Type::u8, {samples, 3, s, s}, img.data_ptr());
    }
    f.close();
    sync_file(tmp);
    rename_into(tmp, out_file);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
  log::info("make-data: " + out_file.string() + ": " + std::to_string(samples) +
            (arch.vocab_size > 0 ? " sequences of " + std::to_string(seq_len) + " tokens" : " images"));
}

}  // namespace hawada
