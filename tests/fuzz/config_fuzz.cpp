// Fuzz target: SMP's config parser and validator (src/core/config.cpp).
//
// Entry points: smp::Config::from_json_string (JSON text: what from_json_file and from_env read)
// and smp::Config::from_mp_parameters_string (SageMaker's "key=value,..." form), both on every
// input. A config that parses must then hold its documented properties: validate() passes
// again, placement_letters(), to_json(), summary() and not_implemented_warnings() do not throw,
// to_json() dumps as JSON, from_json(to_json()) gives back the same values, and
// validate_world throws only ConfigError, and where it passes rdp_degree gives the degree.
#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "fuzz_common.h"
#include "smp/core/config.h"

namespace {

using smp::Config;
using smp::fuzz::expect_no_throw;
using smp::fuzz::expect_smp_errors;

void check_parsed(const Config& config) {
  expect_no_throw("Config properties", [&] {
    config.validate();
    const std::string letters = config.placement_letters();
    SMP_FUZZ_CHECK(letters.size() == 3, "Config::placement_letters", "got \"" + letters + "\"");
    const nlohmann::json json = config.to_json();
    (void)json.dump();
    (void)config.summary();
    (void)config.not_implemented_warnings();
    const Config again = Config::from_json(json);
    SMP_FUZZ_CHECK(again.to_json() == json, "Config::from_json(to_json())",
          "round trip changed the config: " + json.dump() + " -> " + again.to_json().dump());
  });
  for (const int world : {1, 2, 4, 8, 0}) {
    if (!expect_smp_errors("Config::validate_world", [&] { config.validate_world(world); })) continue;
    expect_no_throw("Config::rdp_degree", [&] {
      const int rdp = config.rdp_degree(world);
      SMP_FUZZ_CHECK(rdp >= 1 && static_cast<int64_t>(rdp) * config.pipeline_parallel_degree *
                                config.tensor_parallel_degree == world,
            "Config::rdp_degree", "rdp " + std::to_string(rdp) + " on " + std::to_string(world));
    });
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::optional<Config> config;
  expect_smp_errors("Config::from_json_string", [&] { config = Config::from_json_string(text); });
  if (config) check_parsed(*config);
  config.reset();
  expect_smp_errors("Config::from_mp_parameters_string",
                    [&] { config = Config::from_mp_parameters_string(text); });
  if (config) check_parsed(*config);
  return 0;
}
