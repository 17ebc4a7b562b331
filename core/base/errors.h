// Error types and check macros shared by every layer.
//
// Two tiers (as in faiss/impl/FaissAssert.h):
//  - a broken internal invariant is a bug: HAWADA_ASSERT prints file:line and aborts;
//  - bad input (config, checkpoint, cache, data, launcher) throws a typed Error the user can act on.
// Messages name the object and say expected vs got. Context is added at phase boundaries with
// with_context("loading teacher cache: ", ...), which keeps the error's type.
#pragma once

#include <exception>
#include <string>
#include <string_view>
#include <utility>

namespace hawada {

/// Base of every user-facing error. The message can gain context prefixes as it travels up.
class Error : public std::exception {
 public:
  explicit Error(std::string message) : message_(std::move(message)) {}
  const char* what() const noexcept override { return message_.c_str(); }
  const std::string& message() const noexcept { return message_; }
  /// Prepends "context" to the message (phase boundaries), keeping the dynamic type.
  void add_context(std::string_view context) { message_.insert(0, context); }
  /// Short name of the error class, printed by main ("ConfigError: ...").
  virtual const char* kind() const noexcept { return "Error"; }

 private:
  std::string message_;
};

#define HAWADA_DEFINE_ERROR(Name)                                \
  class Name : public Error {                                    \
   public:                                                       \
    using Error::Error;                                          \
    const char* kind() const noexcept override { return #Name; } \
  }

/// The TOML config: syntax, types, ranges, unknown keys, missing paths. Carries file:line:column.
HAWADA_DEFINE_ERROR(ConfigError);
/// A model directory or safetensors file that is malformed or disagrees with config.json.
HAWADA_DEFINE_ERROR(CheckpointError);
/// A teacher cache whose files do not match their fingerprint, shapes or format.
HAWADA_DEFINE_ERROR(CacheError);
/// Input data (token or image files) with the wrong dtype, rank or values.
HAWADA_DEFINE_ERROR(DataError);
/// A communicator or launcher failure (MPI, NCCL, watchdog, rank drift).
HAWADA_DEFINE_ERROR(CommError);
/// A file-system or library failure that is not the input's fault (disk full, HDF5 internal error).
HAWADA_DEFINE_ERROR(IoError);
/// Command-line misuse: unknown subcommand, missing argument.
HAWADA_DEFINE_ERROR(UsageError);
/// A non-finite value where a number must be finite (a loss, a gradient, gates, weights, logits):
/// the run stops there, names what and where, and publishes nothing.
HAWADA_DEFINE_ERROR(NumericError);

#undef HAWADA_DEFINE_ERROR

/// Exit status of a run that stopped on SIGTERM after checkpointing (SLURM preemption): the batch
/// script requeues on it. 75 is EX_TEMPFAIL in sysexits.h.
inline constexpr int kExitRequeue = 75;

/// Not an error: every rank saw the preemption flag at the same step boundary and checkpointed;
/// main exits with kExitRequeue without aborting the job.
class Preempted : public std::exception {
 public:
  explicit Preempted(std::string message) : message_(std::move(message)) {}
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  std::string message_;
};

/// Runs f(); an Error escaping it gets "context" prepended and is rethrown with its type intact.
template <class F>
decltype(auto) with_context(std::string_view context, F&& f) {
  try {
    return std::forward<F>(f)();
  } catch (Error& e) {
    e.add_context(context);
    throw;
  }
}

namespace detail {
[[noreturn]] void assert_fail(const char* expr, const char* file, int line, const std::string& msg);
/// Formats "file:line" for check macros.
std::string where(const char* file, int line);
}  // namespace detail

}  // namespace hawada

/// Internal invariant; a failure is a bug in hawada-pipeline, never the user's input.
#define HAWADA_ASSERT(cond, msg)                                                  \
  do {                                                                            \
    if (!(cond)) ::hawada::detail::assert_fail(#cond, __FILE__, __LINE__, (msg)); \
  } while (0)
