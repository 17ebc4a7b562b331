#include "pipeline/config.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <span>
#include <sstream>
#include <system_error>
#include <type_traits>
#include <variant>
#include <vector>

#include <fmt/format.h>

// Link against the compiled libtomlplusplus (Debian) instead of instantiating the parser here.
#ifndef TOML_HEADER_ONLY
#define TOML_HEADER_ONLY 0
#endif
#include <toml++/toml.h>

#include "core/base/errors.h"
#include "core/base/text.h"
#include "runtimes/tool.h"

namespace hawada {
namespace fs = std::filesystem;

namespace {

// ---- Enum spellings, in declaration order (to_string indexes them). --------------------------------

constexpr std::string_view kComputeDtype[] = {"fp32", "bf16"};
constexpr std::string_view kHeadMatmul[] = {"auto", "fp32", "bf16"};
constexpr std::string_view kDataFormat[] = {"tokens_h5", "tokens_bin", "images_h5"};
constexpr std::string_view kTokenDtype[] = {"uint16", "uint32"};
constexpr std::string_view kStoreDtype[] = {"fp16", "bf16"};
constexpr std::string_view kTeacherLogits[] = {"top_k", "sampled"};
constexpr std::string_view kBudgetMetric[] = {"params", "non_embedding_params", "latency"};
constexpr std::string_view kLatencyMode[] = {"prefill", "decode"};
constexpr std::string_view kBudgetRuntime[] = {"model", "llama.cpp"};
constexpr std::string_view kExportDtype[] = {"keep", "bf16", "fp32"};
constexpr std::string_view kRefitOrder[] = {"after_scales", "before_scales"};
constexpr std::string_view kHealKeep[] = {"last", "best"};
constexpr std::string_view kDistBackend[] = {"auto", "mpi", "nccl"};
constexpr std::string_view kDeviceRequest[] = {"auto", "cpu", "cuda"};
constexpr std::string_view kGgufType[] = {"f16", "q8_0", "q4_k_m"};
constexpr std::string_view kEvalRuntime[] = {"libtorch", "llama.cpp"};

std::span<const std::string_view> names_of(ComputeDtype) { return kComputeDtype; }
std::span<const std::string_view> names_of(HeadMatmul) { return kHeadMatmul; }
std::span<const std::string_view> names_of(DataFormat) { return kDataFormat; }
std::span<const std::string_view> names_of(TokenDtype) { return kTokenDtype; }
std::span<const std::string_view> names_of(StoreDtype) { return kStoreDtype; }
std::span<const std::string_view> names_of(TeacherLogits) { return kTeacherLogits; }
std::span<const std::string_view> names_of(BudgetMetric) { return kBudgetMetric; }
std::span<const std::string_view> names_of(LatencyMode) { return kLatencyMode; }
std::span<const std::string_view> names_of(BudgetRuntime) { return kBudgetRuntime; }
std::span<const std::string_view> names_of(ExportDtype) { return kExportDtype; }
std::span<const std::string_view> names_of(RefitOrder) { return kRefitOrder; }
std::span<const std::string_view> names_of(HealKeep) { return kHealKeep; }
std::span<const std::string_view> names_of(DistBackend) { return kDistBackend; }
std::span<const std::string_view> names_of(DeviceRequest) { return kDeviceRequest; }
std::span<const std::string_view> names_of(GgufType) { return kGgufType; }
std::span<const std::string_view> names_of(EvalRuntime) { return kEvalRuntime; }

template <class E>
std::string_view name_of(E value) {
  const auto names = names_of(value);
  const auto i = static_cast<std::size_t>(value);
  return i < names.size() ? names[i] : std::string_view("<invalid>");
}

// ---- Key tables. ------------------------------------------------------------------------------------

/// A pointer to one field of a Config; the alternative says how the key is read and written.
using Ref = std::variant<int*, int64_t*, uint64_t*, double*, bool*, fs::path*, std::string*, ComputeDtype*, HeadMatmul*,
                         DataFormat*, TokenDtype*, StoreDtype*, TeacherLogits*, BudgetMetric*, LatencyMode*,
                         BudgetRuntime*, GgufType*, ExportDtype*, RefitOrder*, HealKeep*, DistBackend*, DeviceRequest*,
                         std::vector<GgufType>*, std::vector<EvalRuntime>*>;

template <auto Section, auto Member>
Ref at(Config& c) {
  return &(c.*Section.*Member);
}

/// Extra validation beyond type and numeric range.
enum class Check { none, model_dir, data_file, optional_file, file_name, weight_kinds, llama_cpp_dir, program };

constexpr double kInf = std::numeric_limits<double>::infinity();

/// Allowed numeric interval and extra checks for one key.
struct Rule {
  double lo = -kInf, hi = kInf;
  bool lo_open = false, hi_open = false;
  Check check = Check::none;
  bool required = false;
};

constexpr Rule at_least(double lo) { return {.lo = lo}; }
constexpr Rule above(double lo) { return {.lo = lo, .lo_open = true}; }
constexpr Rule between(double lo, double hi) { return {.lo = lo, .hi = hi}; }
constexpr Rule checked(Check check, bool required = false) { return {.check = check, .required = required}; }

struct Key {
  std::string_view name;
  Ref (*ref)(Config&);
  Rule rule{};
};

struct Section {
  std::string_view name;
  std::span<const Key> keys;
};

constexpr Key kRun[] = {
    {"dir", at<&Config::run, &RunConfig::dir>},
    {"seed", at<&Config::run, &RunConfig::seed>, at_least(0)},
    {"threads_per_rank", at<&Config::run, &RunConfig::threads_per_rank>, at_least(0)},
    {"device", at<&Config::run, &RunConfig::device>},
};
constexpr Key kModel[] = {
    {"path", at<&Config::model, &ModelConfig::path>, checked(Check::model_dir, true)},
    {"dtype", at<&Config::model, &ModelConfig::dtype>},
    {"head_matmul", at<&Config::model, &ModelConfig::head_matmul>},
};
constexpr Key kData[] = {
    {"format", at<&Config::data, &DataConfig::format>},
    {"path", at<&Config::data, &DataConfig::path>, checked(Check::data_file, true)},
    {"seq_len", at<&Config::data, &DataConfig::seq_len>, between(1, 1048576)},
    {"samples", at<&Config::data, &DataConfig::samples>, at_least(0)},
    {"token_dtype", at<&Config::data, &DataConfig::token_dtype>},
};
constexpr Key kTeacher[] = {
    {"model", at<&Config::teacher, &TeacherConfig::model>, checked(Check::model_dir, false)},
    {"cache_root", at<&Config::teacher, &TeacherConfig::cache_root>},
    {"logits", at<&Config::teacher, &TeacherConfig::logits>},
    {"top_k", at<&Config::teacher, &TeacherConfig::top_k>, between(1, 1024)},
    {"samples", at<&Config::teacher, &TeacherConfig::samples>, between(1, 255)},
    {"seed", at<&Config::teacher, &TeacherConfig::seed>, at_least(0)},
    {"store_dtype", at<&Config::teacher, &TeacherConfig::store_dtype>},
    {"batch_size", at<&Config::teacher, &TeacherConfig::batch_size>, at_least(1)},
};
constexpr Key kGates[] = {
    {"heads", at<&Config::gates, &GatesConfig::heads>},
    {"ffn", at<&Config::gates, &GatesConfig::ffn>},
    {"hidden", at<&Config::gates, &GatesConfig::hidden>},
    {"layers", at<&Config::gates, &GatesConfig::layers>},
    {"init", at<&Config::gates, &GatesConfig::init>, {.lo = 0, .hi = 1, .lo_open = true, .hi_open = true}},
    {"temperature", at<&Config::gates, &GatesConfig::temperature>, above(0)},
};
constexpr Key kTrain[] = {
    {"steps", at<&Config::train, &TrainConfig::steps>, at_least(1)},
    {"micro_batch", at<&Config::train, &TrainConfig::micro_batch>, at_least(1)},
    {"grad_accum", at<&Config::train, &TrainConfig::grad_accum>, at_least(1)},
    {"lr", at<&Config::train, &TrainConfig::lr>, above(0)},
    {"warmup", at<&Config::train, &TrainConfig::warmup>, at_least(0)},  // and <= steps, checked after
    {"kd_temperature", at<&Config::train, &TrainConfig::kd_temperature>, above(0)},
    {"mse_weight", at<&Config::train, &TrainConfig::mse_weight>, at_least(0)},
    {"checkpoint_every", at<&Config::train, &TrainConfig::checkpoint_every>, at_least(1)},
    {"holdout", at<&Config::train, &TrainConfig::holdout>, at_least(0)},
    {"importance_batches", at<&Config::train, &TrainConfig::importance_batches>, at_least(1)},
};
constexpr Key kBudget[] = {
    {"metric", at<&Config::budget, &BudgetConfig::metric>},
    {"target", at<&Config::budget, &BudgetConfig::target>, {.lo = 0, .hi = 1, .lo_open = true}},
    {"latency_batch", at<&Config::budget, &BudgetConfig::latency_batch>, at_least(1)},
    {"latency_mode", at<&Config::budget, &BudgetConfig::latency_mode>},
    {"decode_context", at<&Config::budget, &BudgetConfig::decode_context>, between(1, 1048576)},
    {"layer_overhead_s", at<&Config::budget, &BudgetConfig::layer_overhead_s>, between(0, 1)},
    {"device_flops", at<&Config::budget, &BudgetConfig::device_flops>, above(0)},
    {"device_bandwidth", at<&Config::budget, &BudgetConfig::device_bandwidth>, above(0)},
    {"runtime", at<&Config::budget, &BudgetConfig::runtime>},
    {"gguf", at<&Config::budget, &BudgetConfig::gguf>},
    {"threads", at<&Config::budget, &BudgetConfig::threads>, between(0, 4096)},
    {"rates", at<&Config::budget, &BudgetConfig::rates>, checked(Check::optional_file)},
};
constexpr Key kSearch[] = {
    {"ffn_multiple", at<&Config::search, &SearchConfig::ffn_multiple>, at_least(1)},
    {"hidden_multiple", at<&Config::search, &SearchConfig::hidden_multiple>, at_least(1)},
    {"latency_table", at<&Config::search, &SearchConfig::latency_table>, checked(Check::optional_file)},
    {"prune_kv_groups", at<&Config::search, &SearchConfig::prune_kv_groups>},
    {"probe_shapes", at<&Config::search, &SearchConfig::probe_shapes>, between(0, 64)},
    {"probe_steps", at<&Config::search, &SearchConfig::probe_steps>, at_least(1)},
    {"probe_samples", at<&Config::search, &SearchConfig::probe_samples>, at_least(1)},
};
constexpr Key kCalibrate[] = {
    {"steps", at<&Config::calibrate, &CalibrateConfig::steps>, at_least(0)},
    {"lr", at<&Config::calibrate, &CalibrateConfig::lr>, above(0)},
    {"warmup", at<&Config::calibrate, &CalibrateConfig::warmup>, at_least(0)},
    {"micro_batch", at<&Config::calibrate, &CalibrateConfig::micro_batch>, at_least(0)},
    {"grad_accum", at<&Config::calibrate, &CalibrateConfig::grad_accum>, at_least(0)},
    {"output_scales", at<&Config::calibrate, &CalibrateConfig::output_scales>},
    {"checkpoint_every", at<&Config::calibrate, &CalibrateConfig::checkpoint_every>, at_least(1)},
    {"reconstruct", at<&Config::calibrate, &CalibrateConfig::reconstruct>},
    {"reconstruct_samples", at<&Config::calibrate, &CalibrateConfig::reconstruct_samples>, at_least(1)},
    {"reconstruct_attention", at<&Config::calibrate, &CalibrateConfig::reconstruct_attention>},
    {"reconstruct_order", at<&Config::calibrate, &CalibrateConfig::reconstruct_order>},
    {"refit_spans", at<&Config::calibrate, &CalibrateConfig::refit_spans>},
};
constexpr Key kExport[] = {
    {"name", at<&Config::export_, &ExportConfig::name>, checked(Check::file_name)},
    {"max_shard_size", at<&Config::export_, &ExportConfig::max_shard_size>, at_least(1024)},
    {"dtype", at<&Config::export_, &ExportConfig::dtype>},
    {"base_model", at<&Config::export_, &ExportConfig::base_model>},
    {"gguf", at<&Config::export_, &ExportConfig::gguf>},
    {"llama_cpp", at<&Config::export_, &ExportConfig::llama_cpp>, checked(Check::llama_cpp_dir)},
    {"python", at<&Config::export_, &ExportConfig::python>, checked(Check::program)},
};
constexpr Key kHeal[] = {
    {"steps", at<&Config::heal, &HealConfig::steps>, at_least(0)},
    {"lr", at<&Config::heal, &HealConfig::lr>, above(0)},
    {"warmup", at<&Config::heal, &HealConfig::warmup>, at_least(0)},
    {"micro_batch", at<&Config::heal, &HealConfig::micro_batch>, at_least(0)},
    {"grad_accum", at<&Config::heal, &HealConfig::grad_accum>, at_least(0)},
    {"weight_decay", at<&Config::heal, &HealConfig::weight_decay>, at_least(0)},
    {"clip", at<&Config::heal, &HealConfig::clip>, at_least(0)},
    {"train", at<&Config::heal, &HealConfig::train>, checked(Check::weight_kinds)},
    {"checkpoint_every", at<&Config::heal, &HealConfig::checkpoint_every>, at_least(1)},
    {"eval_every", at<&Config::heal, &HealConfig::eval_every>, at_least(0)},
    {"data", at<&Config::heal, &HealConfig::data>, checked(Check::optional_file)},
    {"samples", at<&Config::heal, &HealConfig::samples>, at_least(0)},
    {"hidden_weight", at<&Config::heal, &HealConfig::hidden_weight>, at_least(0)},
    {"keep", at<&Config::heal, &HealConfig::keep>},
};
constexpr Key kEvaluate[] = {
    {"data", at<&Config::evaluate, &EvaluateConfig::data>, checked(Check::optional_file)},
    {"samples", at<&Config::evaluate, &EvaluateConfig::samples>, at_least(0)},
    {"latency_repeats", at<&Config::evaluate, &EvaluateConfig::latency_repeats>, between(1, 1000)},
    {"runtimes", at<&Config::evaluate, &EvaluateConfig::runtimes>},
    {"threads", at<&Config::evaluate, &EvaluateConfig::threads>, between(0, 1024)},
};
constexpr Key kDist[] = {
    {"backend", at<&Config::dist, &DistConfig::backend>},
    {"timeout_s", at<&Config::dist, &DistConfig::timeout_s>, above(0)},
    {"check_every", at<&Config::dist, &DistConfig::check_every>, at_least(1)},
};

constexpr Section kSections[] = {
    {"run", kRun},       {"model", kModel},       {"data", kData},     {"teacher", kTeacher},     {"gates", kGates},
    {"train", kTrain},   {"budget", kBudget},     {"search", kSearch}, {"calibrate", kCalibrate}, {"heal", kHeal},
    {"export", kExport}, {"evaluate", kEvaluate}, {"dist", kDist},
};

/// max_shard_size units, matched case-insensitively; "" means bytes.
constexpr std::pair<std::string_view, uint64_t> kSizeUnits[] = {
    {"", 1},
    {"b", 1},
    {"kb", 1000},
    {"mb", 1'000'000},
    {"gb", 1'000'000'000},
    {"kib", 1ULL << 10},
    {"mib", 1ULL << 20},
    {"gib", 1ULL << 30},
};

// ---- Formatting. -------------------------------------------------------------------------------------

/// A TOML basic string literal: valid both in messages and in to_toml output.
std::string quote(std::string_view s) {
  std::string out = "\"";
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (ch) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          out += fmt::format("\\u{:04X}", c);
        } else {
          out += ch;
        }
    }
  }
  return out + "\"";
}

