#include "core/base/fs.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>

#include "core/base/errors.h"

namespace hawada {
namespace {

std::string this_host() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

[[noreturn]] void io_fail(const std::string& what, const std::filesystem::path& path) {
  throw IoError(what + " '" + path.string() + "': " + std::strerror(errno));
}

}  // namespace

OutputFile::OutputFile(const std::filesystem::path& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) io_fail("cannot create", path);
}

OutputFile::~OutputFile() {
  if (fd_ >= 0) ::close(fd_);
}

void OutputFile::write(const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    // Linux writes at most ~2 GiB per call; loop over partial writes and EINTR.
    ssize_t n = ::write(fd_, p, std::min<size_t>(size, size_t{1} << 30));
    if (n < 0) {
      if (errno == EINTR) continue;
      io_fail("cannot write", path_);
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
}

void OutputFile::sync() {
  if (::fsync(fd_) != 0) io_fail("cannot fsync", path_);
}

std::filesystem::path temp_sibling(const std::filesystem::path& final_path) {
  static std::atomic<uint64_t> counter{0};
  std::string name = "." + final_path.filename().string() + ".tmp." + this_host() + "." + std::to_string(::getpid()) +
                     "." + std::to_string(counter++);
  return final_path.parent_path() / name;
}

bool abandoned_temp(const std::filesystem::path& temp, double grace_s) {
  // ".<name>.tmp.<host>.<pid>.<n>": host names may hold dots, so pid and n are read from the right.
  const std::string name = temp.filename().string();
  const size_t tag = name.rfind(".tmp.");
  const size_t last = name.rfind('.'), pid_dot = last == std::string::npos ? last : name.rfind('.', last - 1);
  if (tag != std::string::npos && pid_dot != std::string::npos && pid_dot > tag + 4) {
    const std::string host = name.substr(tag + 5, pid_dot - tag - 5);
    const std::string pid_text = name.substr(pid_dot + 1, last - pid_dot - 1);
    char* end = nullptr;
    const long pid = std::strtol(pid_text.c_str(), &end, 10);
    if (host == this_host() && !pid_text.empty() && *end == '\0' && pid > 0)
      return ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
  }
  std::error_code ec;
  const auto written = std::filesystem::last_write_time(temp, ec);
  if (ec) return false;  // gone meanwhile (its writer renamed it)
  const auto age = std::filesystem::file_time_type::clock::now() - written;
  return std::chrono::duration<double>(age).count() > grace_s;
}

void sync_directory(const std::filesystem::path& dir) {
  const auto d = dir.empty() ? std::filesystem::path(".") : dir;
  int fd = ::open(d.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) io_fail("cannot open directory", d);
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) io_fail("cannot fsync directory", d);
}

void atomic_write(const std::filesystem::path& final_path, const std::function<void(OutputFile&)>& fill) {
  const auto tmp = temp_sibling(final_path);
  try {
    {
      OutputFile out(tmp);
      fill(out);
      out.sync();
    }
    if (::rename(tmp.c_str(), final_path.c_str()) != 0) io_fail("cannot rename into", final_path);
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    throw;
  }
  sync_directory(final_path.parent_path());
}

void atomic_write_text(const std::filesystem::path& final_path, std::string_view text) {
  atomic_write(final_path, [&](OutputFile& out) { out.write(text.data(), text.size()); });
}

void sync_file(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) io_fail("cannot open", path);
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) io_fail("cannot fsync", path);
}

void rename_into(const std::filesystem::path& from, const std::filesystem::path& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) io_fail("cannot rename '" + from.string() + "' to", to);
  sync_directory(to.parent_path());
}

void copy_file_synced(const std::filesystem::path& from, const std::filesystem::path& to) {
  const std::string bytes = read_text_file(from);
  OutputFile out(to);
  out.write(bytes.data(), bytes.size());
  out.sync();
}

void publish_directory(const std::filesystem::path& final_dir,
                       const std::function<void(const std::filesystem::path& tmp_dir)>& fill) {
  if (std::filesystem::exists(final_dir))
    throw IoError("'" + final_dir.string() + "' already exists; refusing to replace it");
  const auto parent = final_dir.parent_path().empty() ? std::filesystem::path(".") : final_dir.parent_path();
  std::filesystem::create_directories(parent);
  const auto tmp = temp_sibling(final_dir);
  try {
    std::filesystem::create_directory(tmp);
    fill(tmp);
    sync_directory(tmp);
    if (::rename(tmp.c_str(), final_dir.c_str()) != 0) io_fail("cannot rename into", final_dir);
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove_all(tmp, ignored);
    throw;
  }
  sync_directory(parent);
}

std::string read_text_file(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) io_fail("cannot open", path);
  std::string text;
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int saved = errno;
      ::close(fd);
      errno = saved;
      io_fail("cannot read", path);
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return text;
}

std::shared_ptr<const MappedFile> MappedFile::open(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) io_fail("cannot open", path);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    io_fail("cannot stat", path);
  }
  std::shared_ptr<MappedFile> m(new MappedFile());
  m->path_ = path;
  m->size_ = static_cast<uint64_t>(st.st_size);
  if (m->size_ > 0) {
    void* p = ::mmap(nullptr, m->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int saved = errno;
      ::close(fd);
      errno = saved;
      io_fail("cannot map", path);
    }
    m->data_ = static_cast<uint8_t*>(p);
  }
  ::close(fd);  // the mapping keeps the file alive
  return m;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(data_, size_);
}

}  // namespace hawada
