#include "smp/pipeline/recompute.h"

namespace smp {

namespace {
thread_local bool recomputing_now = false;
}  // namespace

bool recomputing() { return recomputing_now; }

RecomputeScope::RecomputeScope() : previous_(recomputing_now) { recomputing_now = true; }

RecomputeScope::~RecomputeScope() { recomputing_now = previous_; }

}  // namespace smp