/// Shortest round-tripping text of a double, always with '.' or an exponent so TOML reads a float back.
std::string format_double(double v) {
  char buf[64];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  std::string s(buf, ec == std::errc() ? end : buf);
  if (std::isfinite(v) && s.find_first_of(".e") == std::string::npos) s += ".0";
  return s;
}

/// "type value" of a TOML node, for the "got ..." part of messages.
std::string describe(const toml::node& node) {
  if (auto v = node.as_string()) return "string " + quote(v->get());
  if (auto v = node.as_integer()) return "integer " + std::to_string(v->get());
  if (auto v = node.as_floating_point()) return "float " + format_double(v->get());
  if (auto v = node.as_boolean()) return std::string("boolean ") + (v->get() ? "true" : "false");
  if (node.is_table()) return "table";
  if (node.is_array()) return "array";
  if (node.is_date()) return "date";
  if (node.is_time()) return "time";
  return "date-time";
}

std::string join_quoted(std::span<const std::string_view> names) {
  std::string out;
  for (const auto name : names) out += (out.empty() ? "" : ", ") + quote(name);
  return out;
}

// ---- Reading. ----------------------------------------------------------------------------------------

/// Where messages point and relative paths resolve.
struct Reader {
  std::string file;  // as given by the caller
  fs::path base;     // absolute directory of the config file

