// Whether the calling thread is inside activation checkpointing's recomputation: running a
// recomputed run's layers' forwards again, right before their backward. Wrappers around a
// layer's forward read it (sharded data parallelism keeps what a recompute gathers for the
// backward that follows at once); the pipeline executor sets it around each recomputed run.
#pragma once

namespace smp {

bool recomputing();

// Marks the calling thread as recomputing while it lives.
class RecomputeScope {
 public:
  RecomputeScope();
  ~RecomputeScope();
  RecomputeScope(const RecomputeScope&) = delete;
  RecomputeScope& operator=(const RecomputeScope&) = delete;

 private:
  bool previous_;
};

}  // namespace smp
