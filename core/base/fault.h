// Fault injection for the fault tests: HAWADA_FAULT="<point>@<rank>[:<action>]" makes the named
// point fail on that rank; action "throw" (default) raises IoError, "kill" sends SIGKILL to itself,
// "term" sends SIGTERM to itself (a preemption), "stop" sends SIGSTOP to itself (a hung rank), "pause" sleeps 5 s there
// (a slow writer), "flag" makes fault_flag() true there. Several specs may be separated by commas. Unset, a fault point
// costs one getenv per call.
#pragma once

#include <string_view>

namespace hawada {

/// Fails here if HAWADA_FAULT names this point for this rank.
void fault_point(std::string_view point);
/// True if HAWADA_FAULT names this point for this rank with action "flag" (the caller then corrupts
/// something on purpose, to show it is detected).
bool fault_flag(std::string_view point);

}  // namespace hawada