  [[noreturn]] void fail(const toml::source_position& pos, std::string_view key, std::string_view what) const {
    const bool known = pos.line > 0;
    throw ConfigError(file + ":" + std::to_string(known ? pos.line : 1) + ":" + std::to_string(known ? pos.column : 1) +
                      ": " + std::string(key) + ": " + std::string(what));
  }
  [[noreturn]] void type_error(const toml::node& node, std::string_view key, std::string_view expected) const {
    fail(node.source().begin, key, "wrong type (expected " + std::string(expected) + ", got " + describe(node) + ")");
  }
};

fs::path resolve(const fs::path& base, const fs::path& p) {
  fs::path r = (base / p).lexically_normal();
  if (!r.has_filename() && r.has_relative_path()) r = r.parent_path();  // drop a trailing separator
  return r;
}

/// Numbers as printed in range messages; integers print without ".0".
std::string number_text(double v) {
  return v == std::trunc(v) && std::abs(v) < 1e18 ? std::to_string(static_cast<int64_t>(v)) : format_double(v);
}

void check_range(const Reader& rd, const toml::node& node, std::string_view key, const Rule& r, double v,
                 const std::string& exact = {}) {
  const bool low = r.lo_open ? !(v > r.lo) : !(v >= r.lo);
  const bool high = r.hi_open ? !(v < r.hi) : !(v <= r.hi);
  if (!low && !high) return;
  std::string range = std::isinf(r.hi) ? std::string(r.lo_open ? "> " : ">= ") + number_text(r.lo)
                                       : std::string("in ") + (r.lo_open ? "(" : "[") + number_text(r.lo) + ", " +
                                             number_text(r.hi) + (r.hi_open ? ")" : "]");
  rd.fail(node.source().begin, key,
          "out of range (expected " + range + ", got " + (exact.empty() ? number_text(v) : exact) + ")");
}

