// {fmt}'s compiled part, built once here (LibTorch's wheel ships fmt's headers but not its library, and
// Debian's libfmt is another version: see cmake/HawadaDependencies.cmake). Every other translation unit
// includes <fmt/format.h> as a declaration-only header; defining FMT_HEADER_ONLY instead compiled all of
// format-inl.h into each of them (~8 s of CPU a file). The explicit instantiations are the ones
// <fmt/format.h> declares FMT_API for the char case.
#include <fmt/format-inl.h>

FMT_BEGIN_NAMESPACE
namespace detail {

template FMT_API auto dragonbox::to_decimal(float x) noexcept -> dragonbox::decimal_fp<float>;
template FMT_API auto dragonbox::to_decimal(double x) noexcept -> dragonbox::decimal_fp<double>;
template FMT_API auto thousands_sep_impl(locale_ref) -> thousands_sep_result<char>;
template FMT_API auto decimal_point_impl(locale_ref) -> char;

}  // namespace detail
FMT_END_NAMESPACE
