// File-system primitives with the crash-safety contract of DESIGN.md: write to a temporary name in
// the same directory, fsync, rename over the final name, fsync the directory. A reader sees either
// the old file or the new one, never a partial file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace hawada {

/// An open file descriptor for writing, closed on destruction. All failures throw IoError naming the file.
class OutputFile {
 public:
  explicit OutputFile(const std::filesystem::path& path);
  ~OutputFile();
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;
  /// Writes all `size` bytes (loops over partial writes).
  void write(const void* data, size_t size);
  /// Flushes file data to stable storage.
  void sync();
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  int fd_ = -1;
};

/// A temporary sibling name for `final_path`, unique per host, process and call: ".<name>.tmp.<host>.<pid>.<n>".
std::filesystem::path temp_sibling(const std::filesystem::path& final_path);

/// Whether `temp` (a temp_sibling name) was left by a writer that can no longer finish it: written on this host
/// by a process that has ended, or, from another host (a shared filesystem: whether it runs cannot be known here),
/// last modified more than `grace_s` seconds ago. A temporary another job is still writing is never abandoned
/// (two jobs may fill one teacher cache at once).
bool abandoned_temp(const std::filesystem::path& temp, double grace_s = 3600);

/// Writes a file atomically: `fill` writes into a temporary sibling, which is synced and renamed
/// over `final_path`; the directory is synced. On any exception the temporary is removed.
void atomic_write(const std::filesystem::path& final_path, const std::function<void(OutputFile&)>& fill);
/// Atomic write of a string.
void atomic_write_text(const std::filesystem::path& final_path, std::string_view text);
/// fsync of a directory, so a rename inside it is durable.
void sync_directory(const std::filesystem::path& dir);
/// fsync of a file already written and closed (e.g. by a library that does not sync).
void sync_file(const std::filesystem::path& path);
/// rename(from, to) followed by an fsync of to's directory; IoError naming both on failure.
void rename_into(const std::filesystem::path& from, const std::filesystem::path& to);

/// Copies a file's bytes to `to` (created or truncated) and syncs it.
void copy_file_synced(const std::filesystem::path& from, const std::filesystem::path& to);

/// Builds a directory under a temporary sibling name and publishes it by rename: `final_dir` either
/// does not exist or is complete. Refuses (IoError) when `final_dir` already exists, so nothing
/// written earlier is replaced. On an exception the temporary directory is removed.
void publish_directory(const std::filesystem::path& final_dir,
                       const std::function<void(const std::filesystem::path& tmp_dir)>& fill);

/// Whole file as a string; IoError naming the file when it cannot be read.
std::string read_text_file(const std::filesystem::path& path);

/// A read-only view of a whole file, memory-mapped copy-on-write (MAP_PRIVATE): pages load on first
/// touch, and a tensor made on it that is written to gets private pages instead of a SIGSEGV.
class MappedFile {
 public:
  /// Throws IoError when the file cannot be opened or mapped.
  static std::shared_ptr<const MappedFile> open(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  MappedFile() = default;
  std::filesystem::path path_;
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace hawada
