// Config: parsing, validation and reporting of SMP's model-parallel parameters.
//
// One table (key_specs) describes every key: how to type-check and store a JSON value, how
// to read the field back as JSON, and its value range. Parsing, range checks, to_json and
// not_implemented_warnings all walk that table, so adding a key is one line there plus the
// field in config.h and a row in docs/config.md. Cross-field rules live in validate().
#include "smp/core/config.h"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>

#include <nlohmann/json.hpp>

#include "smp/core/error.h"
#include "smp/core/suggest.h"

namespace smp {
namespace {

using json = nlohmann::json;

// ---- what smp implements ----

// Keys only SMP's TensorFlow flavour reads; smp accepts and ignores them (warning if given).
const std::set<std::string> kTensorFlowOnly = {"contiguous", "horovod"};

// ---- messages ----

// A JSON value as it appears in messages, cut short when long.
std::string show(const json& value) {
  // Bytes that are not UTF-8 (a --mp_parameters value) show as U+FFFD instead of throwing.
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return text;
}

std::string in_quotes(const std::string& key) { return "\"" + key + "\""; }

// Throws the standard message: config key "K": got V; allowed: A.
[[noreturn]] void fail(const std::string& key, const json& value, const std::string& allowed) {
  throw ConfigError("config key " + in_quotes(key) + ": got " + show(value) + "; allowed: " + allowed);
}

// Throws for a cross-field rule: config key "K": got V; <rule>.
[[noreturn]] void fail_rule(const std::string& key, const json& value, const std::string& rule) {
  throw ConfigError("config key " + in_quotes(key) + ": got " + show(value) + "; " + rule);
}

// Rethrows a ConfigError with `where` ("config file \"x.json\"") in front of its message.
template <typename Fn>
Config with_context(const std::string& where, Fn&& build) {
  try {
    return build();
  } catch (const ConfigError& e) {
    throw ConfigError(where + ": " + e.what());
  }
}

// ---- typed parsing of one JSON value ----

bool parse_bool(const std::string& key, const json& value) {
  if (!value.is_boolean()) fail(key, value, "true or false");
  return value.get<bool>();
}

// Accepts JSON integers and integral floats (5e8); rejects 2.5, strings, booleans.
std::int64_t parse_integer(const std::string& key, const json& value, const std::string& allowed) {
  if (value.is_number_unsigned()) {
    if (value.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX)) fail(key, value, allowed);
    return static_cast<std::int64_t>(value.get<std::uint64_t>());
  }
  if (value.is_number_integer()) return value.get<std::int64_t>();
  if (value.is_number_float()) {
    const double x = value.get<double>();
    if (std::isfinite(x) && x == std::floor(x) && std::fabs(x) < 9.2e18) {
      return static_cast<std::int64_t>(x);
    }
  }
  fail(key, value, allowed);
}

double parse_number(const std::string& key, const json& value, const std::string& allowed) {
  if (!value.is_number()) fail(key, value, allowed);
  return value.get<double>();
}

std::string parse_string(const std::string& key, const json& value, const std::string& allowed) {
  if (!value.is_string()) fail(key, value, allowed);
  try {
    (void)value.dump();  // a --mp_parameters value can hold any bytes; to_json() must dump
  } catch (const json::type_error&) {
    fail(key, value, allowed + ", in UTF-8");
  }
  return value.get<std::string>();
}

// ---- the key table ----

struct KeySpec {
  std::string name;  // canonical key
  // Type-checks `value` (given under `key`, which may be an alias) and stores it.
  std::function<void(const std::string& key, const json& value, Config& config)> parse;
  // The field's current value as JSON.
  std::function<json(const Config& config)> get;
  // Range check of the field as it is now; empty when every value of the type is allowed.
  std::function<void(const Config& config)> check;
};

KeySpec bool_key(const char* name, bool Config::*field) {
  return {name, [field](const std::string& key, const json& v, Config& c) { c.*field = parse_bool(key, v); },
          [field](const Config& c) { return json(c.*field); }, {}};
}

KeySpec string_key(const char* name, std::string Config::*field) {
  return {name,
          [field](const std::string& key, const json& v, Config& c) {
            c.*field = parse_string(key, v, "a string");
          },
          [field](const Config& c) { return json(c.*field); }, {}};
}

// An integer field with inclusive range [min, max].
template <typename Int>
KeySpec int_key(const char* name, Int Config::*field, std::int64_t min,
                std::int64_t max = std::numeric_limits<Int>::max()) {
  const std::string allowed = max == std::numeric_limits<Int>::max()
                                  ? "an integer >= " + std::to_string(min)
                                  : "an integer in [" + std::to_string(min) + ", " + std::to_string(max) + "]";
  return {name,
          [=](const std::string& key, const json& v, Config& c) {
            const std::int64_t x = parse_integer(key, v, allowed);
            if (x < min || x > max) fail(key, v, allowed);
            c.*field = static_cast<Int>(x);
          },
          [field](const Config& c) { return json(c.*field); },
          [=](const Config& c) {
            const std::int64_t x = c.*field;
            if (x < min || x > max) fail(name, json(x), allowed);
          }};
}

// A floating-point field in [min, max], or (min, max] when min_exclusive.
KeySpec number_key(const char* name, double Config::*field, double min, double max, bool min_exclusive) {
  std::ostringstream text;
  if (max == std::numeric_limits<double>::infinity()) {
    text << "a number " << (min_exclusive ? "> " : ">= ") << min;
  } else {
    text << "a number in " << (min_exclusive ? "(" : "[") << min << ", " << max << "]";
  }
  const std::string allowed = text.str();
  auto in_range = [=](double x) { return (min_exclusive ? x > min : x >= min) && x <= max; };
  return {name,
          [=](const std::string& key, const json& v, Config& c) {
            const double x = parse_number(key, v, allowed);
            if (!in_range(x)) fail(key, v, allowed);
            c.*field = x;
          },
          [field](const Config& c) { return json(c.*field); },
          [=](const Config& c) {
            if (!in_range(c.*field)) fail(name, json(c.*field), allowed);
          }};
}

// A string field with a fixed set of spellings, stored as an enum.
template <typename Enum>
KeySpec choice_key(const char* name, Enum Config::*field, std::vector<std::pair<std::string, Enum>> choices) {
  std::string allowed;
  for (const auto& choice : choices) allowed += (allowed.empty() ? "" : ", ") + in_quotes(choice.first);
  return {name,
          [=](const std::string& key, const json& v, Config& c) {
            const std::string text = parse_string(key, v, allowed);
            for (const auto& choice : choices) {
              if (choice.first == text) {
                c.*field = choice.second;
                return;
              }
            }
            fail(key, v, allowed);
          },
          [field](const Config& c) { return json(to_string(c.*field)); }, {}};
}

// The placement as three upper-case letters, or nullopt when `placement` is not valid.
std::optional<std::string> normalise_placement(const std::string& placement) {
  std::string upper = placement;
  for (char& ch : upper) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  if (upper == "CLUSTER") return std::string("DPT");
  if (upper == "SPREAD") return std::string("TPD");
  std::string sorted = upper;
  std::sort(sorted.begin(), sorted.end());
  if (sorted == "DPT") return upper;
  return std::nullopt;
}

const char* kPlacementAllowed =
    "\"cluster\", \"spread\", or a permutation of the letters D, P, T such as \"DPT\" or \"tpd\"";

KeySpec placement_key() {
  return {"placement_strategy",
          [](const std::string& key, const json& v, Config& c) {
            const std::string text = parse_string(key, v, kPlacementAllowed);
            if (!normalise_placement(text)) fail(key, v, kPlacementAllowed);
            c.placement_strategy = text;
          },
          [](const Config& c) { return json(c.placement_strategy); },
          [](const Config& c) {
            if (!normalise_placement(c.placement_strategy)) {
              fail("placement_strategy", json(c.placement_strategy), kPlacementAllowed);
            }
          }};
}

const char* kPortAllowed = "an integer in [1, 65535], or null for the launcher's port";

KeySpec ddp_port_key() {
  return {"ddp_port",
          [](const std::string& key, const json& v, Config& c) {
            if (v.is_null()) {
              c.ddp_port.reset();
              return;
            }
            const std::int64_t port = parse_integer(key, v, kPortAllowed);
            if (port < 1 || port > 65535) fail(key, v, kPortAllowed);
            c.ddp_port = static_cast<int>(port);
          },
          [](const Config& c) { return c.ddp_port ? json(*c.ddp_port) : json(nullptr); },
          [](const Config& c) {
            if (c.ddp_port && (*c.ddp_port < 1 || *c.ddp_port > 65535)) fail("ddp_port", json(*c.ddp_port), kPortAllowed);
          }};
}

// Every canonical key, in the order of docs/config.md.
const std::vector<KeySpec>& key_specs() {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  static const std::vector<KeySpec> specs = {
      int_key("pipeline_parallel_degree", &Config::pipeline_parallel_degree, 1),
      int_key("microbatches", &Config::microbatches, 1),
      choice_key("pipeline", &Config::pipeline,
                 {{"interleaved", PipelineMode::kInterleaved},
                  {"simple", PipelineMode::kSimple},
                  {"_only_forward", PipelineMode::kOnlyForward},
                  {"zero_bubble", PipelineMode::kZeroBubble}}),
      choice_key("optimize", &Config::optimize,
                 {{"memory", OptimizeFor::kMemory}, {"speed", OptimizeFor::kSpeed}}),
      placement_key(),
      bool_key("auto_partition", &Config::auto_partition),
      int_key("default_partition", &Config::default_partition, 0),
      number_key("memory_weight", &Config::memory_weight, 0.0, 1.0, false),
      int_key("active_microbatches", &Config::active_microbatches, 1),
      bool_key("deterministic_server", &Config::deterministic_server),
      bool_key("skip_tracing", &Config::skip_tracing),
      bool_key("load_partition", &Config::load_partition),
      string_key("partition_file", &Config::partition_file),
      bool_key("ddp", &Config::ddp),
      ddp_port_key(),
      choice_key("ddp_dist_backend", &Config::ddp_dist_backend,
                 {{"auto", DdpBackend::kAuto}, {"nccl", DdpBackend::kNccl}}),
      int_key("tensor_parallel_degree", &Config::tensor_parallel_degree, 1),
      bool_key("prescaled_batch", &Config::prescaled_batch),
      bool_key("shard_optimizer_state", &Config::shard_optimizer_state),
      bool_key("offload_activations", &Config::offload_activations),
      int_key("activation_loading_horizon", &Config::activation_loading_horizon, 1),
      bool_key("delayed_parameter_initialization", &Config::delayed_parameter_initialization),
      int_key("sharded_data_parallel_degree", &Config::sharded_data_parallel_degree, 1),
      int_key("sdp_reduce_bucket_size", &Config::sdp_reduce_bucket_size, 1),
      int_key("sdp_param_persistence_threshold", &Config::sdp_param_persistence_threshold, 0),
      int_key("sdp_max_live_parameters", &Config::sdp_max_live_parameters, 1),
      bool_key("sdp_hierarchical_allgather", &Config::sdp_hierarchical_allgather),
      number_key("sdp_gradient_clipping", &Config::sdp_gradient_clipping, 0.0, kInf, true),
      bool_key("fp16", &Config::fp16),
      bool_key("bf16", &Config::bf16),
      bool_key("fp16_params", &Config::fp16_params),
      bool_key("static_mode", &Config::static_mode),
      bool_key("fast_mode", &Config::fast_mode),
      bool_key("contiguous", &Config::contiguous),
      bool_key("horovod", &Config::horovod),
      number_key("comm_timeout_s", &Config::comm_timeout_s, 0.0, kInf, true),
      number_key("phase_timeout_s", &Config::phase_timeout_s, 0.0, kInf, true),
      bool_key("offload_optimizer_state", &Config::offload_optimizer_state),
  };
  return specs;
}

const KeySpec* find_spec(const std::string& name) {
  for (const KeySpec& spec : key_specs()) {
    if (spec.name == name) return &spec;
  }
  return nullptr;
}

const char* kPartitionsAlias = "partitions";
const char* kPipelineDegree = "pipeline_parallel_degree";

// ---- unknown keys ----

// The nearest valid key, or "" when nothing is close.
std::string nearest_key(const std::string& key) {
  std::vector<std::string> names = {kPartitionsAlias};
  for (const KeySpec& spec : key_specs()) names.push_back(spec.name);
  return nearest_name(key, names);
}

[[noreturn]] void fail_unknown_key(const std::string& key) {
  const std::string nearest = nearest_key(key);
  std::string message = "unknown config key " + in_quotes(key);
  if (!nearest.empty()) {
    message += "; did you mean " + in_quotes(nearest) + "?";
  } else {
    message += "; see docs/config.md for the valid keys";
  }
  throw ConfigError(message);
}

// ---- derived defaults ----

// Fills the defaults that depend on other keys, for the keys not in config.given.
void apply_derived_defaults(Config& config) {
  if (!config.is_given("active_microbatches")) {
    const std::int64_t value = static_cast<std::int64_t>(config.pipeline_parallel_degree) + 2;
    config.active_microbatches = static_cast<int>(std::min<std::int64_t>(value, INT32_MAX));
  }
  if (!config.is_given("memory_weight")) {
    config.memory_weight = config.optimize == OptimizeFor::kSpeed ? 0.2 : 0.8;
  }
}

std::string trim(const std::string& text) {
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return "";
  const auto last = text.find_last_not_of(" \t\r\n");
  return text.substr(first, last - first + 1);
}

// A --mp_parameters value: a JSON scalar where it parses as one (and Python's True, False,
// None), else the text itself as a string.
json parse_scalar(const std::string& text) {
  if (text == "True") return true;
  if (text == "False") return false;
  if (text == "None") return nullptr;
  json value = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!value.is_discarded() && value.is_primitive()) return value;
  return text;
}

