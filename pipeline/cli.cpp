#include "pipeline/cli.h"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/base/errors.h"
#include "core/base/log.h"
#include "core/base/process.h"
#include "core/base/text.h"
#include "core/dist/mpi_session.h"
#include "pipeline/config.h"
#include "pipeline/run.h"
#include "pipeline/tools/forward.h"
#include "pipeline/tools/inspect.h"
#include "pipeline/tools/make.h"
#include "pipeline/tools/profile.h"
#include "pipeline/tools/runtime_rates.h"

namespace hawada {
namespace {

constexpr const char* kDescription =
    "hawada-pipeline: learn structured gates on a Hugging Face Transformer by distillation and export a slimmer\n"
    "checkpoint that loads with plain from_pretrained.\n\n"
    "  mpirun -np N hawada-pipeline CONFIG.toml      run the pipeline (same as `run CONFIG.toml`)";

constexpr const char* kFooter =
    "Stages, in order: teacher_cache, train_gates, reduce_gates, rounding_search, calibrate, heal, export,\n"
    "evaluate, report.\n\n"
    "Exit codes: 0 success, 1 runtime failure, 2 usage or config error, 75 preempted by SIGTERM after a\n"
    "checkpoint (requeue and rerun the same command to resume).";

int exit_code_for(const Error& e) {
  return dynamic_cast<const ConfigError*>(&e) || dynamic_cast<const UsageError*>(&e) ? kExitUsage : kExitRuntime;
}

std::vector<std::string> comma_list(std::string list) {
  std::vector<std::string> out;
  while (!list.empty()) {
    const size_t comma = list.find(',');
    out.push_back(list.substr(0, comma));
    list = comma == std::string::npos ? "" : list.substr(comma + 1);
  }
  return out;
}

// The command line as CLI11 subcommands; parsing sets `action`, which runs after parsing succeeded (so an
// MPI session starts only for a command line that is valid).
class CommandLine {
 public:
  CommandLine() : app_(kDescription, "hawada-pipeline") {
    app_.set_version_flag("--version", "hawada-pipeline " HAWADA_VERSION);
    app_.footer(kFooter);
    app_.require_subcommand(1);
    app_.get_formatter()->column_width(44);
    // An option given twice takes its last value (a wrapper script's defaults, then the user's).
    app_.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    add_run();
    add_validate();
    add_inspect();
    add_forward();
    add_export();
    add_make();
    add_profile();
    add_evaluate();
    app_.add_subcommand("help", "print this help")->callback([this] { action_ = [this] { return print_help(); }; });
  }

  // Parses argv (a first argument ending in .toml is `run CONFIG.toml`); UsageError on a bad command line.
  // Returns the exit code of --help / --version, or -1 when `action` is to run.
  int parse(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty()) throw UsageError("no command given; see `hawada-pipeline --help`");
    if (args[0].size() > 5 && args[0].ends_with(".toml")) args.insert(args.begin(), "run");
    if (!args[0].starts_with("-")) {
      std::vector<std::string_view> names;
      for (const CLI::App* sub : app_.get_subcommands([](CLI::App*) { return true; })) names.push_back(sub->get_name());
      if (std::find(names.begin(), names.end(), args[0]) == names.end()) {
        std::string hint;
        if (auto near = nearest(args[0], names)) hint = " (did you mean '" + *near + "'?)";
        throw UsageError("unknown command '" + args[0] + "'" + hint + "; see `hawada-pipeline --help`");
      }
    }
    std::reverse(args.begin(), args.end());  // CLI11 takes the arguments last first
    try {
      app_.parse(args);
    } catch (const CLI::CallForHelp&) {
      return print_help();
    } catch (const CLI::CallForAllHelp&) {
      return print_help();
    } catch (const CLI::CallForVersion& e) {
      std::cout << e.what() << "\n";
      return kExitOk;
    } catch (const CLI::ParseError& e) {
      const CLI::App* sub = app_.get_subcommands().empty() ? nullptr : app_.get_subcommands().front();
      throw UsageError(std::string(e.what()) +
                       "; usage: " + (sub ? usage_of(*sub) : std::string("hawada-pipeline --help")));
    }
    return -1;
  }
  int run() { return action_(); }
  std::unique_ptr<MpiSession>* mpi = nullptr;
  int argc = 0;
  char** argv = nullptr;

