#include "pipeline/cli.h"

#include <algorithm>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/base/errors.h"
#include "core/base/log.h"
#include "core/dist/mpi_session.h"
#include "core/base/process.h"
#include "core/base/text.h"
#include "pipeline/config.h"
#include "pipeline/tools/forward.h"
#include "pipeline/tools/inspect.h"
#include "pipeline/tools/make.h"
#include "pipeline/tools/profile.h"
#include "pipeline/run.h"

namespace hawada {
namespace {

constexpr const char* kUsage = R"(hawada-pipeline: learn structured gates on a Hugging Face Transformer by distillation
and export a slimmer checkpoint that loads with plain from_pretrained.

Usage:
  mpirun -np N hawada-pipeline CONFIG.toml      run the pipeline (same as `run CONFIG.toml`)
  hawada-pipeline run CONFIG.toml [--stages a,b] [--from STAGE] [--force a,b] [--dry-run]
                                                run the pipeline (one process, or under mpirun/srun); stages
                                                whose marker matches their inputs are reused. --stages runs
                                                only those, --from reruns STAGE and all after it, --force
                                                reruns STAGE, --dry-run prints what would run or be reused
  hawada-pipeline validate CONFIG.toml          check a config and print it resolved (defaults, absolute paths)
  hawada-pipeline inspect MODEL_DIR [--json]    architecture, counts, parameters, dtype and files of a model
  hawada-pipeline forward MODEL_DIR --inputs IN.safetensors --output OUT.safetensors [--dtype fp32|bf16] [--threads N]
                                                run the model: IN holds input_ids (+ attention_mask) or pixel_values;
                                                OUT gets logits (a bare ViTModel: last_hidden_state, pooler_output)
  hawada-pipeline export --keep-all MODEL_DIR OUT_DIR [--max-shard-size BYTES]
                                                copy a model unchanged (byte-identical tensors), atomically
  hawada-pipeline make-model --arch llama|vit|bert --preset tiny|llama-3.2-1b|vit-base-patch16-224 [--seed S] OUT_DIR
                                                a Hugging Face model directory with random weights (demo, benchmarks)
  hawada-pipeline make-data MODEL_DIR --samples N [--seq-len L] [--seed S] OUT.h5
                                                deterministic data for that model: token ids (tokens_h5) or
                                                uint8 images (images_h5)
  hawada-pipeline profile MODEL_DIR --out TABLE.json [--batch B] [--tokens T] [--ffn-multiple M]
                          [--hidden-multiple M] [--hidden] [--prune-kv-groups] [--dtype bf16|fp32] [--repeats R]
                          [--decode CONTEXT]
                                                time the attention and MLP blocks at every width the search can
                                                pick, on the GPU when present (else CPU): search.latency_table;
                                                --decode: one new token per sequence against a KV cache of
                                                CONTEXT tokens (budget.latency_mode = "decode")
  hawada-pipeline evaluate TEACHER_DIR STUDENT_DIR --data FILE [--format tokens_h5|tokens_bin|images_h5]
                          [--seq-len L] [--samples N] [--first I] [--device auto|cpu|cuda] [--json]
                                                quality of any student against its teacher on those samples (fp32):
                                                perplexity, KL, top-1 agreement (classifiers: KL, agreement)
  hawada-pipeline --help | --version

Stages, in order: teacher_cache, train_gates, reduce_gates, rounding_search, calibrate, heal, export,
evaluate, report.

Exit codes: 0 success, 1 runtime failure, 2 usage or config error, 75 preempted by SIGTERM after a
checkpoint (requeue and rerun the same command to resume).
)";

const std::vector<std::string_view> kCommands = {"run",        "validate",  "inspect", "forward",  "export",
                                                 "make-model", "make-data", "profile", "evaluate", "help"};
// Options that take a value (`--name VALUE` or `--name=VALUE`).
const std::vector<std::string_view> kValueOptions = {"--inputs", "--output", "--dtype", "--threads", "--max-shard-size",
                                                     "--stages", "--from", "--force", "--arch", "--preset",
                                                     "--seed", "--samples", "--seq-len", "--out", "--batch",
                                                     "--tokens", "--ffn-multiple", "--hidden-multiple", "--repeats",
                                                     "--data", "--format", "--first", "--device", "--decode"};

struct Args {
  std::string command;
  std::vector<std::string> positional;
  std::vector<std::string> flags;            // every option given, by name
  std::map<std::string, std::string> values;  // options that took a value
  bool has(const std::string& f) const { return std::find(flags.begin(), flags.end(), f) != flags.end(); }
  std::string value(const std::string& name, const std::string& fallback) const {
    auto it = values.find(name);
    return it == values.end() ? fallback : it->second;
  }
  std::string required(const std::string& name) const {
    auto it = values.find(name);
    if (it == values.end()) throw UsageError("`" + command + "` needs " + name + " VALUE");
    return it->second;
  }
};

int64_t parse_count(const std::string& option, const std::string& text) {
  try {
    size_t used = 0;
    long long v = std::stoll(text, &used);
    if (used == text.size() && v >= 0) return v;
  } catch (const std::exception&) {
  }
  throw UsageError(option + " expects a non-negative integer, got '" + text + "'");
}

Args parse_args(int argc, char** argv) {
  Args a;
  std::vector<std::string> rest(argv + 1, argv + argc);
  if (rest.empty()) throw UsageError("no command given; see `hawada-pipeline --help`");
  size_t i = 0;
  const std::string& first = rest[0];
  if (first == "--help" || first == "-h") {
    a.command = "help";
    i = 1;
  } else if (first == "--version") {
    a.command = "version";
    i = 1;
  } else if (std::find(kCommands.begin(), kCommands.end(), first) != kCommands.end()) {
    a.command = first;
    i = 1;
  } else if (first.size() > 5 && first.ends_with(".toml")) {
    a.command = "run";  // bare form: `mpirun hawada-pipeline config.toml`
  } else {
    std::string hint;
    if (auto near = nearest(first, kCommands)) hint = " (did you mean '" + *near + "'?)";
    throw UsageError("unknown command '" + first + "'" + hint + "; see `hawada-pipeline --help`");
  }
  for (; i < rest.size(); ++i) {
    std::string arg = rest[i];
    if (!arg.starts_with("--")) {
      a.positional.push_back(arg);
      continue;
    }
    std::optional<std::string> value;
    if (auto eq = arg.find('='); eq != std::string::npos) value = arg.substr(eq + 1), arg = arg.substr(0, eq);
    const bool takes_value = std::find(kValueOptions.begin(), kValueOptions.end(), arg) != kValueOptions.end();
    if (takes_value && !value) {
      if (i + 1 >= rest.size()) throw UsageError("option " + arg + " needs a value");
      value = rest[++i];
    }
    if (value && !takes_value) throw UsageError("option " + arg + " takes no value");
    a.flags.push_back(arg);
    if (value) a.values[arg] = *value;
  }
  return a;
}

void expect_args(const Args& a, size_t positional, const std::vector<std::string>& allowed_flags,
                 const char* synopsis) {
  for (const auto& f : a.flags)
    if (std::find(allowed_flags.begin(), allowed_flags.end(), f) == allowed_flags.end())
      throw UsageError("unknown option '" + f + "' for `" + a.command + "`; usage: " + synopsis);
  if (a.positional.size() != positional)
    throw UsageError("`" + a.command + "` takes " + std::to_string(positional) + " argument(s), got " +
                     std::to_string(a.positional.size()) + "; usage: " + synopsis);
}

int exit_code_for(const Error& e) {
  return dynamic_cast<const ConfigError*>(&e) || dynamic_cast<const UsageError*>(&e) ? kExitUsage : kExitRuntime;
}

int dispatch(const Args& a, std::unique_ptr<MpiSession>& mpi, int argc, char** argv) {
  if (a.command == "help") {
    std::cout << kUsage;
    return kExitOk;
  }
  if (a.command == "version") {
    std::cout << "hawada-pipeline " << HAWADA_VERSION << "\n";
    return kExitOk;
  }
  if (a.command == "validate") {
    expect_args(a, 1, {}, "hawada-pipeline validate CONFIG.toml");
    std::cout << to_toml(load_config(a.positional[0]));
    return kExitOk;
  }
  if (a.command == "inspect") {
    expect_args(a, 1, {"--json"}, "hawada-pipeline inspect MODEL_DIR [--json]");
    std::cout << inspect_model(a.positional[0], a.has("--json"));
    return kExitOk;
  }
  if (a.command == "forward") {
    const char* synopsis =
        "hawada-pipeline forward MODEL_DIR --inputs IN.safetensors --output OUT.safetensors [--dtype fp32|bf16] "
        "[--threads N]";
    expect_args(a, 1, {"--inputs", "--output", "--dtype", "--threads"}, synopsis);
    forward_command(a.positional[0], a.required("--inputs"), a.required("--output"), a.value("--dtype", "fp32"),
                    static_cast<int>(parse_count("--threads", a.value("--threads", "0"))));
    return kExitOk;
  }
  if (a.command == "export") {
    const char* synopsis = "hawada-pipeline export --keep-all MODEL_DIR OUT_DIR [--max-shard-size BYTES]";
    expect_args(a, 2, {"--keep-all", "--max-shard-size"}, synopsis);
    if (!a.has("--keep-all"))
      throw UsageError("`export` on its own exports keep-all only (pruned exports come from `run`); usage: " +
                       std::string(synopsis));
    std::optional<uint64_t> max_shard;
    if (a.values.count("--max-shard-size"))
      max_shard = static_cast<uint64_t>(parse_count("--max-shard-size", a.values.at("--max-shard-size")));
    export_keep_all_command(a.positional[0], a.positional[1], max_shard);
    return kExitOk;
  }
  if (a.command == "make-model") {
    const char* synopsis =
        "hawada-pipeline make-model --arch llama|vit|bert --preset tiny|llama-3.2-1b|vit-base-patch16-224 [--seed S] OUT_DIR";
    expect_args(a, 1, {"--arch", "--preset", "--seed"}, synopsis);
    make_model(a.required("--arch"), a.required("--preset"), parse_count("--seed", a.value("--seed", "0")), a.positional[0]);
    return kExitOk;
  }
  if (a.command == "make-data") {
    const char* synopsis = "hawada-pipeline make-data MODEL_DIR --samples N [--seq-len L] [--seed S] OUT.h5";
    expect_args(a, 2, {"--samples", "--seq-len", "--seed"}, synopsis);
    make_data(a.positional[0], parse_count("--samples", a.required("--samples")),
              parse_count("--seq-len", a.value("--seq-len", "0")), parse_count("--seed", a.value("--seed", "0")),
              a.positional[1]);
    return kExitOk;
  }
  if (a.command == "profile") {
    const char* synopsis =
        "hawada-pipeline profile MODEL_DIR --out TABLE.json [--batch B] [--tokens T] [--ffn-multiple M] "
        "[--hidden-multiple M] [--hidden] [--prune-kv-groups] [--dtype bf16|fp32] [--repeats R] [--decode CONTEXT]";
    expect_args(a, 1, {"--out", "--batch", "--tokens", "--ffn-multiple", "--hidden-multiple", "--hidden",
                       "--prune-kv-groups", "--dtype", "--repeats", "--decode"},
                synopsis);
    ProfileOptions o;
    o.batch = std::max<int64_t>(1, parse_count("--batch", a.value("--batch", "1")));
    o.tokens = parse_count("--tokens", a.value("--tokens", "0"));
    o.ffn_multiple = std::max<int64_t>(1, parse_count("--ffn-multiple", a.value("--ffn-multiple", "256")));
    o.hidden_multiple = std::max<int64_t>(1, parse_count("--hidden-multiple", a.value("--hidden-multiple", "128")));
    o.hidden = a.has("--hidden");
    o.prune_kv_groups = a.has("--prune-kv-groups");
    o.dtype = a.value("--dtype", "");
    o.repeats = static_cast<int>(std::max<int64_t>(1, parse_count("--repeats", a.value("--repeats", "3"))));
    o.decode_context = parse_count("--decode", a.value("--decode", "0"));
    profile_command(a.positional[0], a.required("--out"), o);
    return kExitOk;
  }
  if (a.command == "evaluate") {
    const char* synopsis =
        "hawada-pipeline evaluate TEACHER_DIR STUDENT_DIR --data FILE [--format tokens_h5|tokens_bin|images_h5] "
        "[--seq-len L] [--samples N] [--first I] [--device auto|cpu|cuda] [--json]";
    expect_args(a, 2, {"--data", "--format", "--seq-len", "--samples", "--first", "--device", "--json"}, synopsis);
    EvaluateOptions o;
    o.data = a.required("--data");
    o.format = a.value("--format", "tokens_h5");
    o.seq_len = parse_count("--seq-len", a.value("--seq-len", "0"));
    o.samples = parse_count("--samples", a.value("--samples", "0"));
    o.first = parse_count("--first", a.value("--first", "0"));
    o.device = a.value("--device", "auto");
    std::cout << evaluate_command(a.positional[0], a.positional[1], o, a.has("--json"));
    return kExitOk;
  }
  HAWADA_ASSERT(a.command == "run", "unhandled command " + a.command);
  expect_args(a, 1, {"--stages", "--from", "--force", "--dry-run"},
              "hawada-pipeline [run] CONFIG.toml [--stages a,b] [--from STAGE] [--force a,b] [--dry-run]");
  auto names = [](std::string list) {
    std::vector<std::string> out;
    while (!list.empty()) {
      const size_t comma = list.find(',');
      out.push_back(list.substr(0, comma));
      list = comma == std::string::npos ? "" : list.substr(comma + 1);
    }
    return out;
  };
  RunOptions options;
  options.only = names(a.value("--stages", ""));
  options.from = a.value("--from", "");
  options.force = names(a.value("--force", ""));
  options.dry_run = a.has("--dry-run");
  mpi = std::make_unique<MpiSession>(&argc, &argv);
  run_pipeline(a.positional[0], *mpi, options);
  return kExitOk;
}

void report(const char* kind, const char* what) {
  std::fprintf(stderr, "hawada-pipeline: %s: %s: %s\n", process_label().c_str(), kind, what);
  std::fflush(stderr);
}

}  // namespace

int cli_main(int argc, char** argv) {
  std::unique_ptr<MpiSession> mpi;
  int code = kExitOk;
  try {
    code = dispatch(parse_args(argc, argv), mpi, argc, argv);
  } catch (const Preempted& e) {
    // Every rank checkpointed at the same step and leaves cleanly: no abort.
    log::warn(e.what());
    return kExitRequeue;
  } catch (const Error& e) {
    report(e.kind(), e.what());
    code = exit_code_for(e);
  } catch (const std::filesystem::filesystem_error& e) {
    // A directory that cannot be created or read (permissions, a file in the way, a full disk) is
    // an I/O failure the user can act on, not an internal error; e.what() names the path.
    report("IoError", e.what());
    code = kExitRuntime;
  } catch (const std::exception& e) {
    report("internal error", e.what());
    code = kExitRuntime;
  }
  // One failing rank must not leave the others waiting in a collective: end the whole job.
  if (code != kExitOk && mpi && mpi->size() > 1) mpi->abort(code);
  return code;
}

}  // namespace hawada