// The launcher helper's view of the environment: SM_HP_MP_PARAMETERS, or nullopt when it
// is unset or blank. The only place in smp that reads configuration from the environment.
std::optional<std::string> read_mp_parameters_env() {
  const char* value = std::getenv(kMpParametersEnv);
  if (value == nullptr || trim(value).empty()) return std::nullopt;
  return std::string(value);
}

}  // namespace

// ---- enum spellings ----

const char* to_string(PipelineMode mode) {
  switch (mode) {
    case PipelineMode::kInterleaved: return "interleaved";
    case PipelineMode::kSimple: return "simple";
    case PipelineMode::kOnlyForward: return "_only_forward";
    case PipelineMode::kZeroBubble: return "zero_bubble";
  }
  return "?";
}

const char* to_string(OptimizeFor goal) { return goal == OptimizeFor::kSpeed ? "speed" : "memory"; }

const char* to_string(DdpBackend backend) { return backend == DdpBackend::kNccl ? "nccl" : "auto"; }

// ---- construction ----

Config Config::from_json(const json& params) {
  if (!params.is_object()) {
    throw ConfigError("config must be a JSON object of SMP parameters; got " + show(params));
  }
  const KeySpec& degree = *find_spec(kPipelineDegree);
  if (params.contains(kPartitionsAlias) && params.contains(kPipelineDegree)) {
    Config a, b;
    degree.parse(kPartitionsAlias, params.at(kPartitionsAlias), a);
    degree.parse(kPipelineDegree, params.at(kPipelineDegree), b);
    if (a.pipeline_parallel_degree != b.pipeline_parallel_degree) {
      throw ConfigError("config keys \"partitions\" and \"pipeline_parallel_degree\" are aliases: got " +
                        show(params.at(kPartitionsAlias)) + " and " + show(params.at(kPipelineDegree)) +
                        "; allowed: one of them, or the same value in both");
    }
  }
  Config config;
  for (const auto& item : params.items()) {
    const std::string& key = item.key();
    const std::string canonical = key == kPartitionsAlias ? kPipelineDegree : key;
    const KeySpec* spec = find_spec(canonical);
    if (spec == nullptr) fail_unknown_key(key);
    spec->parse(key, item.value(), config);
    config.given.insert(canonical);
  }
  apply_derived_defaults(config);
  config.validate();
  return config;
}

