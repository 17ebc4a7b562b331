// JSON that comes from outside (config.json, index.json, safetensors headers, preprocessor and
// generation configs, plan.json, latency tables, the teacher-cache index): nesting is bounded before
// anything parses or recurses over it, and error messages quote a bounded excerpt, never the value.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/base.h>
#include <nlohmann/json_fwd.hpp>

namespace hawada {

/// Deeper nesting than this is refused (real files nest a few levels).
inline constexpr int kMaxJsonDepth = 64;

/// Empty when `text` nests at most `max_depth` arrays/objects deep (one iterative pass that respects
/// strings and escapes); otherwise what is wrong, for the caller's typed error.
std::string json_depth_problem(std::string_view text, int max_depth = kMaxJsonDepth);

/// A single-line excerpt of a value for messages: scalars as JSON, containers by their first items,
/// at most `max_chars` characters.
std::string json_excerpt(const nlohmann::json& value, std::size_t max_chars = 80);

/// The integer a JSON value holds. nlohmann's get<int64_t>() converts a float (1e30) by a cast whose
/// result is undefined; these refuse anything but a JSON integer within int64 with a
/// nlohmann::json::type_error (callers turn it into their typed error naming the file).
int64_t json_int(const nlohmann::json& value);
/// An array of JSON integers, each as json_int.
std::vector<int64_t> json_ints(const nlohmann::json& value);

/// `j[key]` formatted with `f` when it is a number; "n/a" when it is absent or not a number (reports, model
/// cards: a summary written by an older or failed run must still render).
std::string json_number_text(const nlohmann::json& j, const char* key, fmt::format_string<double> f = "{:.4g}");

}  // namespace hawada
