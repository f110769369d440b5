// Tests for smp::Config: SMP defaults (derived ones included), the "partitions" alias, every
// value and cross-field rule with a good and a bad input, unknown keys, the four sources
// (JSON value, string, file, SM_HP_MP_PARAMETERS, key=value string), world-size checks,
// not-implemented warnings and the to_json round trip. No processes, no MPI.
#include "smp/core/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "smp/core/error.h"
#include "testing/temp_dir.h"

namespace smp {
namespace {

using json = nlohmann::json;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

// The ConfigError message `build` throws, or a marker that fails every HasSubstr.
template <typename Fn>
std::string config_error(Fn&& build) {
  try {
    build();
  } catch (const ConfigError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<wrong exception type: ") + e.what() + ">";
  }
  return "<no exception>";
}

std::string error_for(const json& params) {
  return config_error([&] { Config::from_json(params); });
}

using smp::testing::TempDir;

// Sets (or unsets, with nullopt) an environment variable and restores it on destruction.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::optional<std::string>& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) {
      setenv(name, value->c_str(), 1);
    } else {
      unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      setenv(name_, old_->c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// ---- defaults ----

TEST(ConfigTest, DefaultsAreSmpDefaults) {
  const Config c = Config::from_json(json::object());
  EXPECT_EQ(c.pipeline_parallel_degree, 1);
  EXPECT_EQ(c.microbatches, 1);
  EXPECT_EQ(c.pipeline, PipelineMode::kInterleaved);
  EXPECT_EQ(c.optimize, OptimizeFor::kMemory);
  EXPECT_EQ(c.placement_strategy, "cluster");
  EXPECT_TRUE(c.auto_partition);
  EXPECT_EQ(c.default_partition, 0);
  EXPECT_DOUBLE_EQ(c.memory_weight, 0.8);
  EXPECT_EQ(c.active_microbatches, 3);
  EXPECT_FALSE(c.deterministic_server);
  EXPECT_FALSE(c.skip_tracing);
  EXPECT_FALSE(c.load_partition);
  EXPECT_EQ(c.partition_file, "");
  EXPECT_FALSE(c.ddp);
  EXPECT_FALSE(c.ddp_port.has_value());
  EXPECT_EQ(c.ddp_dist_backend, DdpBackend::kAuto);
  EXPECT_EQ(c.tensor_parallel_degree, 1);
  EXPECT_FALSE(c.prescaled_batch);
  EXPECT_FALSE(c.shard_optimizer_state);
  EXPECT_FALSE(c.offload_activations);
  EXPECT_EQ(c.activation_loading_horizon, 4);
  EXPECT_FALSE(c.delayed_parameter_initialization);
  EXPECT_EQ(c.sharded_data_parallel_degree, 1);
  EXPECT_EQ(c.sdp_reduce_bucket_size, 500000000);
  EXPECT_EQ(c.sdp_param_persistence_threshold, 1000000);
  EXPECT_EQ(c.sdp_max_live_parameters, 1000000000);
  EXPECT_TRUE(c.sdp_hierarchical_allgather);
  EXPECT_DOUBLE_EQ(c.sdp_gradient_clipping, 1.0);
  EXPECT_FALSE(c.fp16);
  EXPECT_FALSE(c.bf16);
  EXPECT_FALSE(c.fp16_params);
  EXPECT_FALSE(c.static_mode);
  EXPECT_FALSE(c.fast_mode);
  EXPECT_TRUE(c.contiguous);
  EXPECT_FALSE(c.horovod);
  EXPECT_DOUBLE_EQ(c.comm_timeout_s, 60.0);
  EXPECT_FALSE(c.offload_optimizer_state);
  EXPECT_TRUE(c.given.empty());
  // A default-constructed Config is the same as an empty parameter object.
  EXPECT_EQ(Config{}.to_json(), c.to_json());
  EXPECT_NO_THROW(Config{}.validate());
}

TEST(ConfigTest, ActiveMicrobatchesDefaultsToPipelineDegreePlusTwo) {
  EXPECT_EQ(Config::from_json({{"pipeline_parallel_degree", 4}}).active_microbatches, 6);
  EXPECT_EQ(Config::from_json({{"partitions", 8}}).active_microbatches, 10);
  // An explicit value wins, whatever its relation to the degree.
  EXPECT_EQ(Config::from_json({{"pipeline_parallel_degree", 4}, {"active_microbatches", 2}}).active_microbatches, 2);
  EXPECT_EQ(Config::from_json({{"active_microbatches", 1}}).active_microbatches, 1);
}

TEST(ConfigTest, MemoryWeightDefaultDependsOnOptimize) {
  EXPECT_DOUBLE_EQ(Config::from_json({{"optimize", "memory"}}).memory_weight, 0.8);
  EXPECT_DOUBLE_EQ(Config::from_json({{"optimize", "speed"}}).memory_weight, 0.2);
  EXPECT_EQ(Config::from_json({{"optimize", "speed"}}).optimize, OptimizeFor::kSpeed);
  // An explicit memory_weight wins over the derived one.
  EXPECT_DOUBLE_EQ(Config::from_json({{"optimize", "speed"}, {"memory_weight", 0.5}}).memory_weight, 0.5);
  EXPECT_DOUBLE_EQ(Config::from_json({{"optimize", "speed"}, {"memory_weight", 0.8}}).memory_weight, 0.8);
  EXPECT_DOUBLE_EQ(Config::from_json({{"memory_weight", 0.3}}).memory_weight, 0.3);
}

TEST(ConfigTest, GivenRecordsCanonicalKeys) {
  const Config c = Config::from_json({{"partitions", 2}, {"microbatches", 4}});
  EXPECT_EQ(c.given, (std::set<std::string>{"pipeline_parallel_degree", "microbatches"}));
  EXPECT_TRUE(c.is_given("pipeline_parallel_degree"));
  EXPECT_FALSE(c.is_given("partitions"));
  EXPECT_FALSE(c.is_given("ddp"));
}

// ---- the partitions alias ----

TEST(ConfigTest, PartitionsIsAnAliasOfPipelineParallelDegree) {
  EXPECT_EQ(Config::from_json({{"partitions", 4}}).pipeline_parallel_degree, 4);
  EXPECT_EQ(Config::from_json({{"pipeline_parallel_degree", 4}}).pipeline_parallel_degree, 4);
  EXPECT_EQ(Config::from_json({{"partitions", 4}, {"pipeline_parallel_degree", 4}}).pipeline_parallel_degree, 4);
  // Errors name the key as the user spelled it.
  EXPECT_THAT(error_for({{"partitions", 0}}),
              AllOf(HasSubstr("config key \"partitions\""), HasSubstr("got 0"), HasSubstr("an integer >= 1")));
}

TEST(ConfigTest, ConflictingAliasesAreAnError) {
  EXPECT_THAT(error_for({{"partitions", 2}, {"pipeline_parallel_degree", 4}}),
              AllOf(HasSubstr("\"partitions\""), HasSubstr("\"pipeline_parallel_degree\""), HasSubstr("got 2 and 4"),
                    HasSubstr("allowed: one of them, or the same value in both")));
}

// ---- value rules: good inputs ----

TEST(ConfigTest, AcceptsValidValues) {
  const std::vector<json> good = {
      {{"pipeline_parallel_degree", 2.0}},  // an integral float is an integer
      {{"microbatches", 8}},
      {{"pipeline", "simple"}},
      {{"pipeline", "interleaved"}},
      {{"pipeline", "_only_forward"}},
      {{"optimize", "speed"}},
      {{"placement_strategy", "spread"}},
      {{"placement_strategy", "cluster"}},
      {{"placement_strategy", "DPT"}},
      {{"placement_strategy", "tpd"}},
      {{"placement_strategy", "PdT"}},
      {{"auto_partition", false}, {"default_partition", 1}, {"pipeline_parallel_degree", 2}},
      {{"memory_weight", 0}},  // a float key accepts integers
      {{"memory_weight", 1}},
      {{"memory_weight", 0.25}},
      {{"ddp", true}, {"ddp_port", 29500}},
      {{"ddp", true}, {"ddp_port", 65535}},
      {{"ddp_port", nullptr}},
      {{"ddp", true}, {"ddp_dist_backend", "nccl"}},
      {{"ddp_dist_backend", "auto"}},
      {{"tensor_parallel_degree", 2}, {"ddp", true}},
      {{"tensor_parallel_degree", 1}},
      {{"activation_loading_horizon", 1}},
      {{"sharded_data_parallel_degree", 2}, {"ddp", true}},
      {{"sharded_data_parallel_degree", 2}, {"tensor_parallel_degree", 2}, {"ddp", true}},
      {{"sdp_reduce_bucket_size", 5e8}},
      {{"sdp_param_persistence_threshold", 0}},
      {{"sdp_max_live_parameters", 1e12}},  // beyond 32 bits
      {{"sdp_gradient_clipping", 2}},
      {{"fp16", true}},
      {{"bf16", true}},  // smp allows bf16 without sharded data parallelism
      {{"fp16", true}, {"bf16", false}},
      {{"partition_file", "/tmp/partition.json"}},
      {{"horovod", true}},
      {{"contiguous", false}},
      {{"comm_timeout_s", 5}},
      {{"comm_timeout_s", 0.5}},
  };
  for (const json& params : good) {
    SCOPED_TRACE(params.dump());
    EXPECT_NO_THROW(Config::from_json(params));
  }
}

TEST(ConfigTest, StoresParsedValues) {
  const Config c = Config::from_json({{"pipeline_parallel_degree", 2.0},
                                      {"pipeline", "simple"},
                                      {"placement_strategy", "tpd"},
                                      {"ddp", true},
                                      {"ddp_port", 29500},
                                      {"ddp_dist_backend", "nccl"},
                                      {"sdp_reduce_bucket_size", 5e8},
                                      {"sdp_max_live_parameters", 1e12},
                                      {"comm_timeout_s", 5}});
  EXPECT_EQ(c.pipeline_parallel_degree, 2);
  EXPECT_EQ(c.pipeline, PipelineMode::kSimple);
  EXPECT_EQ(c.placement_strategy, "tpd");  // stored as given
  EXPECT_EQ(c.placement_letters(), "TPD");
  EXPECT_EQ(c.ddp_port, 29500);
  EXPECT_EQ(c.ddp_dist_backend, DdpBackend::kNccl);
  EXPECT_EQ(c.sdp_reduce_bucket_size, 500000000);
  EXPECT_EQ(c.sdp_max_live_parameters, 1000000000000LL);
  EXPECT_DOUBLE_EQ(c.comm_timeout_s, 5.0);
}

TEST(ConfigTest, PlacementLetters) {
  EXPECT_EQ(Config::from_json({{"placement_strategy", "cluster"}}).placement_letters(), "DPT");
  EXPECT_EQ(Config::from_json({{"placement_strategy", "spread"}}).placement_letters(), "TPD");
  EXPECT_EQ(Config::from_json({{"placement_strategy", "Spread"}}).placement_letters(), "TPD");
  EXPECT_EQ(Config::from_json({{"placement_strategy", "pTd"}}).placement_letters(), "PTD");
}

// ---- value and type rules: bad inputs ----

struct BadCase {
  json params;
  std::vector<std::string> message_parts;  // key, value given, what is allowed
};

TEST(ConfigTest, RejectsBadValuesNamingKeyValueAndAllowed) {
  const std::string kBool = "allowed: true or false";
  const std::vector<BadCase> bad = {
      {{{"pipeline_parallel_degree", 0}}, {"\"pipeline_parallel_degree\"", "got 0", "an integer >= 1"}},
      {{{"pipeline_parallel_degree", 2.5}}, {"\"pipeline_parallel_degree\"", "got 2.5", "an integer >= 1"}},
      {{{"pipeline_parallel_degree", "2"}}, {"\"pipeline_parallel_degree\"", "got \"2\"", "an integer >= 1"}},
      {{{"pipeline_parallel_degree", 1e12}}, {"\"pipeline_parallel_degree\"", "got 1000000000000.0", "an integer"}},
      {{{"pipeline_parallel_degree", true}}, {"\"pipeline_parallel_degree\"", "got true", "an integer"}},
      {{{"microbatches", 0}}, {"\"microbatches\"", "got 0", "an integer >= 1"}},
      {{{"microbatches", -3}}, {"\"microbatches\"", "got -3", "an integer >= 1"}},
      {{{"microbatches", true}}, {"\"microbatches\"", "got true", "an integer >= 1"}},
      {{{"pipeline", "gpipe"}},
       {"config key \"pipeline\": got \"gpipe\"; allowed: \"interleaved\", \"simple\""}},
      {{{"pipeline", 1}}, {"\"pipeline\"", "got 1", "\"interleaved\", \"simple\""}},
      {{{"optimize", "fast"}}, {"\"optimize\"", "got \"fast\"", "allowed: \"memory\", \"speed\""}},
      {{{"placement_strategy", "DPP"}}, {"\"placement_strategy\"", "got \"DPP\"", "\"cluster\", \"spread\"", "D, P, T"}},
      {{{"placement_strategy", "DP"}}, {"\"placement_strategy\"", "got \"DP\"", "permutation"}},
      {{{"placement_strategy", "DPTD"}}, {"\"placement_strategy\"", "got \"DPTD\"", "permutation"}},
      {{{"placement_strategy", 3}}, {"\"placement_strategy\"", "got 3", "\"cluster\""}},
      {{{"auto_partition", 1}}, {"\"auto_partition\"", "got 1", kBool}},
      {{{"auto_partition", "true"}}, {"\"auto_partition\"", "got \"true\"", kBool}},
      {{{"default_partition", -1}}, {"\"default_partition\"", "got -1", "an integer >= 0"}},
      {{{"default_partition", 2}, {"pipeline_parallel_degree", 2}},
       {"\"default_partition\"", "got 2", "[0, 1]", "pipeline_parallel_degree (2)"}},
      {{{"default_partition", 1}}, {"\"default_partition\"", "got 1", "pipeline_parallel_degree (1)"}},
      {{{"memory_weight", 1.5}}, {"\"memory_weight\"", "got 1.5", "a number in [0, 1]"}},
      {{{"memory_weight", -0.1}}, {"\"memory_weight\"", "got -0.1", "a number in [0, 1]"}},
      {{{"memory_weight", "0.5"}}, {"\"memory_weight\"", "got \"0.5\"", "a number in [0, 1]"}},
      {{{"memory_weight", false}}, {"\"memory_weight\"", "got false", "a number in [0, 1]"}},
      {{{"ddp", "yes"}}, {"\"ddp\"", "got \"yes\"", kBool}},
      {{{"ddp", 0}}, {"\"ddp\"", "got 0", kBool}},
      {{{"ddp", true}, {"ddp_port", 0}}, {"\"ddp_port\"", "got 0", "an integer in [1, 65535]"}},
      {{{"ddp", true}, {"ddp_port", 70000}}, {"\"ddp_port\"", "got 70000", "an integer in [1, 65535]"}},
      {{{"ddp", true}, {"ddp_port", 80.5}}, {"\"ddp_port\"", "got 80.5", "an integer in [1, 65535]"}},
      {{{"ddp_port", 29500}}, {"\"ddp_port\"", "got 29500", "requires \"ddp\": true"}},
      {{{"load_partition", true}}, {"\"load_partition\"", "got true", "set \"partition_file\""}},
      {{{"delayed_parameter_initialization", true}},
       {"\"delayed_parameter_initialization\"", "got true", "\"sharded_data_parallel_degree\" > 1"}},
      {{{"ddp", false}, {"ddp_port", 29500}}, {"\"ddp_port\"", "got 29500", "requires \"ddp\": true"}},
      {{{"ddp", true}, {"ddp_dist_backend", "gloo"}},
       {"\"ddp_dist_backend\"", "got \"gloo\"", "allowed: \"auto\", \"nccl\""}},
      {{{"ddp_dist_backend", "nccl"}}, {"\"ddp_dist_backend\"", "got \"nccl\"", "requires \"ddp\": true"}},
      {{{"active_microbatches", 0}}, {"\"active_microbatches\"", "got 0", "an integer >= 1"}},
      {{{"deterministic_server", 0}}, {"\"deterministic_server\"", "got 0", kBool}},
      {{{"skip_tracing", 1}}, {"\"skip_tracing\"", "got 1", kBool}},
      {{{"load_partition", "false"}}, {"\"load_partition\"", "got \"false\"", kBool}},
      {{{"partition_file", 3}}, {"\"partition_file\"", "got 3", "a string"}},
      {{{"tensor_parallel_degree", 0}}, {"\"tensor_parallel_degree\"", "got 0", "an integer >= 1"}},
      {{{"tensor_parallel_degree", 2}},
       {"\"tensor_parallel_degree\"", "got 2", "requires \"ddp\": true", "set \"ddp\": true"}},
      {{{"tensor_parallel_degree", 2}, {"ddp", false}}, {"\"tensor_parallel_degree\"", "set \"ddp\": true"}},
      {{{"prescaled_batch", "no"}}, {"\"prescaled_batch\"", "got \"no\"", kBool}},
      {{{"shard_optimizer_state", 1}}, {"\"shard_optimizer_state\"", "got 1", kBool}},
      {{{"offload_activations", 1}}, {"\"offload_activations\"", "got 1", kBool}},
      {{{"offload_optimizer_state", "yes"}}, {"\"offload_optimizer_state\"", "got \"yes\"", kBool}},
      {{{"activation_loading_horizon", 0}}, {"\"activation_loading_horizon\"", "got 0", "an integer >= 1"}},
      {{{"delayed_parameter_initialization", "x"}}, {"\"delayed_parameter_initialization\"", "got \"x\"", kBool}},
      {{{"sharded_data_parallel_degree", 0}}, {"\"sharded_data_parallel_degree\"", "got 0", "an integer >= 1"}},
      {{{"sharded_data_parallel_degree", 2}, {"pipeline_parallel_degree", 2}},
       {"\"sharded_data_parallel_degree\"", "got 2", "pipeline parallelism", "allowed: 1 when pipeline_parallel_degree > 1"}},
      {{{"shard_optimizer_state", true}}, {"\"shard_optimizer_state\"", "got true", "requires \"ddp\": true"}},
      {{{"sharded_data_parallel_degree", 2}}, {"\"sharded_data_parallel_degree\"", "got 2", "requires \"ddp\": true"}},
      {{{"sharded_data_parallel_degree", 2}, {"shard_optimizer_state", true}},
       {"\"sharded_data_parallel_degree\"", "got 2", "allowed: 1 when \"shard_optimizer_state\" is true"}},
      {{{"sdp_reduce_bucket_size", 2.5}}, {"\"sdp_reduce_bucket_size\"", "got 2.5", "an integer >= 1"}},
      {{{"sdp_reduce_bucket_size", 0}}, {"\"sdp_reduce_bucket_size\"", "got 0", "an integer >= 1"}},
      {{{"sdp_reduce_bucket_size", "5e8"}}, {"\"sdp_reduce_bucket_size\"", "got \"5e8\"", "an integer >= 1"}},
      {{{"sdp_param_persistence_threshold", -1}}, {"\"sdp_param_persistence_threshold\"", "got -1", "an integer >= 0"}},
      {{{"sdp_max_live_parameters", 0}}, {"\"sdp_max_live_parameters\"", "got 0", "an integer >= 1"}},
      {{{"sdp_hierarchical_allgather", 1}}, {"\"sdp_hierarchical_allgather\"", "got 1", kBool}},
      {{{"sdp_gradient_clipping", 0}}, {"\"sdp_gradient_clipping\"", "got 0", "a number > 0"}},
      {{{"sdp_gradient_clipping", -1.0}}, {"\"sdp_gradient_clipping\"", "got -1.0", "a number > 0"}},
      {{{"sdp_gradient_clipping", "1"}}, {"\"sdp_gradient_clipping\"", "got \"1\"", "a number > 0"}},
      {{{"fp16", 1}}, {"\"fp16\"", "got 1", kBool}},
      {{{"bf16", "true"}}, {"\"bf16\"", "got \"true\"", kBool}},
      {{{"fp16", true}, {"bf16", true}}, {"\"fp16\"", "\"bf16\"", "got true and true", "at most one of them"}},
      {{{"fp16_params", 1}}, {"\"fp16_params\"", "got 1", kBool}},
      {{{"fp16_params", true}, {"bf16", true}}, {"\"fp16_params\"", "\"bf16\"", "got true and true", "at most one of them"}},
      {{{"static_mode", 1}}, {"\"static_mode\"", "got 1", kBool}},
      {{{"fast_mode", nullptr}}, {"\"fast_mode\"", "got null", kBool}},
      {{{"contiguous", 0}}, {"\"contiguous\"", "got 0", kBool}},
      {{{"horovod", "no"}}, {"\"horovod\"", "got \"no\"", kBool}},
      {{{"horovod", true}, {"ddp", true}}, {"\"ddp\"", "\"horovod\"", "got true and true", "at most one of them"}},
      {{{"comm_timeout_s", 0}}, {"\"comm_timeout_s\"", "got 0", "a number > 0"}},
      {{{"phase_timeout_s", 0}}, {"\"phase_timeout_s\"", "got 0", "a number > 0"}},
      {{{"comm_timeout_s", -5}}, {"\"comm_timeout_s\"", "got -5", "a number > 0"}},
      {{{"comm_timeout_s", "60"}}, {"\"comm_timeout_s\"", "got \"60\"", "a number > 0"}},
  };
  for (const BadCase& c : bad) {
    SCOPED_TRACE(c.params.dump());
    const std::string message = error_for(c.params);
    for (const std::string& part : c.message_parts) EXPECT_THAT(message, HasSubstr(part));
  }
}

TEST(ConfigTest, RejectsNonObjects) {
  EXPECT_THAT(error_for(json::array({1, 2})), AllOf(HasSubstr("JSON object"), HasSubstr("[1,2]")));
  EXPECT_THAT(error_for(json(4)), HasSubstr("JSON object"));
}

TEST(ConfigTest, ValidateChecksEditedFields) {
  Config c;
  EXPECT_NO_THROW(c.validate());
  c.microbatches = 0;
  EXPECT_THAT(config_error([&] { c.validate(); }), AllOf(HasSubstr("\"microbatches\""), HasSubstr("got 0")));
  c = Config{};
  c.placement_strategy = "XYZ";
  EXPECT_THAT(config_error([&] { c.validate(); }), AllOf(HasSubstr("\"placement_strategy\""), HasSubstr("\"XYZ\"")));
  EXPECT_THAT(config_error([&] { c.placement_letters(); }), HasSubstr("\"XYZ\""));
  c = Config{};
  c.ddp_port = 0;
  c.ddp = true;
  EXPECT_THAT(config_error([&] { c.validate(); }), AllOf(HasSubstr("\"ddp_port\""), HasSubstr("got 0")));
  c = Config{};
  c.memory_weight = 2.0;
  EXPECT_THAT(config_error([&] { c.validate(); }), AllOf(HasSubstr("\"memory_weight\""), HasSubstr("got 2.0")));
}

// ---- unknown keys ----

TEST(ConfigTest, UnknownKeySuggestsNearestKey) {
  EXPECT_THAT(error_for({{"microbatch", 4}}),
              HasSubstr("unknown config key \"microbatch\"; did you mean \"microbatches\"?"));
  EXPECT_THAT(error_for({{"pipline", "simple"}}), HasSubstr("did you mean \"pipeline\"?"));
  EXPECT_THAT(error_for({{"ddp_prot", 1}}), HasSubstr("did you mean \"ddp_port\"?"));
  EXPECT_THAT(error_for({{"partition", 2}}), HasSubstr("did you mean \"partitions\"?"));
  EXPECT_THAT(error_for({{"Tensor_Parallel_Degree", 2}}), HasSubstr("did you mean \"tensor_parallel_degree\"?"));
  EXPECT_THAT(error_for({{"tensor_parallel", 2}}), HasSubstr("did you mean \"tensor_parallel_degree\"?"));
  EXPECT_THAT(error_for({{"comm_timeout", 5}}), HasSubstr("did you mean \"comm_timeout_s\"?"));
}

TEST(ConfigTest, UnknownKeyWithoutCloseMatchHasNoSuggestion) {
  for (const char* key : {"foo", "xyzzy_quux", "learning_rate"}) {
    SCOPED_TRACE(key);
    const std::string message = error_for({{key, 1}});
    EXPECT_THAT(message, HasSubstr(std::string("unknown config key \"") + key + "\""));
    EXPECT_THAT(message, Not(HasSubstr("did you mean")));
  }
}

// ---- sources ----

TEST(ConfigTest, FromJsonString) {
  EXPECT_EQ(Config::from_json_string(R"({"partitions": 2, "microbatches": 4})").microbatches, 4);
  EXPECT_THAT(config_error([] { Config::from_json_string(R"({"microbatches": 4,})"); }),
              AllOf(HasSubstr("invalid config JSON"), HasSubstr("line 1, column")));
}

TEST(ConfigTest, FromJsonFile) {
  TempDir dir("smp_config_test");
  const std::string good = dir.write("good.json", R"({"pipeline_parallel_degree": 2, "microbatches": 8})");
  const Config c = Config::from_json_file(good);
  EXPECT_EQ(c.pipeline_parallel_degree, 2);
  EXPECT_EQ(c.microbatches, 8);
}

TEST(ConfigTest, FromJsonFileErrorsNameThePath) {
  TempDir dir("smp_config_test");
  const std::string missing = dir.file("missing.json");
  EXPECT_THAT(config_error([&] { Config::from_json_file(missing); }),
              AllOf(HasSubstr("\"" + missing + "\""), HasSubstr("cannot read"), HasSubstr("No such file")));
  EXPECT_THAT(config_error([&] { Config::from_json_file(dir.file("")); }),
              AllOf(HasSubstr("cannot read"), HasSubstr("directory")));
  const std::string invalid = dir.write("invalid.json", "{\n  \"microbatches\": 4,\n  oops\n}\n");
  EXPECT_THAT(config_error([&] { Config::from_json_file(invalid); }),
              AllOf(HasSubstr("\"" + invalid + "\""), HasSubstr("invalid config JSON"), HasSubstr("line 3, column")));
  const std::string bad_value = dir.write("bad.json", R"({"pipeline": "gpipe"})");
  EXPECT_THAT(config_error([&] { Config::from_json_file(bad_value); }),
              AllOf(HasSubstr("\"" + bad_value + "\""), HasSubstr("config key \"pipeline\": got \"gpipe\"")));
}

TEST(ConfigTest, FromEnv) {
  {
    ScopedEnv env(kMpParametersEnv, std::nullopt);
    EXPECT_EQ(Config::from_env().to_json(), Config{}.to_json());
    EXPECT_TRUE(Config::from_env().given.empty());
  }
  {
    ScopedEnv env(kMpParametersEnv, "  ");
    EXPECT_EQ(Config::from_env().to_json(), Config{}.to_json());
  }
  {
    ScopedEnv env(kMpParametersEnv, R"({"partitions": 2, "microbatches": 4, "ddp": true})");
    const Config c = Config::from_env();
    EXPECT_EQ(c.pipeline_parallel_degree, 2);
    EXPECT_EQ(c.microbatches, 4);
    EXPECT_TRUE(c.ddp);
  }
  {
    ScopedEnv env(kMpParametersEnv, R"({"partitions": 2,)");
    EXPECT_THAT(config_error([] { Config::from_env(); }),
                AllOf(HasSubstr("SM_HP_MP_PARAMETERS"), HasSubstr("invalid config JSON")));
  }
  {
    ScopedEnv env(kMpParametersEnv, R"({"microbatchs": 2})");
    EXPECT_THAT(config_error([] { Config::from_env(); }),
                AllOf(HasSubstr("SM_HP_MP_PARAMETERS"), HasSubstr("did you mean \"microbatches\"?")));
  }
}

TEST(ConfigTest, FromMpParametersString) {
  const Config c = Config::from_mp_parameters_string(
      "partitions=2, microbatches=4,pipeline=simple,ddp=True,placement_strategy=spread,"
      "memory_weight=0.5,partition_file=/tmp/p.json,ddp_port=None,auto_partition=false,");
  EXPECT_EQ(c.pipeline_parallel_degree, 2);
  EXPECT_EQ(c.microbatches, 4);
  EXPECT_EQ(c.pipeline, PipelineMode::kSimple);
  EXPECT_TRUE(c.ddp);
  EXPECT_EQ(c.placement_strategy, "spread");
  EXPECT_DOUBLE_EQ(c.memory_weight, 0.5);
  EXPECT_EQ(c.partition_file, "/tmp/p.json");
  EXPECT_FALSE(c.ddp_port.has_value());
  EXPECT_FALSE(c.auto_partition);
  EXPECT_EQ(Config::from_mp_parameters_string("").to_json(), Config{}.to_json());
  // A JSON object is accepted too.
  EXPECT_EQ(Config::from_mp_parameters_string(R"({"microbatches": 3})").microbatches, 3);
}

TEST(ConfigTest, FromMpParametersStringErrors) {
  EXPECT_THAT(config_error([] { Config::from_mp_parameters_string("partitions=2,ddp"); }),
              AllOf(HasSubstr("--mp_parameters"), HasSubstr("\"ddp\" is not of the form key=value")));
  EXPECT_THAT(config_error([] { Config::from_mp_parameters_string("microbatches=2,microbatches=4"); }),
              HasSubstr("\"microbatches\" is given twice"));
  EXPECT_THAT(config_error([] { Config::from_mp_parameters_string("microbatches=four"); }),
              AllOf(HasSubstr("config key \"microbatches\""), HasSubstr("got \"four\""), HasSubstr("an integer >= 1")));
  EXPECT_THAT(config_error([] { Config::from_mp_parameters_string("ddp=yes"); }),
              AllOf(HasSubstr("\"ddp\""), HasSubstr("got \"yes\""), HasSubstr("true or false")));
}

// ---- world size ----

TEST(ConfigTest, ValidateWorldWithoutParallelism) {
  const Config c = Config::from_json({{"ddp", true}});
  for (int world : {1, 2, 3, 4, 8, 16}) {
    SCOPED_TRACE(world);
    EXPECT_NO_THROW(c.validate_world(world));
    EXPECT_EQ(c.rdp_degree(world), world);
  }
  EXPECT_THAT(config_error([&] { c.validate_world(0); }), AllOf(HasSubstr("got 0"), HasSubstr(">= 1")));
}

TEST(ConfigTest, ReplicasWithoutDdpAreRefused) {
  // Nothing would average the replicas: SMP's scripts always set ddp with data parallelism.
  const Config c = Config::from_json({{"pipeline_parallel_degree", 2}});
  EXPECT_NO_THROW(c.validate_world(2));
  EXPECT_THAT(config_error([&] { c.validate_world(4); }),
              AllOf(HasSubstr("\"ddp\": false with a data-parallel degree of 2"), HasSubstr("world size 4"),
                    HasSubstr("allowed: \"ddp\": true, or a world size of 2")));
  EXPECT_THROW(Config().validate_world(3), ConfigError);
}

TEST(ConfigTest, ValidateWorldWithPipelineDegreeTwo) {
  const Config c = Config::from_json({{"pipeline_parallel_degree", 2}, {"ddp", true}});
  EXPECT_EQ(c.rdp_degree(2), 1);
  EXPECT_EQ(c.rdp_degree(4), 2);
  EXPECT_EQ(c.rdp_degree(8), 4);
  EXPECT_EQ(c.rdp_degree(16), 8);
  for (int world : {1, 3}) {
    SCOPED_TRACE(world);
    EXPECT_THAT(config_error([&] { c.validate_world(world); }),
                HasSubstr("pipeline_parallel_degree (2) * tensor_parallel_degree (1) = 2 does not divide the world size (" +
                          std::to_string(world) + ")"));
    EXPECT_THROW(c.rdp_degree(world), ConfigError);
  }
}

TEST(ConfigTest, ValidateWorldWithPipelineAndTensorDegrees) {
  const Config c = Config::from_json({{"pipeline_parallel_degree", 2}, {"tensor_parallel_degree", 3}, {"ddp", true}});
  EXPECT_THAT(config_error([&] { c.validate_world(8); }),
              HasSubstr("pipeline_parallel_degree (2) * tensor_parallel_degree (3) = 6 does not divide the world size (8)"));
  for (int world : {1, 2, 3, 4, 16}) EXPECT_THROW(c.validate_world(world), ConfigError) << world;
  EXPECT_EQ(c.rdp_degree(6), 1);
  EXPECT_EQ(c.rdp_degree(12), 2);

  const Config pp2tp2 = Config::from_json({{"pipeline_parallel_degree", 2}, {"tensor_parallel_degree", 2}, {"ddp", true}});
  EXPECT_EQ(pp2tp2.rdp_degree(4), 1);
  EXPECT_EQ(pp2tp2.rdp_degree(8), 2);
  EXPECT_EQ(pp2tp2.rdp_degree(16), 4);
  EXPECT_THROW(pp2tp2.validate_world(2), ConfigError);
}

TEST(ConfigTest, ValidateWorldShardedDataParallelDegreeDividesRdp) {
  const Config sdp2 = Config::from_json({{"sharded_data_parallel_degree", 2}, {"ddp", true}});
  EXPECT_THAT(config_error([&] { sdp2.validate_world(1); }),
              AllOf(HasSubstr("sharded_data_parallel_degree (2) does not divide the reduced data-parallel degree (1")));
  EXPECT_THROW(sdp2.validate_world(3), ConfigError);
  for (int world : {2, 4, 8, 16}) EXPECT_NO_THROW(sdp2.validate_world(world)) << world;

  const Config sdp3 = Config::from_json({{"sharded_data_parallel_degree", 3}, {"ddp", true}});
  EXPECT_THAT(config_error([&] { sdp3.validate_world(8); }),
              AllOf(HasSubstr("sharded_data_parallel_degree (3)"), HasSubstr("(8 = world size 8"),
                    HasSubstr("allowed: a divisor of 8")));
  EXPECT_NO_THROW(sdp3.validate_world(3));

  // With tp = 2 the sharding group lives inside the reduced-DP group.
  const Config sdp2tp2 = Config::from_json({{"sharded_data_parallel_degree", 2}, {"tensor_parallel_degree", 2}, {"ddp", true}});
  EXPECT_THROW(sdp2tp2.validate_world(2), ConfigError);
  EXPECT_NO_THROW(sdp2tp2.validate_world(4));
}

// ---- warnings ----

TEST(ConfigTest, NoWarningsForDefaultsOrImplementedKeys) {
  EXPECT_TRUE(Config{}.not_implemented_warnings().empty());
  const Config c = Config::from_json({{"partitions", 2},
                                      {"microbatches", 4},
                                      {"pipeline", "simple"},
                                      {"placement_strategy", "spread"},
                                      {"tensor_parallel_degree", 2},
                                      {"ddp", true},
                                      {"comm_timeout_s", 10},
                                      // live, or smp's reading of them is how smp always runs
                                      {"deterministic_server", true},
                                      {"ddp_port", 29500},
                                      {"ddp_dist_backend", "nccl"},
                                      {"fp16_params", true},
                                      {"static_mode", true},
                                      {"fast_mode", true}});
  EXPECT_TRUE(c.not_implemented_warnings().empty());
}

TEST(ConfigTest, WarnsOnlyForTensorFlowKeys) {
  const Config c = Config::from_json({{"pipeline_parallel_degree", 2},
                                      {"sdp_max_live_parameters", 1000},  // implemented
                                      {"optimize", "speed"},
                                      {"memory_weight", 0.2},       // speed's default: harmless
                                      {"active_microbatches", 5},   // not pp + 2
                                      {"contiguous", true},         // TF-only: always reported
                                      {"horovod", false}});
  // In key-table order (the order of docs/config.md).
  // optimize and active_microbatches are implemented (the partitioner, 1F1B): no warning.
  const std::vector<std::string> expected = {
      "\"contiguous\": true is a TensorFlow-only key; ignored by smp",
      "\"horovod\": false is a TensorFlow-only key; ignored by smp",
  };
  EXPECT_EQ(c.not_implemented_warnings(), expected);
}

// ---- output ----

TEST(ConfigTest, ToJsonHasEveryKeyWithEffectiveValues) {
  const Config c = Config::from_json({{"partitions", 4}, {"optimize", "speed"}, {"pipeline", "simple"}});
  const json out = c.to_json();
  EXPECT_EQ(out.size(), 38u);
  EXPECT_FALSE(out.contains("partitions"));
  EXPECT_EQ(out.at("pipeline_parallel_degree"), 4);
  EXPECT_EQ(out.at("active_microbatches"), 6);
  EXPECT_EQ(out.at("memory_weight"), 0.2);
  EXPECT_EQ(out.at("pipeline"), "simple");
  EXPECT_EQ(out.at("optimize"), "speed");
  EXPECT_EQ(out.at("ddp_dist_backend"), "auto");
  EXPECT_TRUE(out.at("ddp_port").is_null());
  EXPECT_EQ(out.at("comm_timeout_s"), 60.0);
  EXPECT_EQ(out.at("phase_timeout_s"), 3600.0);
  EXPECT_EQ(out.at("offload_optimizer_state"), false);
}

TEST(ConfigTest, RoundTripsThroughJson) {
  const Config c = Config::from_json({{"pipeline_parallel_degree", 2},
                                      {"microbatches", 8},
                                      {"pipeline", "simple"},
                                      {"optimize", "speed"},
                                      {"placement_strategy", "tpd"},
                                      {"auto_partition", false},
                                      {"default_partition", 1},
                                      {"ddp", true},
                                      {"ddp_port", 29500},
                                      {"ddp_dist_backend", "nccl"},
                                      {"tensor_parallel_degree", 2},
                                      {"shard_optimizer_state", true},
                                      {"sdp_max_live_parameters", 1e12},
                                      {"fp16", true},
                                      {"partition_file", "p.json"},
                                      {"comm_timeout_s", 2.5}});
  const Config back = Config::from_json(c.to_json());
  EXPECT_EQ(back.to_json(), c.to_json());
  EXPECT_EQ(Config::from_json_string(c.to_json().dump()).to_json(), c.to_json());
  EXPECT_EQ(Config::from_json(Config{}.to_json()).to_json(), Config{}.to_json());
}

TEST(ConfigTest, SummaryListsKeysAndMarksDefaults) {
  const std::string text = Config::from_json({{"microbatches", 4}}).summary();
  EXPECT_THAT(text, HasSubstr("microbatches = 4\n"));
  EXPECT_THAT(text, HasSubstr("pipeline = \"interleaved\"  (default)\n"));
}

TEST(ConfigTest, EnumSpellings) {
  EXPECT_STREQ(to_string(PipelineMode::kInterleaved), "interleaved");
  EXPECT_STREQ(to_string(PipelineMode::kSimple), "simple");
  EXPECT_STREQ(to_string(PipelineMode::kOnlyForward), "_only_forward");
  EXPECT_STREQ(to_string(PipelineMode::kZeroBubble), "zero_bubble");
  EXPECT_STREQ(to_string(OptimizeFor::kMemory), "memory");
  EXPECT_STREQ(to_string(OptimizeFor::kSpeed), "speed");
  EXPECT_STREQ(to_string(DdpBackend::kAuto), "auto");
  EXPECT_STREQ(to_string(DdpBackend::kNccl), "nccl");
}

}  // namespace
}  // namespace smp
