#include "runtimes/llama_cpp.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/base/errors.h"
#include "core/base/fs.h"
#include "core/base/log.h"
#include "runtimes/gguf_layer_pattern.h"
#include "runtimes/tool.h"

namespace hawada {
namespace fs = std::filesystem;
namespace {

// The spelling in configs and file names, and llama-quantize's name of the type (F16: the converter's --outtype).
struct TypeNames {
  GgufType type;
  std::string_view name, tool_name;
};
constexpr TypeNames kTypes[] = {
    {GgufType::f16, "f16", "f16"},
    {GgufType::q8_0, "q8_0", "Q8_0"},
    {GgufType::q4_k_m, "q4_k_m", "Q4_K_M"},
};

// Architectures whose converted files need the per-layer attention pattern added (gguf_layer_pattern.py).
constexpr std::string_view kNeedsLayerPattern[] = {"gemma3_text"};

const TypeNames& names(GgufType t) {
  const auto* it = std::find_if(std::begin(kTypes), std::end(kTypes), [&](const TypeNames& n) { return n.type == t; });
  HAWADA_ASSERT(it != std::end(kTypes), "gguf type without a name");
  return *it;
}

// Runs a step whose program is the configured Python; a Python that does not start is export.python's fault.
void run_python_step(const std::vector<std::string>& argv, const fs::path& log, const std::string& what) {
  const ToolRun run = run_tool(argv, log);
  if (run.start_errno != 0)
    throw ConfigError(fmt::format(
        "export.python: cannot start {} ({}) (expected a Python with torch, gguf and sentencepiece, such as the "
        "project venv's .venv/bin/python)",
        argv[0], std::strerror(run.start_errno)));
  check_tool(run, argv, log, what);
}

// The size of a file a tool promised to write; RuntimeToolError when it did not.
uint64_t written_bytes(const fs::path& file, const std::vector<std::string>& argv, const fs::path& log,
                       const std::string& what) {
  std::error_code ec;
  const auto bytes = fs::file_size(file, ec);
  if (ec || bytes == 0)
    throw RuntimeToolError(fmt::format("{}: {} exited 0 but wrote no {}; the last lines of {}:\n{}", what,
                                       command_line(argv), file.string(), log.string(), log_tail(log)));
  return bytes;
}

// Gemma 3: the per-layer attention pattern the converter leaves out, from config.json's layer_types.
void fix_layer_pattern(const LlamaCpp& tools, const fs::path& hf_dir, const fs::path& gguf, const fs::path& log_dir) {
  const nlohmann::json config = nlohmann::json::parse(read_text_file(hf_dir / "config.json"), nullptr, false);
  const std::string type = config.is_object() ? config.value("model_type", "") : "";
  if (std::find(std::begin(kNeedsLayerPattern), std::end(kNeedsLayerPattern), type) == std::end(kNeedsLayerPattern))
    return;
  const std::vector<std::string> argv = {tools.python, "-c", generated::kGgufLayerPatternPy, gguf.string(),
                                         (hf_dir / "config.json").string()};
  run_python_step(argv, log_dir / "layer-pattern.log", "adding Gemma 3's per-layer attention pattern to the GGUF");
}

// Rank 0: `fill` writes into an empty partial sibling of `out_dir`, which then replaces `out_dir` by rename.
void publish_replacing(const fs::path& out_dir, const std::function<void(const fs::path&)>& fill) {
  const fs::path parent = out_dir.parent_path(), base = out_dir.filename();
  const fs::path tmp = parent / ("." + base.string() + ".partial"),
                 replaced = parent / ("." + base.string() + ".replaced");
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  try {
    fill(tmp);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  sync_directory(tmp);
  fs::remove_all(replaced);
  if (fs::exists(out_dir)) rename_into(out_dir, replaced);
  rename_into(tmp, out_dir);
  fs::remove_all(replaced);
}

}  // namespace

std::string_view gguf_type_name(GgufType type) { return names(type).name; }

LlamaCpp find_llama_cpp(const fs::path& dir, const std::string& python, std::span<const GgufType> types) {
  LlamaCpp tools;
  tools.python = python;
  tools.converter = dir / "convert_hf_to_gguf.py";
  std::error_code ec;
  if (!fs::is_regular_file(tools.converter, ec))
    throw ConfigError(
        fmt::format("export.llama_cpp: no convert_hf_to_gguf.py in '{}' (expected llama.cpp's source directory; "
                    "bash launch/llama_cpp.sh makes one under .llama.cpp/src/)",
                    dir.string()));
  const bool quantized = std::any_of(types.begin(), types.end(), [](GgufType t) { return t != GgufType::f16; });
  if (!quantized) return tools;
  tools.quantize = find_program(dir, "llama-quantize");
  if (!tools.quantize.empty()) return tools;
  throw ConfigError(
      fmt::format("export.llama_cpp: no llama-quantize for the quantized types of export.gguf (expected an executable "
                  "'{}', '{}' or llama-quantize on PATH; bash launch/llama_cpp.sh builds it)",
                  (dir / "build" / "bin" / "llama-quantize").string(), (dir / "llama-quantize").string()));
}

std::vector<GgufFile> write_gguf(const LlamaCpp& tools, const fs::path& hf_dir, const fs::path& out_dir,
                                 const std::string& name, std::span<const GgufType> types, int threads,
                                 const fs::path& log_dir) {
  std::vector<GgufFile> files;
  fs::create_directories(log_dir);
  publish_replacing(out_dir, [&](const fs::path& tmp) {
    const auto file = [&](GgufType t) { return tmp / (name + "-" + std::string(gguf_type_name(t)) + ".gguf"); };
    const fs::path f16 = file(GgufType::f16);
    const std::vector<std::string> convert = {
        tools.python, tools.converter.string(), hf_dir.string(), "--outfile", f16.string(), "--outtype", "f16"};
    run_python_step(convert, log_dir / "convert.log", "converting the export to GGUF");
    written_bytes(f16, convert, log_dir / "convert.log", "converting the export to GGUF");
    fix_layer_pattern(tools, hf_dir, f16, log_dir);
    for (const GgufType t : types) {
      if (t == GgufType::f16) continue;
      const fs::path log = log_dir / ("quantize-" + std::string(gguf_type_name(t)) + ".log");
      const std::vector<std::string> quantize = {tools.quantize.string(), f16.string(), file(t).string(),
                                                 std::string(names(t).tool_name), std::to_string(std::max(threads, 1))};
      const std::string what = fmt::format("quantizing the GGUF to {}", names(t).tool_name);
      const ToolRun run = run_tool(quantize, log);
      if (run.start_errno != 0)
        throw ConfigError(
            fmt::format("export.llama_cpp: cannot start {} ({})", quantize[0], std::strerror(run.start_errno)));
      check_tool(run, quantize, log, what);
      written_bytes(file(t), quantize, log, what);
    }
    if (std::find(types.begin(), types.end(), GgufType::f16) == types.end()) fs::remove(f16);
    for (const GgufType t : types) {
      sync_file(file(t));
      files.push_back({t, out_dir / file(t).filename(), fs::file_size(file(t))});
    }
  });
  for (const auto& f : files)
    log::info(fmt::format("gguf {}: {} ({} MB)", gguf_type_name(f.type), f.path.string(), f.bytes / 1000000));
  return files;
}

}  // namespace hawada
