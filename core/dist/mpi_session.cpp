#include "core/dist/mpi_session.h"

#include <chrono>
#include <thread>

#include <cstdio>
#include <cstdlib>

#include "core/base/process.h"
#include "core/dist/communicator.h"

namespace hawada {
namespace {
bool g_active = false;
}

namespace detail {
void throw_mpi_error(int code, const char* call, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  MPI_Error_string(code, text, &len);
  throw CommError("MPI call " + std::string(call) + " failed at " + where(file, line) + " on " + process_label() +
                  ": " + std::string(text, static_cast<size_t>(len)));
}
}  // namespace detail

MpiSession::MpiSession(int* argc, char*** argv) {
  HAWADA_ASSERT(!g_active, "MPI initialised twice");
  int provided = 0;
  // FUNNELED: only the main thread calls MPI; LibTorch's intra-op threads never do.
  HAWADA_CHECK_MPI(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
  g_active = true;
  HAWADA_CHECK_MPI(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  ProcessInfo info = process_info();
  HAWADA_CHECK_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &info.rank));
  HAWADA_CHECK_MPI(MPI_Comm_size(MPI_COMM_WORLD, &info.size));
  // Ranks sharing a node (one GPU per local rank): MPI-3's shared-memory split, which works under
  // mpirun and srun alike without trusting launcher-specific variables.
  MPI_Comm node;
  HAWADA_CHECK_MPI(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, info.rank, MPI_INFO_NULL, &node));
  HAWADA_CHECK_MPI(MPI_Comm_rank(node, &info.local_rank));
  HAWADA_CHECK_MPI(MPI_Comm_size(node, &info.local_size));
  HAWADA_CHECK_MPI(MPI_Comm_free(&node));
  set_process_info(info);
}

MpiSession::~MpiSession() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
  g_active = false;
}

int MpiSession::rank() const { return process_info().rank; }
int MpiSession::size() const { return process_info().size; }
bool MpiSession::active() { return g_active; }

void MpiSession::abort(int code) const {
  std::fflush(stdout);
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);  // MPI_Abort does not return; this only satisfies [[noreturn]]
}

namespace world {
namespace {
double g_timeout_s = 0;  // 0: wait forever (until set_timeout)

// Polls `request` with short sleeps (a blocking MPI call busy-waits, and a rank waiting for rank 0 would take a core
// from it); past `timeout_s` (0: never) a CommError naming the call.
void wait(MPI_Request& request, const char* what, Wait kind) {
  const double factor = kind == Wait::step ? 1 : 10;
  const double timeout_s = factor * g_timeout_s;
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  int done = 0;
  for (int polls = 0;; ++polls) {
    HAWADA_CHECK_MPI(MPI_Test(&request, &done, MPI_STATUS_IGNORE));
    if (done) return;
    if (polls <= 100) continue;
    if (timeout_s > 0 && std::chrono::duration<double>(Clock::now() - start).count() > timeout_s)
      throw CommError(std::string("MPI ") + what + " did not finish within " +
                      (std::string_view(what) == "barrier" ? "10 x " : "") +
                      "dist.timeout_s = " + std::to_string(static_cast<int64_t>(g_timeout_s)) + " s" +
                      (comm_context().empty() ? std::string() : " (" + comm_context() + ")") + " on " +
                      process_label() + ": a rank is stopped, hung or far behind; the job is aborted");
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}
}  // namespace

void set_timeout(double timeout_s) { g_timeout_s = timeout_s; }

void barrier() {
  if (!MpiSession::active()) return;
  MPI_Request request;
  HAWADA_CHECK_MPI(MPI_Ibarrier(MPI_COMM_WORLD, &request));
  wait(request, "barrier", Wait::stage);
}

uint64_t broadcast(uint64_t value, int root, Wait kind) {
  if (!MpiSession::active()) return value;
  MPI_Request request;
  HAWADA_CHECK_MPI(MPI_Ibcast(&value, 1, MPI_UINT64_T, root, MPI_COMM_WORLD, &request));
  wait(request, "broadcast", kind);
  return value;
}

namespace {
int64_t reduce(int64_t value, MPI_Op op, const char* name, Wait kind) {
  int64_t total = value;
  if (!MpiSession::active()) return total;
  MPI_Request request;
  HAWADA_CHECK_MPI(MPI_Iallreduce(&value, &total, 1, MPI_INT64_T, op, MPI_COMM_WORLD, &request));
  wait(request, name, kind);
  return total;
}
}  // namespace

int64_t sum(int64_t value, Wait kind) { return reduce(value, MPI_SUM, "sum", kind); }
int64_t max(int64_t value, Wait kind) { return reduce(value, MPI_MAX, "max", kind); }

}  // namespace world
}  // namespace hawada