/// Parses "123", "500MB", "2GiB", ... into bytes; nullopt when malformed or overflowing.
std::optional<uint64_t> parse_size(std::string_view s) {
  uint64_t n = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
  if (ec != std::errc() || end == s.data()) return std::nullopt;
  std::string unit(end, s.data() + s.size());
  if (!unit.empty() && unit.front() == ' ') unit.erase(0, 1);
  std::transform(unit.begin(), unit.end(), unit.begin(), [](unsigned char c) { return std::tolower(c); });
  for (const auto& [name, scale] : kSizeUnits) {
    if (unit != name) continue;
    if (n > std::numeric_limits<uint64_t>::max() / scale) return std::nullopt;
    return n * scale;
  }
  return std::nullopt;
}

void check_path(const Reader& rd, const toml::node& node, std::string_view key, Check check, const fs::path& p) {
  std::error_code ec;
  const auto st = fs::status(p, ec);
  const auto at = node.source().begin;
  const std::string got = quote(p.string());
  if (check == Check::model_dir) {
    if (!fs::exists(st))
      rd.fail(at, key, "model directory not found (expected an existing directory, got " + got + ")");
    if (!fs::is_directory(st))
      rd.fail(at, key, "not a directory (expected a Hugging Face model directory, got " + got + ")");
    if (!fs::is_regular_file(p / "config.json", ec))
      rd.fail(at, key, "no config.json in model directory (expected a Hugging Face model directory, got " + got + ")");
  } else if (check == Check::llama_cpp_dir) {
    if (!fs::is_directory(st))
      rd.fail(at, key, "directory not found (expected llama.cpp's source directory, got " + got + ")");
    if (!fs::is_regular_file(p / "convert_hf_to_gguf.py", ec))
      rd.fail(at, key,
              "no convert_hf_to_gguf.py in the directory (expected llama.cpp's source directory, got " + got +
                  "; bash launch/llama_cpp.sh makes one under .llama.cpp/src/)");
  } else if (check == Check::data_file || check == Check::optional_file) {
    if (!fs::exists(st)) rd.fail(at, key, "file not found (expected an existing file, got " + got + ")");
    if (!fs::is_regular_file(st)) rd.fail(at, key, "not a regular file (expected an existing file, got " + got + ")");
  }
}

