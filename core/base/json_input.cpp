#include "core/base/json_input.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace hawada {

std::string json_depth_problem(std::string_view text, int max_depth) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"')
      in_string = true;
    else if (c == '[' || c == '{') {
      if (++depth > max_depth)
        return "nests deeper than " + std::to_string(max_depth) + " levels (at byte " + std::to_string(i) + ")";
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return {};
}

namespace {

void excerpt(const nlohmann::json& v, std::string& out, std::size_t max, int level) {
  if (out.size() >= max) return;
  if (v.is_array() || v.is_object()) {
    const bool arr = v.is_array();
    out += arr ? "[" : "{";
    if (level >= 2 && !v.empty()) {
      out += "...";
    } else {
      size_t shown = 0;
      for (auto it = v.begin(); it != v.end() && out.size() < max; ++it, ++shown) {
        if (shown) out += ", ";
        if (shown == 3) {
          out += "... " + std::to_string(v.size()) + " items";
          break;
        }
        if (!arr) out += nlohmann::json(it.key()).dump() + ": ";
        excerpt(*it, out, max, level + 1);
      }
    }
    out += arr ? "]" : "}";
    return;
  }
  std::string s = v.dump();
  if (s.size() > max) s = s.substr(0, max) + "...";
  out += s;
}

}  // namespace

std::string json_excerpt(const nlohmann::json& value, std::size_t max_chars) {
  std::string out;
  excerpt(value, out, max_chars, 0);
  if (out.size() > max_chars + 3) out = out.substr(0, max_chars) + "...";
  return out;
}

int64_t json_int(const nlohmann::json& v) {
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
    throw nlohmann::json::type_error::create(302, "integer out of range: " + json_excerpt(v), nullptr);
  if (!v.is_number_integer())
    throw nlohmann::json::type_error::create(302, "expected an integer, got " + json_excerpt(v), nullptr);
  return v.get<int64_t>();
}

std::vector<int64_t> json_ints(const nlohmann::json& v) {
  if (!v.is_array())
    throw nlohmann::json::type_error::create(302, "expected an array of integers, got " + json_excerpt(v), nullptr);
  std::vector<int64_t> out;
  out.reserve(v.size());
  for (const auto& e : v) out.push_back(json_int(e));
  return out;
}

std::string json_number_text(const nlohmann::json& j, const char* key, fmt::format_string<double> f) {
  const auto it = j.find(key);
  return it != j.end() && it->is_number() ? fmt::format(f, it->get<double>()) : std::string("n/a");
}

}  // namespace hawada