Config Config::from_json_string(const std::string& text) {
  json params;
  try {
    params = json::parse(text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number past double
    throw ConfigError(std::string("invalid config JSON: ") + e.what());
  }
  return from_json(params);
}

Config Config::from_json_file(const std::string& path) {
  return with_context("config file " + in_quotes(path), [&] {
    // POSIX, not std::filesystem: libtorch.so exports its own copies of those symbols.
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
      throw ConfigError("cannot read: it is a directory");
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) throw ConfigError(std::string("cannot read: ") + std::strerror(errno));
    std::ostringstream text;
    text << in.rdbuf();
    if (in.bad()) throw ConfigError("cannot read: I/O error");
    return from_json_string(text.str());
  });
}

Config Config::from_mp_parameters_string(const std::string& text) {
  return with_context("--mp_parameters " + in_quotes(text), [&] {
    const std::string trimmed = trim(text);
    if (!trimmed.empty() && trimmed.front() == '{') return from_json_string(trimmed);
    json params = json::object();
    std::stringstream entries(trimmed);
    std::string entry;
    while (std::getline(entries, entry, ',')) {
      entry = trim(entry);
      if (entry.empty()) continue;
      const auto equals = entry.find('=');
      if (equals == std::string::npos) {
        throw ConfigError("entry " + in_quotes(entry) + " is not of the form key=value");
      }
      const std::string key = trim(entry.substr(0, equals));
      if (params.contains(key)) throw ConfigError("key " + in_quotes(key) + " is given twice");
      params[key] = parse_scalar(trim(entry.substr(equals + 1)));
    }
    return from_json(params);
  });
}