/// Reads one value into its field, by the field's type.
struct ValueReader {
  const Reader& rd;
  const toml::node& node;
  std::string_view key;
  const Rule& rule;

  void operator()(int* out) const { *out = static_cast<int>(integer(std::numeric_limits<int>::max())); }
  void operator()(int64_t* out) const { *out = integer(kInf); }

  /// The node as an integer within the rule's range, capped at type_max.
  int64_t integer(double type_max) const {
    const auto* v = node.as_integer();
    if (!v) rd.type_error(node, key, "integer");
    Rule r = rule;
    r.lo = std::max(r.lo, -type_max - 1);
    r.hi = std::min(r.hi, type_max);
    check_range(rd, node, key, r, static_cast<double>(v->get()), std::to_string(v->get()));
    return v->get();
  }

  void operator()(uint64_t* out) const {  // a size in bytes: integer or "5GB"-style string
    const auto* i = node.as_integer();
    const auto* s = node.as_string();
    if (!i && !s) rd.type_error(node, key, "integer bytes or a size string like \"5GB\"");
    if (s) {
      const auto bytes = parse_size(s->get());
      if (!bytes)
        rd.fail(node.source().begin, key,
                "invalid size (expected an integer with an optional unit B, KB, MB, GB, KiB, MiB or GiB, like "
                "\"500MB\" or \"2GiB\", got " +
                    quote(s->get()) + ")");
      check_range(rd, node, key, rule, static_cast<double>(*bytes), std::to_string(*bytes));
      *out = *bytes;
      return;
    }
    check_range(rd, node, key, rule, static_cast<double>(i->get()), std::to_string(i->get()));
    *out = static_cast<uint64_t>(i->get());
  }

  void operator()(double* out) const {
    double v = 0;
    if (const auto* f = node.as_floating_point())
      v = f->get();
    else if (const auto* i = node.as_integer())
      v = static_cast<double>(i->get());
    else
      rd.type_error(node, key, "number");
    if (!std::isfinite(v))
      rd.fail(node.source().begin, key, "not finite (expected a finite number, got " + format_double(v) + ")");
    check_range(rd, node, key, rule, v);
    *out = v;
  }

  void operator()(bool* out) const {
    const auto* v = node.as_boolean();
    if (!v) rd.type_error(node, key, "boolean");
    *out = v->get();
  }

  const std::string& string() const {
    const auto* v = node.as_string();
    if (!v) rd.type_error(node, key, "string");
    return v->get();
  }

  void operator()(fs::path* out) const {
    const std::string& s = string();
    if (s.empty()) {
      // Optional paths: "" is the default (teacher.model = "": model.path).
      if (rule.check == Check::optional_file || rule.check == Check::llama_cpp_dir ||
          (rule.check == Check::model_dir && !rule.required))
        return void(*out = fs::path());
      rd.fail(node.source().begin, key, "empty path (expected a non-empty path, got \"\")");
    }
    *out = resolve(rd.base, s);
    check_path(rd, node, key, rule.check, *out);
  }

  void operator()(std::string* out) const {
    const std::string& s = string();
    const bool control =
        std::any_of(s.begin(), s.end(), [](char ch) { return static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f; });
    if (rule.check == Check::file_name && (s.empty() || s == "." || s == ".." ||
                                           s.find_first_of("/\\") != std::string::npos || control || s.size() > 200))
      rd.fail(node.source().begin, key,
              "invalid name (expected a non-empty file name of at most 200 bytes without '/', '\\' or control "
              "characters, not \".\" or \"..\", got " +
                  quote(s.size() > 60 ? s.substr(0, 60) + "..." : s) + ")");
    if (rule.check == Check::weight_kinds) {
      // "all", or a comma-separated list of weight kinds (each once).
      std::vector<std::string> seen;
      std::string rest = s;
      bool ok = !s.empty();
      while (ok && !rest.empty()) {
        const size_t comma = rest.find(',');
        const std::string kind = rest.substr(0, comma);
        rest = comma == std::string::npos ? "" : rest.substr(comma + 1);
        if (comma != std::string::npos && rest.empty()) ok = false;
        const bool known = kind == "all" || kind == "attention" || kind == "mlp" || kind == "norm" ||
                           kind == "embedding" || kind == "head";
        if (!known || std::find(seen.begin(), seen.end(), kind) != seen.end() || (kind == "all" && s != "all"))
          ok = false;
        seen.push_back(kind);
      }
      if (!ok)
        rd.fail(node.source().begin, key,
                "invalid weight kinds (expected \"all\" or a comma-separated list of attention, mlp, norm, "
                "embedding, head, got " +
                    quote(s) + ")");
    }
    if (rule.check == Check::program) {
      // A command looked up on PATH, or a path (relative: to the config file's directory).
      if (s.empty()) rd.fail(node.source().begin, key, "empty (expected a program name or path, got \"\")");
      if (s.find('/') != std::string::npos) return void(*out = resolve(rd.base, s).string());
    }
    *out = s;
  }

  template <class E>  // the enums; the overloads above win for every other field type
  void operator()(E* out) const {
    static_assert(std::is_enum_v<E>);
    *out = enum_value<E>(node);
  }

