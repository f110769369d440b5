// Errors: the two kinds smp distinguishes.
//
// 1. User, config, checkpoint, I/O and communication problems throw a typed exception
//    derived from smp::Error (ConfigError, CheckpointError, CommError, TimeoutError). The
//    message names the field (or operation, or file), the value and what is allowed.
// 2. Broken internal invariants use SMP_CHECK / SMP_CHECK_EQ, which throw
//    smp::InternalError printing the condition and both sides.
//
// The library never calls exit(); mains catch smp::Error, print it, and return
// non-zero (or call smp::comm::abort_world when other ranks may be waiting).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace smp {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A configuration key has a bad type, value or combination.
class ConfigError : public Error {
 public:
  using Error::Error;
};

// A checkpoint on disk is missing, incomplete, corrupt, or does not fit the model loading it
// (the message names the folder or file and the tensor).
class CheckpointError : public Error {
 public:
  using Error::Error;
};

// A collective or point-to-point operation failed (peer died, MPI/NCCL error).
class CommError : public Error {
 public:
  using Error::Error;
};

// An operation did not complete before its deadline.
class TimeoutError : public CommError {
 public:
  using CommError::CommError;
};

// A wait inside a training step was abandoned: the rank it waited on failed in its own step
// (comm/peer_failure.h) and said so; the message names that rank and its error.
class PeerFailedError : public CommError {
 public:
  using CommError::CommError;
};

// An internal invariant does not hold: a bug in smp, not in the caller's input.
class InternalError : public Error {
 public:
  using Error::Error;
};

namespace detail {
[[noreturn]] inline void check_failed(const char* file, int line, const std::string& what) {
  std::ostringstream out;
  out << "smp internal check failed at " << file << ":" << line << ": " << what;
  throw InternalError(out.str());
}

template <typename A, typename B>
[[noreturn]] void check_op_failed(const char* file, int line, const char* expr, const A& a,
                                  const B& b) {
  std::ostringstream out;
  out << expr << " (" << a << " vs " << b << ")";
  check_failed(file, line, out.str());
}
}  // namespace detail

}  // namespace smp

#define SMP_CHECK(cond)                                               \
  do {                                                                \
    if (!(cond)) ::smp::detail::check_failed(__FILE__, __LINE__, #cond); \
  } while (0)

#define SMP_CHECK_EQ(a, b)                                                             \
  do {                                                                                 \
    const auto& smp_check_a_ = (a);                                                    \
    const auto& smp_check_b_ = (b);                                                    \
    if (!(smp_check_a_ == smp_check_b_))                                               \
      ::smp::detail::check_op_failed(__FILE__, __LINE__, #a " == " #b, smp_check_a_, smp_check_b_); \
  } while (0)
