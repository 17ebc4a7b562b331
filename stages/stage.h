// The one interface every stage implements, and what a stage sees of the run.
//
// Contract: the runner calls fingerprint() and then run() on every rank, in the same order; inside,
// every collective (MPI on MPI_COMM_WORLD) is called in the same order on every rank. Rank 0 alone
// writes shared files; other ranks write only their own shards.
#pragma once

#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>

#include "training/settings.h"

namespace hawada {

/// What a stage reads: the resolved settings, the run directory, the fingerprints of the stages before it (by
/// name), which a stage chains into its own and uses to find their outputs, and each config section as the config
/// writer prints it (by name: "budget"), which a fingerprint hashes whole so that a new key in that section changes
/// it without anyone listing the key.
struct StageContext {
  const Config& config;
  std::filesystem::path run_dir;
  std::map<std::string, std::string> fingerprints;
  std::map<std::string, std::string> sections;

  /// The printed section `name`; std::out_of_range naming it when the runner did not provide it.
  const std::string& section(const std::string& name) const {
    const auto it = sections.find(name);
    if (it == sections.end()) throw std::out_of_range("StageContext: no config section [" + name + "]");
    return it->second;
  }
};

/// One stage of the pipeline.
class Stage {
 public:
  virtual ~Stage() = default;
  /// Name used for markers and logs ("teacher_cache").
  virtual std::string_view name() const = 0;
  /// Fingerprint of everything this stage's output depends on. The runner skips run() when the
  /// stage's marker holds the same fingerprint. Collective: called on every rank.
  virtual std::string fingerprint(const StageContext& context) = 0;
  /// Does the work; resumes from the stage's own partial outputs. Collective.
  virtual void run(const StageContext& context) = 0;
};

}  // namespace hawada