  template <class E>
  E enum_value(const toml::node& n) const {
    const auto* v = n.as_string();
    if (!v) rd.type_error(n, key, "string");
    const auto names = names_of(E{});
    const auto it = std::find(names.begin(), names.end(), v->get());
    if (it == names.end())
      rd.fail(n.source().begin, key,
              "unknown value (expected one of " + join_quoted(names) + ", got " + quote(v->get()) + ")");
    return static_cast<E>(it - names.begin());
  }

  template <class E>  // an array of enum values, each at most once (`export.gguf`)
  void operator()(std::vector<E>* out) const {
    const auto* array = node.as_array();
    if (!array) rd.type_error(node, key, "array of strings, each one of " + join_quoted(names_of(E{})));
    std::vector<E> values;
    for (const toml::node& element : *array) {
      const E value = enum_value<E>(element);
      if (std::find(values.begin(), values.end(), value) != values.end())
        rd.fail(element.source().begin, key,
                "duplicate value (expected each of " + join_quoted(names_of(E{})) + " at most once, got " +
                    quote(name_of(value)) + " twice)");
      values.push_back(value);
    }
    *out = std::move(values);
  }
};

/// Entries of a table ordered by where they appear, so the first mistake in the file is reported.
std::vector<std::pair<const toml::key*, const toml::node*>> in_source_order(const toml::table& table) {
  std::vector<std::pair<const toml::key*, const toml::node*>> entries;
  for (const auto& [k, v] : table) entries.emplace_back(&k, &v);
  std::stable_sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
    const auto pa = a.first->source().begin, pb = b.first->source().begin;
    return pa.line != pb.line ? pa.line < pb.line : pa.column < pb.column;
  });
  return entries;
}

std::string dotted(std::string_view section, std::string_view key) {
  return std::string(section) + "." + std::string(key);
}

/// "did you mean 'x'?" for a key of `section` (or, failing that, a key of another section).
std::string suggest_key(const Section& section, std::string_view key) {
  std::vector<std::string_view> own;
  for (const Key& k : section.keys) own.push_back(k.name);
  if (auto hit = nearest(key, own)) return "did you mean '" + dotted(section.name, *hit) + "'?";
  for (const Section& other : kSections)
    for (const Key& k : other.keys)
      if (k.name == key) return "did you mean '" + dotted(other.name, k.name) + "'?";
  std::string list;
  for (const auto name : own) list += (list.empty() ? "" : ", ") + std::string(name);
  return "expected one of: " + list;
}

[[noreturn]] void unknown_top_level(const Reader& rd, const toml::key& key, const toml::node& node) {
  const auto at = key.source().begin;
  if (node.is_table()) {
    std::vector<std::string_view> names;
    for (const Section& s : kSections) names.push_back(s.name);
    auto hit = nearest(key.str(), names);
    rd.fail(at, key.str(),
            "unknown section '[" + std::string(key.str()) + "]' (" +
                (hit ? "did you mean '[" + *hit + "]'?" : "expected one of: " + join_quoted(names)) + ")");
  }
  // A bare key outside any section: suggest the section key with the nearest name.
  std::vector<std::string> full;
  std::vector<std::string_view> leaves;
  for (const Section& s : kSections)
    for (const Key& k : s.keys) {
      full.push_back(dotted(s.name, k.name));
      leaves.push_back(k.name);
    }
  std::string hint = "keys belong in a section";
  if (auto hit = nearest(key.str(), leaves)) {
    const auto i = std::find(leaves.begin(), leaves.end(), *hit) - leaves.begin();
    hint += "; did you mean '" + full[static_cast<std::size_t>(i)] + "'?";
  }
  rd.fail(at, key.str(), "unknown key '" + std::string(key.str()) + "' (" + hint + ")");
}

/// budget.runtime = "llama.cpp": a decode latency budget, and llama.cpp's tools to measure it with (or a rates file).
void check_budget_runtime(const Config& c, const Reader& rd, std::map<std::string, toml::source_position>& seen) {
  const auto where = [&](const char* key) {
    return seen.count(key) ? seen[key] : seen.count("budget") ? seen["budget"] : toml::source_position{1, 1};
  };
  if (c.budget.runtime != BudgetRuntime::llama_cpp) {
    // (Their defaults are allowed: a resolved config writes every key.)
    const bool set[] = {!c.budget.rates.empty(), c.budget.gguf != GgufType::q8_0, c.budget.threads != 0};
    const char* keys[] = {"budget.rates", "budget.gguf", "budget.threads"};
    for (size_t i = 0; i < 3; ++i)
      if (set[i]) rd.fail(where(keys[i]), keys[i], "applies only with budget.runtime = \"llama.cpp\" (got \"model\")");
    return;
  }
  if (c.budget.metric != BudgetMetric::latency || c.budget.latency_mode != LatencyMode::decode)
    rd.fail(where("budget.runtime"), "budget.runtime",
            "\"llama.cpp\" prices llama.cpp's decode step: it needs budget.metric = \"latency\" and "
            "budget.latency_mode = \"decode\" (got \"" +
                std::string(name_of(c.budget.metric)) + "\", \"" + std::string(name_of(c.budget.latency_mode)) + "\")");
  if (!c.budget.rates.empty()) return;  // measured before: the file is checked when the run reads it
  if (c.export_.llama_cpp.empty())
    rd.fail(where("budget.runtime"), "export.llama_cpp",
            "missing (budget.runtime = \"llama.cpp\" measures llama.cpp's decode with its tools: expected llama.cpp's "
            "source directory, or budget.rates naming a file of `hawada-pipeline profile --runtime llama.cpp`)");
  if (find_program(c.export_.llama_cpp, "llama-bench").empty())
    rd.fail(where("budget.runtime"), "budget.runtime",
            "\"llama.cpp\" needs llama-bench (expected an executable in '" +
                (c.export_.llama_cpp / "build" / "bin").string() +
                "', in export.llama_cpp or on PATH; bash launch/llama_cpp.sh builds it)");
}