 private:
  int print_help() {
    const std::vector<CLI::App*> subs = app_.get_subcommands();
    std::cout << (subs.empty() || subs.front()->get_name() == "help" ? app_.help() : subs.front()->help());
    return kExitOk;
  }
  static std::string usage_of(const CLI::App& sub) { return "hawada-pipeline " + sub.get_name() + " --help"; }

  void add_run() {
    CLI::App* c = app_.add_subcommand("run",
                                      "run the pipeline (one process, or every rank under mpirun/srun); stages "
                                      "whose marker matches their inputs are reused");
    c->add_option("CONFIG.toml", run_.config, "the run's configuration")->required();
    c->add_option("--stages", run_.stages, "run only these stages (comma-separated)");
    c->add_option("--from", run_.from, "rerun STAGE and every later one");
    c->add_option("--force", run_.force, "rerun these stages (comma-separated)");
    c->add_flag("--dry-run", run_.dry_run, "print what would run or be reused");
    c->callback([this] {
      action_ = [this] {
        RunOptions o;
        o.only = comma_list(run_.stages);
        o.from = run_.from;
        o.force = comma_list(run_.force);
        o.dry_run = run_.dry_run;
        *mpi = std::make_unique<MpiSession>(&argc, &argv);
        run_pipeline(run_.config, **mpi, o);
        return kExitOk;
      };
    });
  }
  void add_validate() {
    CLI::App* c = app_.add_subcommand("validate", "check a config and print it resolved (defaults, absolute paths)");
    c->add_option("CONFIG.toml", path_a_, "the configuration")->required();
    c->callback([this] {
      action_ = [this] {
        std::cout << to_toml(load_config(path_a_));
        return kExitOk;
      };
    });
  }
  void add_inspect() {
    CLI::App* c = app_.add_subcommand("inspect", "architecture, counts, parameters, dtype and files of a model");
    c->add_option("MODEL_DIR", path_a_, "a Hugging Face model directory")->required();
    c->add_flag("--json", json_, "print JSON");
    c->callback([this] {
      action_ = [this] {
        std::cout << inspect_model(path_a_, json_);
        return kExitOk;
      };
    });
  }
  void add_forward() {
    CLI::App* c = app_.add_subcommand("forward",
                                      "run the model: IN holds input_ids (+ attention_mask) or pixel_values; "
                                      "OUT gets logits (a bare ViTModel: last_hidden_state, pooler_output)");
    c->add_option("MODEL_DIR", path_a_)->required();
    c->add_option("--inputs", inputs_, "IN.safetensors")->required();
    c->add_option("--output", output_, "OUT.safetensors")->required();
    c->add_option("--dtype", dtype_, "fp32 or bf16")->check(CLI::IsMember({"fp32", "bf16"}));
    c->add_option("--threads", threads_, "threads (0: LibTorch's default)")->check(CLI::NonNegativeNumber);
    c->callback([this] {
      action_ = [this] {
        forward_command(path_a_, inputs_, output_, dtype_.empty() ? "fp32" : dtype_, static_cast<int>(threads_));
        return kExitOk;
      };
    });
  }
  void add_export() {
    CLI::App* c = app_.add_subcommand("export", "copy a model unchanged (byte-identical tensors), atomically");
    c->add_flag("--keep-all", keep_all_, "required: pruned exports come from `run`");
    c->add_option("MODEL_DIR", path_a_)->required();
    c->add_option("OUT_DIR", path_b_)->required();
    CLI::Option* shard = c->add_option("--max-shard-size", count_, "bytes per shard")->check(CLI::NonNegativeNumber);
    c->callback([this, c, shard] {
      action_ = [this, c, shard] {
        if (!keep_all_)
          throw UsageError("`export` on its own exports keep-all only (pruned exports come from `run`); usage: " +
                           usage_of(*c));
        std::optional<uint64_t> max_shard;
        if (shard->count() > 0) max_shard = static_cast<uint64_t>(count_);
        export_keep_all_command(path_a_, path_b_, max_shard);
        return kExitOk;
      };
    });
  }
  void add_make() {
    CLI::App* m =
        app_.add_subcommand("make-model", "a Hugging Face model directory with random weights (demo, benchmarks)");
    m->add_option("--arch", arch_, "llama, gemma3_text, phi3, gpt_neox, vit or bert")->required();
    m->add_option("--preset", preset_,
                  "tiny, llama-3.2-1b, gemma-3-270m, gemma-3-1b, phi-3-mini, phi-4-mini, pythia-160m, pythia-1b or "
                  "vit-base-patch16-224")
        ->required();
    m->add_option("--seed", seed_, "seed")->check(CLI::NonNegativeNumber);
    m->add_option("OUT_DIR", path_a_)->required();
    m->callback([this] {
      action_ = [this] {
        make_model(arch_, preset_, seed_, path_a_);
        return kExitOk;
      };
    });
    CLI::App* d = app_.add_subcommand("make-data",
                                      "deterministic data for that model: token ids (tokens_h5) or uint8 "
                                      "images (images_h5)");
    d->add_option("MODEL_DIR", path_a_)->required();
    d->add_option("OUT.h5", path_b_)->required();
    d->add_option("--samples", samples_, "samples")->required()->check(CLI::NonNegativeNumber);
    d->add_option("--seq-len", seq_len_, "tokens per sample")->check(CLI::NonNegativeNumber);
    d->add_option("--seed", seed_, "seed")->check(CLI::NonNegativeNumber);
    d->callback([this] {
      action_ = [this] {
        make_data(path_a_, samples_, seq_len_, seed_, path_b_);
        return kExitOk;
      };
    });
  }
  void add_profile() {
    CLI::App* c = app_.add_subcommand("profile",
                                      "time the attention and MLP blocks at every width the search can pick, "
                                      "on the GPU when present (else the CPU): search.latency_table");
    c->add_option("MODEL_DIR", path_a_)->required();
    c->add_option("--out", path_b_, "TABLE.json")->required();
    c->add_option("--batch", profile_.batch, "sequences per forward")->check(CLI::PositiveNumber);
    c->add_option("--tokens", profile_.tokens, "tokens per sequence (0: the model's default)")
        ->check(CLI::NonNegativeNumber);
    c->add_option("--ffn-multiple", profile_.ffn_multiple, "as search.ffn_multiple")->check(CLI::PositiveNumber);
    c->add_option("--hidden-multiple", profile_.hidden_multiple, "as search.hidden_multiple")
        ->check(CLI::PositiveNumber);
    c->add_flag("--hidden", profile_.hidden, "hidden widths too (as gates.hidden)");
    c->add_flag("--prune-kv-groups", profile_.prune_kv_groups, "as search.prune_kv_groups");
    c->add_option("--dtype", profile_.dtype, "bf16 or fp32")->check(CLI::IsMember({"bf16", "fp32"}));
    c->add_option("--repeats", profile_.repeats, "timings per width (the median counts)")->check(CLI::PositiveNumber);
    c->add_option("--decode", profile_.decode_context,
                  "a decode step against a KV cache of CONTEXT tokens (budget.latency_mode = \"decode\")")
        ->check(CLI::NonNegativeNumber);
    c->add_option("--runtime", profile_runtime_,
                  "\"llama.cpp\": instead of a table, the decode budget's rates (budget.rates) fitted to cut copies of "
                  "the model timed by llama-bench (needs --llama-cpp; --decode sets the KV cache, default 256)")
        ->check(CLI::IsMember({"llama.cpp"}));
    c->add_option("--llama-cpp", rates_.llama_cpp, "llama.cpp's directory (as export.llama_cpp)");
    c->add_option("--python", rates_.python, "the Python that runs llama.cpp's converter (as export.python)");
    c->add_option("--gguf", gguf_type_, "the GGUF type timed: f16, q8_0 or q4_k_m (as budget.gguf)")
        ->check(CLI::IsMember({"f16", "q8_0", "q4_k_m"}));
    c->add_option("--threads", rates_.threads, "llama-bench threads (0: every CPU; as budget.threads)")
        ->check(CLI::NonNegativeNumber);
    c->callback([this] {
      action_ = [this] {
        if (profile_runtime_.empty()) {
          profile_command(path_a_, path_b_, profile_);
          return kExitOk;
        }
        if (rates_.llama_cpp.empty()) throw UsageError("profile --runtime llama.cpp needs --llama-cpp DIR");
        rates_.type = gguf_type_ == "f16" ? GgufType::f16 : gguf_type_ == "q4_k_m" ? GgufType::q4_k_m : GgufType::q8_0;
        rates_.context = profile_.decode_context > 0 ? profile_.decode_context : 256;
        rates_.repeats = profile_.repeats;
        auto work = path_b_;
        work += ".work";
        measure_runtime_rates(path_a_, path_b_, work, rates_);
        return kExitOk;
      };
    });
  }
  void add_evaluate() {
    CLI::App* c = app_.add_subcommand("evaluate",
                                      "quality of any student against its teacher on those samples (fp32): "
                                      "perplexity, KL, top-1 agreement (classifiers: KL, agreement)");
    c->add_option("TEACHER_DIR", path_a_)->required();
    c->add_option("STUDENT_DIR", path_b_)->required();
    c->add_option("--data", evaluate_.data, "a data file")->required();
    c->add_option("--format", evaluate_.format, "tokens_h5, tokens_bin or images_h5")
        ->check(CLI::IsMember({"tokens_h5", "tokens_bin", "images_h5"}));
    c->add_option("--seq-len", evaluate_.seq_len, "tokens per sample")->check(CLI::NonNegativeNumber);
    c->add_option("--samples", evaluate_.samples, "samples (0: all)")->check(CLI::NonNegativeNumber);
    c->add_option("--first", evaluate_.first, "first sample")->check(CLI::NonNegativeNumber);
    c->add_option("--device", evaluate_.device, "auto, cpu or cuda")->check(CLI::IsMember({"auto", "cpu", "cuda"}));
    c->add_flag("--json", json_, "print JSON");
    c->callback([this] {
      action_ = [this] {
        std::cout << evaluate_command(path_a_, path_b_, evaluate_, json_);
        return kExitOk;
      };
    });
  }

  CLI::App app_;
  std::function<int()> action_;
  struct {
    std::string config, stages, from, force;
    bool dry_run = false;
  } run_;
  std::string path_a_, path_b_, inputs_, output_, dtype_, arch_, preset_;
  bool json_ = false, keep_all_ = false;
  int64_t threads_ = 0, count_ = 0, seed_ = 0, samples_ = 0, seq_len_ = 0;
  ProfileOptions profile_;
  std::string profile_runtime_, gguf_type_ = "q8_0";
  RuntimeRatesOptions rates_;
  EvaluateOptions evaluate_;
};

void report(const char* kind, const char* what) {
  std::fprintf(stderr, "hawada-pipeline: %s: %s: %s\n", process_label().c_str(), kind, what);
  std::fflush(stderr);
}

}  // namespace

int cli_main(int argc, char** argv) {
  std::unique_ptr<MpiSession> mpi;
  int code = kExitOk;
  try {
    CommandLine cli;
    cli.mpi = &mpi;
    cli.argc = argc;
    cli.argv = argv;
    code = cli.parse(argc, argv);
    if (code < 0) code = cli.run();
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