Config Config::from_env() {
  const std::optional<std::string> text = read_mp_parameters_env();
  if (!text) return Config{};
  return with_context(std::string("environment variable ") + kMpParametersEnv,
                      [&] { return from_json_string(*text); });
}

// ---- validation ----

void Config::validate() const {
  for (const KeySpec& spec : key_specs()) {
    if (spec.check) spec.check(*this);
  }
  if (default_partition >= pipeline_parallel_degree) {
    fail("default_partition", default_partition,
         "an integer in [0, " + std::to_string(pipeline_parallel_degree - 1) +
             "], below pipeline_parallel_degree (" + std::to_string(pipeline_parallel_degree) + ")");
  }
  if (fp16 && bf16) {
    throw ConfigError("config keys \"fp16\" and \"bf16\": got true and true; allowed: at most one of them true");
  }
  if (fp16_params && bf16) {
    throw ConfigError("config keys \"fp16_params\" and \"bf16\": got true and true; allowed: at most one "
                      "of them true (fp16_params builds the parameters in fp16)");
  }
  if (delayed_parameter_initialization && sharded_data_parallel_degree < 2) {
    fail_rule("delayed_parameter_initialization", true,
              "smp initialises parameters already sharded, which needs sharded data parallelism; "
              "set \"sharded_data_parallel_degree\" > 1");
  }
  if (load_partition && partition_file.empty()) {
    fail_rule("load_partition", true,
              "\"load_partition\": true reads the partition from \"partition_file\", which is empty; "
              "set \"partition_file\"");
  }
  if (ddp_port && !ddp) {
    fail_rule("ddp_port", *ddp_port, "\"ddp_port\" requires \"ddp\": true; set \"ddp\": true or remove \"ddp_port\"");
  }
  if (ddp_dist_backend != DdpBackend::kAuto && !ddp) {
    fail_rule("ddp_dist_backend", to_string(ddp_dist_backend),
              "\"ddp_dist_backend\" other than \"auto\" requires \"ddp\": true; set \"ddp\": true");
  }
  if (tensor_parallel_degree > 1 && !ddp) {
    fail_rule("tensor_parallel_degree", tensor_parallel_degree,
              "tensor_parallel_degree > 1 requires \"ddp\": true (SMP rule); set \"ddp\": true");
  }
  if (horovod && ddp) {
    throw ConfigError("config keys \"ddp\" and \"horovod\": got true and true; allowed: at most one of them true");
  }
  if (sharded_data_parallel_degree > 1 && pipeline_parallel_degree > 1) {
    fail_rule("sharded_data_parallel_degree", sharded_data_parallel_degree,
              "sharded data parallelism cannot be combined with pipeline parallelism (pipeline_parallel_degree is " +
                  std::to_string(pipeline_parallel_degree) + "); allowed: 1 when pipeline_parallel_degree > 1");
  }
  if (sharded_data_parallel_degree > 1 && shard_optimizer_state) {
    fail_rule("sharded_data_parallel_degree", sharded_data_parallel_degree,
              "sharded data parallelism already shards optimizer state; allowed: 1 when "
              "\"shard_optimizer_state\" is true");
  }
  if (shard_optimizer_state && !ddp) {
    fail_rule("shard_optimizer_state", true,
              "it shards over data-parallel ranks and requires \"ddp\": true; set \"ddp\": true");
  }
  if (sharded_data_parallel_degree > 1 && !ddp) {
    fail_rule("sharded_data_parallel_degree", sharded_data_parallel_degree,
              "sharded data parallelism requires \"ddp\": true; set \"ddp\": true");
  }
}