void check_some_gate(const Config& c, const Reader& rd, std::map<std::string, toml::source_position>& seen) {
  if (!c.gates.heads && !c.gates.ffn && !c.gates.hidden && !c.gates.layers)
    rd.fail(seen.count("gates") ? seen["gates"] : toml::source_position{1, 1}, "gates",
            "no gate enabled (expected at least one of gates.heads, gates.ffn, gates.hidden, gates.layers to be true, "
            "got all false)");
}

// teacher.model other than model.path: the cached outputs come from it; heal's intermediate-state term runs the
// model being pruned as its teacher, so the two cannot differ there.
void check_teacher_model(const Config& c, const Reader& rd, std::map<std::string, toml::source_position>& seen) {
  if (!c.teacher.model.empty() && c.teacher.model != c.model.path && c.heal.hidden_weight > 0)
    rd.fail(seen["teacher.model"], "teacher.model",
            "must be model.path when heal.hidden_weight > 0 (the intermediate-state term matches the blocks of the "
            "model being pruned), got '" +
                c.teacher.model.string() + "'");
}

Config read_document(const Reader& rd, const toml::table& root, Config c) {
  std::map<std::string, toml::source_position> seen;  // dotted key (or section) -> where it was given
  for (const auto& [key, node] : in_source_order(root)) {
    const auto section = std::find_if(std::begin(kSections), std::end(kSections),
                                      [&](const Section& s) { return s.name == key->str(); });
    if (section == std::end(kSections)) unknown_top_level(rd, *key, *node);
    const auto* table = node->as_table();
    if (!table) rd.type_error(*node, key->str(), "table [" + std::string(key->str()) + "]");
    seen[std::string(section->name)] = table->source().begin;
    for (const auto& [k, v] : in_source_order(*table)) {
      const std::string name = dotted(section->name, k->str());
      const auto spec =
          std::find_if(section->keys.begin(), section->keys.end(), [&](const Key& s) { return s.name == k->str(); });
      if (spec == section->keys.end())
        rd.fail(k->source().begin, name, "unknown key '" + name + "' (" + suggest_key(*section, k->str()) + ")");
      std::visit(ValueReader{rd, *v, name, spec->rule}, spec->ref(c));
      seen[name] = v->source().begin;
    }
  }

  for (const Section& section : kSections)
    for (const Key& key : section.keys) {
      const std::string name = dotted(section.name, key.name);
      if (!key.rule.required || seen.count(name)) continue;
      const auto header = seen.find(std::string(section.name));
      rd.fail(header != seen.end() ? header->second : toml::source_position{1, 1}, name,
              "missing required key (expected a path string, got nothing)");
    }

  if (c.train.warmup > c.train.steps) {
    const bool given = seen.count("train.warmup");
    const auto at = given ? seen["train.warmup"] : seen.count("train.steps") ? seen["train.steps"] : seen["train"];
    rd.fail(at, "train.warmup",
            "out of range (expected <= train.steps = " + std::to_string(c.train.steps) + ", got " +
                (given ? "" : "the default ") + std::to_string(c.train.warmup) + ")");
  }
  if (!seen.count("teacher.logits")) {
    // The default: sampled (bench/NOTES.md: it heals better than top-k at equal tokens and at equal bytes),
    // unless the config asks for what only a top-k cache gives: top_k, a distillation temperature, the MSE term.
    const bool wants_top_k = seen.count("teacher.top_k") || c.train.kd_temperature != 1.0 || c.train.mse_weight != 0.0;
    c.teacher.logits = wants_top_k ? TeacherLogits::top_k : TeacherLogits::sampled;
  }
  if (c.teacher.logits == TeacherLogits::sampled && (c.train.kd_temperature != 1.0 || c.train.mse_weight != 0.0)) {
    // The draws are from the teacher at temperature 1, and no logit values are kept.
    const bool temp = c.train.kd_temperature != 1.0;
    const std::string key = temp ? "train.kd_temperature" : "train.mse_weight";
    rd.fail(seen.count(key)                ? seen[key]
            : seen.count("teacher.logits") ? seen["teacher.logits"]
                                           : toml::source_position{1, 1},
            key,
            temp ? "must be 1 with teacher.logits = \"sampled\" (the cache holds tokens drawn at temperature 1), got " +
                       std::to_string(c.train.kd_temperature)
                 : "must be 0 with teacher.logits = \"sampled\" (the cache keeps no logit values to compare), got " +
                       std::to_string(c.train.mse_weight));
  }
  if (c.heal.samples > 0 && c.heal.data.empty())
    rd.fail(seen["heal.samples"], "heal.samples",
            "needs heal.data (it counts samples of that file; without it heal trains on the run's training samples)");
  if (!c.export_.gguf.empty() && c.export_.llama_cpp.empty())
    rd.fail(seen["export.gguf"], "export.llama_cpp",
            "missing (expected llama.cpp's source directory, holding convert_hf_to_gguf.py, when export.gguf is "
            "non-empty; bash launch/llama_cpp.sh makes one under .llama.cpp/src/)");
  if (c.evaluate.has(EvalRuntime::llama_cpp) && c.export_.gguf.empty())
    rd.fail(seen["evaluate.runtimes"], "evaluate.runtimes",
            "\"llama.cpp\" needs export.gguf (the GGUF types it measures, e.g. [\"f16\", \"q8_0\"]), got none");
  if (c.evaluate.has(EvalRuntime::llama_cpp) && !c.export_.llama_cpp.empty())
    for (const char* tool : {"llama-bench", "llama-perplexity"})
      if (find_program(c.export_.llama_cpp, tool).empty())
        rd.fail(seen["evaluate.runtimes"], "evaluate.runtimes",
                std::string("\"llama.cpp\" needs ") + tool + " (expected an executable in '" +
                    (c.export_.llama_cpp / "build" / "bin").string() +
                    "', in export.llama_cpp or on PATH; bash "
                    "launch/llama_cpp.sh builds it)");
  check_budget_runtime(c, rd, seen);
  check_teacher_model(c, rd, seen);
  check_some_gate(c, rd, seen);
  return c;
}

