#include "adapters/arch.h"

#include <nlohmann/json.hpp>

#include "core/base/errors.h"
#include "core/base/json_input.h"

namespace hawada {
namespace {

[[noreturn]] void fail(const std::filesystem::path& file, const char* key, const std::string& what) {
  throw CheckpointError("'" + file.string() + "': key '" + key + "': " + what);
}

}  // namespace

namespace config_field {

int64_t integer(const nlohmann::json& config, const char* key, const std::filesystem::path& file,
                const int64_t* fallback, bool allow_zero, int64_t max) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) {
    if (!fallback) fail(file, key, "missing required integer");
    return *fallback;
  }
  if (!it->is_number_integer()) fail(file, key, "expected an integer, got " + json_excerpt(*it));
  int64_t v = it->get<int64_t>();
  if (v < 0 || (v == 0 && !allow_zero))
    fail(file, key,
         std::string("expected ") + (allow_zero ? "a non-negative" : "a positive") + " integer, got " +
             std::to_string(v));
  if (v > max) fail(file, key, "expected at most " + std::to_string(max) + ", got " + std::to_string(v));
  return v;
}

bool boolean(const nlohmann::json& config, const char* key, const std::filesystem::path& file, bool fallback) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) fail(file, key, "expected true or false, got " + json_excerpt(*it));
  return it->get<bool>();
}

std::string string(const nlohmann::json& config, const char* key, const std::filesystem::path& file,
                   const std::string& fallback) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return fallback;
  if (!it->is_string()) fail(file, key, "expected a string, got " + json_excerpt(*it));
  return it->get<std::string>();
}

std::string architecture(const nlohmann::json& config, const std::string& fallback) {
  auto a = config.find("architectures");
  if (a != config.end() && a->is_array() && !a->empty() && (*a)[0].is_string()) return (*a)[0].get<std::string>();
  return fallback;
}

double number(const nlohmann::json& config, const char* key, const std::filesystem::path& file, double fallback) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return fallback;
  if (!it->is_number()) fail(file, key, "expected a number, got " + json_excerpt(*it));
  return it->get<double>();
}

}  // namespace config_field

}  // namespace hawada
