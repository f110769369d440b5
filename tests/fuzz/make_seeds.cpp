// Writes the binary seeds of the fuzz corpora with smp's own writers, so the seeds are what smp
// really writes (docs/fuzzing.md). Not built by default and not a test; run it again only when
// a format changes, then check the files in:
//   ninja -C build fuzz_make_seeds
//   mpirun -np 2 build/tests/fuzz/fuzz_make_seeds tests/fuzz
// It writes
//   corpus/safetensors/*.safetensors   save_safetensors (several dtypes, a scalar, an empty
//                                      tensor, metadata) and smp::save (SMP's JSON in metadata)
//   corpus/token_shard/*.bin           write_token_shard (none, a few, and every byte value)
//   corpus/manifest/*.json             save_checkpoint of a 2-layer MLP on 2 ranks, ddp and
//                                      shard_optimizer_state (so whole and flat pieces): the
//                                      partial and the full checkpoint's manifest.json
//   fixtures/manifest/*.safetensors    the files those manifests name (manifest_fuzz reads them)
// The JSON seeds of the config targets are written by hand (corpus/config, corpus/train_config).
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/functional/loss.h>
#include <torch/optim/adamw.h>

#include "smp/checkpoint/safetensors.h"
#include "smp/core/files.h"
#include "smp/smp.h"
#include "smp/train/token_shards.h"

namespace {

void copy(const std::string& from, const std::string& to) {
  smp::files::write_file_atomic(to, smp::files::read_file(from));
  std::printf("wrote %s\n", to.c_str());
}

void safetensors_seeds(const std::string& out) {
  const std::string dir = out + "/corpus/safetensors";
  smp::files::make_dirs(dir);
  at::manual_seed(1);
  smp::checkpoint::save_safetensors(dir + "/f32_matrix.safetensors", {{"weight", at::randn({2, 3})}},
                                    {{"format", "pt"}});
  smp::checkpoint::save_safetensors(
      dir + "/dtypes.safetensors",
      {{"a.f64", at::arange(2, at::kDouble)},
       {"b.bf16", at::arange(4, at::kBFloat16).view({2, 2})},
       {"c.f16", at::arange(3, at::kHalf)},
       {"d.i64_scalar", at::scalar_tensor(7, at::kLong)},
       {"e.i32", at::arange(2, at::kInt)},
       {"f.i16", at::arange(2, at::kShort)},
       {"g.i8", at::arange(2, at::kChar)},
       {"h.u8_empty", at::empty({0, 4}, at::kByte)},
       {"i.bool", at::arange(3, at::kLong).remainder(2).to(at::kBool)},
       {"j.f8_e4m3", at::ones({2}).to(at::kFloat8_e4m3fn)},
       {"k.f8_e5m2", at::ones({2}).to(at::kFloat8_e5m2)},
       {"l.u16", at::arange(2, at::kInt).to(at::ScalarType::UInt16)}});
  smp::checkpoint::save_safetensors(dir + "/no_tensors.safetensors", {}, {{"format", "pt"}});
  smp::save({{"x", at::arange(6, at::kFloat).view({3, 2})}}, dir + "/smp_save.safetensors",
            /*partial=*/false, {{"step", 3}, {"note", "smp.save"}});
  std::printf("wrote %s/*.safetensors\n", dir.c_str());
}

void token_shard_seeds(const std::string& out) {
  const std::string dir = out + "/corpus/token_shard";
  smp::files::make_dirs(dir);
  smp::train::write_token_shard(dir + "/empty.bin", {});
  smp::train::write_token_shard(dir + "/five.bin", {1, 2, 3, 50256, 0});
  std::vector<int> bytes(300);
  for (int i = 0; i < 300; ++i) bytes[i] = (i * 37) % 256;
  smp::train::write_token_shard(dir + "/bytes_300.bin", bytes);
  std::printf("wrote %s/*.bin\n", dir.c_str());
}

// save_checkpoint's manifests (partial and full) of a tiny model, and the files they name.
void manifest_seeds(const std::string& out) {
  at::manual_seed(2);
  std::vector<smp::Layer> layers;
  const std::vector<std::pair<int, int>> dims = {{3, 4}, {4, 2}};
  for (size_t i = 0; i < dims.size(); ++i) {
    auto linear = std::make_shared<torch::nn::LinearImpl>(dims[i].first, dims[i].second);
    layers.push_back(smp::module_layer("fc" + std::to_string(i), linear,
                                       [linear](const smp::Values& in) -> smp::Values {
                                         return {linear->forward(in[0])};
                                       }));
  }
  smp::DistributedModel model(std::move(layers));
  const at::Tensor x = at::randn({4, 3});
  const at::Tensor y = at::randn({4, 2});
  model.partition({x});
  smp::DistributedOptimizer optimizer(
      model, std::make_unique<torch::optim::AdamW>(model.local_parameters(), torch::optim::AdamWOptions(1e-2)));
  smp::step(model, {x}, {y}, [](const smp::Values& o, const smp::Values& t) -> smp::Values {
    return {torch::nn::functional::mse_loss(o[0], t[0])};
  });
  optimizer.step();
  optimizer.zero_grad();

  const char* tmpdir = std::getenv("TMPDIR");
  const std::string ckpt = std::string(tmpdir ? tmpdir : "/tmp") + "/smp_fuzz_make_seeds";
  if (smp::rank() == 0) smp::files::remove_tree(ckpt);
  smp::barrier();
  smp::save_checkpoint(ckpt, "t", /*partial=*/true, model, &optimizer, {{"step", 1}});
  smp::save_checkpoint(ckpt, "t", /*partial=*/false, model, &optimizer, {{"step", 1}});
  if (smp::rank() != 0) return;
  const std::string corpus = out + "/corpus/manifest";
  const std::string fixtures = out + "/fixtures/manifest";
  smp::files::make_dirs(corpus);
  smp::files::make_dirs(fixtures);
  copy(ckpt + "/t_partial/manifest.json", corpus + "/partial_ddp2_zero1.json");
  copy(ckpt + "/t/manifest.json", corpus + "/full_ddp2_zero1.json");
  for (const std::string& name : smp::files::list_dir(ckpt + "/t_partial")) {
    if (name != "manifest.json") copy(ckpt + "/t_partial/" + name, fixtures + "/" + name);
  }
  for (const std::string& name : smp::files::list_dir(ckpt + "/t")) {
    if (name != "manifest.json") copy(ckpt + "/t/" + name, fixtures + "/" + name);
  }
  smp::files::remove_tree(ckpt);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: mpirun -np 2 %s <tests/fuzz folder>\n", argv[0]);
    return 2;
  }
  const std::string out = argv[1];
  try {
    smp::init(smp::Config::from_json_string(R"({"ddp": true, "shard_optimizer_state": true})"));
    if (smp::size() != 2) throw smp::ConfigError("run it on 2 ranks (mpirun -np 2)");
    if (smp::rank() == 0) {
      safetensors_seeds(out);
      token_shard_seeds(out);
    }
    manifest_seeds(out);
    smp::shutdown();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz_make_seeds: %s\n", e.what());
    smp::comm::abort_world(1);
  }
  return 0;
}