/// Writes one value the way parse_config reads it back.
struct ValueWriter {
  std::string operator()(const int* v) const { return std::to_string(*v); }
  std::string operator()(const int64_t* v) const { return std::to_string(*v); }
  std::string operator()(const uint64_t* v) const { return std::to_string(*v); }
  std::string operator()(const double* v) const { return format_double(*v); }
  std::string operator()(const bool* v) const { return *v ? "true" : "false"; }
  std::string operator()(const fs::path* v) const { return quote(v->string()); }
  std::string operator()(const std::string* v) const { return quote(*v); }
  template <class E>
  std::string operator()(const E* v) const {
    static_assert(std::is_enum_v<E>);
    return quote(name_of(*v));
  }
  template <class E>
  std::string operator()(const std::vector<E>* v) const {
    std::string out;
    for (const E e : *v) out += (out.empty() ? "" : ", ") + quote(name_of(e));
    return "[" + out + "]";
  }
};

}  // namespace

Config parse_config(std::string_view text, const fs::path& source) {
  Reader rd;
  rd.file = source.empty() ? std::string("<config>") : source.string();
  std::error_code ec;
  const fs::path abs = source.empty() ? fs::path() : fs::absolute(source, ec).lexically_normal();
  rd.base = abs.empty() ? fs::current_path(ec) : abs.parent_path();

  Config c;
  c.source = abs;
  const std::string stem = source.stem().empty() ? std::string("config") : source.stem().string();
  c.run.dir = resolve(rd.base, fs::path("runs") / stem);
  c.teacher.cache_root = resolve(rd.base, "runs/teacher-cache");

  toml::table root;
  try {
    root = toml::parse(text, std::string_view(rd.file));
  } catch (const toml::parse_error& e) {
    rd.fail(e.source().begin, "syntax error", std::string(e.description()));
  }
  return read_document(rd, root, std::move(c));
}

Config load_config(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::error_code ec;
  if (!in || fs::is_directory(file, ec))
    throw ConfigError(file.string() + ": cannot open config file (expected a readable TOML file, got " +
                      (fs::exists(file, ec) ? "an unreadable path" : "no such file") + ")");
  std::ostringstream text;
  text << in.rdbuf();
  return parse_config(text.str(), file);
}

std::string to_toml(const Config& config) {
  Config copy = config;  // Key::ref hands out mutable pointers
  std::string out;
  for (const Section& section : kSections) {
    out += (out.empty() ? "[" : "\n[") + std::string(section.name) + "]\n";
    for (const Key& key : section.keys)
      out += std::string(key.name) + " = " + std::visit(ValueWriter{}, key.ref(copy)) + "\n";
  }
  return out;
}

std::map<std::string, std::string> config_sections(const Config& config) {
  std::map<std::string, std::string> sections;
  std::istringstream text(to_toml(config));
  std::string line, name;
  while (std::getline(text, line)) {
    if (!line.empty() && line.front() == '[' && line.back() == ']') name = line.substr(1, line.size() - 2);
    if (!name.empty() && !line.empty()) sections[name] += line + "\n";
  }
  return sections;
}

std::string_view to_string(ComputeDtype value) { return name_of(value); }
std::string_view to_string(HeadMatmul value) { return name_of(value); }
std::string_view to_string(DataFormat value) { return name_of(value); }
std::string_view to_string(TokenDtype value) { return name_of(value); }
std::string_view to_string(StoreDtype value) { return name_of(value); }
std::string_view to_string(TeacherLogits value) { return name_of(value); }
std::string_view to_string(BudgetMetric value) { return name_of(value); }
std::string_view to_string(LatencyMode value) { return name_of(value); }
std::string_view to_string(BudgetRuntime value) { return name_of(value); }
std::string_view to_string(ExportDtype value) { return name_of(value); }
std::string_view to_string(RefitOrder value) { return name_of(value); }
std::string_view to_string(HealKeep value) { return name_of(value); }
std::string_view to_string(DistBackend value) { return name_of(value); }
std::string_view to_string(DeviceRequest value) { return name_of(value); }
std::string_view to_string(GgufType value) { return name_of(value); }
std::string_view to_string(EvalRuntime value) { return name_of(value); }

}  // namespace hawada