void Config::validate_world(int world_size) const {
  if (world_size < 1) {
    throw ConfigError("world size: got " + std::to_string(world_size) + "; allowed: an integer >= 1");
  }
  const std::int64_t mp = static_cast<std::int64_t>(pipeline_parallel_degree) * tensor_parallel_degree;
  if (world_size % mp != 0) {
    throw ConfigError("pipeline_parallel_degree (" + std::to_string(pipeline_parallel_degree) +
                      ") * tensor_parallel_degree (" + std::to_string(tensor_parallel_degree) + ") = " +
                      std::to_string(mp) + " does not divide the world size (" + std::to_string(world_size) +
                      "); allowed: a world size that is a multiple of " + std::to_string(mp));
  }
  const std::int64_t rdp = world_size / mp;
  if (rdp > 1 && !ddp) {  // the replicas would train apart: nothing averages them without ddp
    throw ConfigError("\"ddp\": false with a data-parallel degree of " + std::to_string(rdp) + " (world size " +
                      std::to_string(world_size) + " / (pipeline_parallel_degree " +
                      std::to_string(pipeline_parallel_degree) + " * tensor_parallel_degree " +
                      std::to_string(tensor_parallel_degree) + ")): the replicas would never be averaged; "
                      "allowed: \"ddp\": true, or a world size of " + std::to_string(mp));
  }
  if (rdp % sharded_data_parallel_degree != 0) {
    throw ConfigError("sharded_data_parallel_degree (" + std::to_string(sharded_data_parallel_degree) +
                      ") does not divide the reduced data-parallel degree (" + std::to_string(rdp) +
                      " = world size " + std::to_string(world_size) + " / (pipeline_parallel_degree " +
                      std::to_string(pipeline_parallel_degree) + " * tensor_parallel_degree " +
                      std::to_string(tensor_parallel_degree) + ")); allowed: a divisor of " + std::to_string(rdp));
  }
}

