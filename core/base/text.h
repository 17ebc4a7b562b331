// Small text helpers shared by every layer (no third-party dependencies).
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace hawada {

/// Optimal-string-alignment distance between a and b: insertions, deletions, substitutions and swaps of
/// two adjacent characters each cost 1 (so "stpes" is 1 away from "steps"). Case-sensitive, bytewise.
std::size_t edit_distance(std::string_view a, std::string_view b);

/// The candidate closest to `word` by edit_distance, if that distance is at most max_distance; the first
/// candidate wins ties. Without max_distance, max(1, word.size() / 3) is used, which suggests typos
/// but not unrelated words. An exact match (distance 0) is returned too.
std::optional<std::string> nearest(std::string_view word, std::span<const std::string_view> candidates,
                                   std::optional<std::size_t> max_distance = std::nullopt);

}  // namespace hawada