int Config::rdp_degree(int world_size) const {
  validate_world(world_size);
  return world_size / (pipeline_parallel_degree * tensor_parallel_degree);
}

std::string Config::placement_letters() const {
  const std::optional<std::string> letters = normalise_placement(placement_strategy);
  if (!letters) fail("placement_strategy", placement_strategy, kPlacementAllowed);
  return *letters;
}

// ---- reporting ----

std::vector<std::string> Config::not_implemented_warnings() const {
  std::vector<std::string> warnings;
  for (const KeySpec& spec : key_specs()) {
    if (!is_given(spec.name)) continue;
    const json value = spec.get(*this);
    const std::string shown = in_quotes(spec.name) + ": " + show(value);
    if (kTensorFlowOnly.count(spec.name)) {
      warnings.push_back(shown + " is a TensorFlow-only key; ignored by smp");
    }
  }
  return warnings;
}

json Config::to_json() const {
  json out = json::object();
  for (const KeySpec& spec : key_specs()) out[spec.name] = spec.get(*this);
  return out;
}

std::string Config::summary() const {
  std::ostringstream out;
  out << "smp config:\n";
  for (const KeySpec& spec : key_specs()) {
    out << "  " << spec.name << " = " << spec.get(*this).dump();
    if (!is_given(spec.name)) out << "  (default)";
    out << "\n";
  }
  return out.str();
}

}  // namespace smp
