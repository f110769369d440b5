// smp-train's run configuration: one JSON file with the model, the data, the training
// hyperparameters and SMP's parallel keys.
//
//   {
//     "model": {"name": "tiny", "num_layers": 4},     (or {"from_hf": "<folder>"})
//     "data": {"text": "corpus.txt", "val_fraction": 0.05},
//     "training": {"steps": 200, "global_batch": 32, "seq_len": 64, "lr": 3e-3, ...},
//     "checkpoint": {"every": 100, "keep": 2, "full_at_end": true, "resume": "newest"},
//     "smp": {"pipeline_parallel_degree": 2, "tensor_parallel_degree": 2, "ddp": true},
//     "run_dir": "runs/bible"
//   }
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "smp/core/config.h"
#include "smp/models/model_config.h"

namespace smp::train {

struct DataConfig {
  std::string text;           // a text file, tokenized into shards under <run_dir>/data
  std::string shards_dir;     // or: a folder of train_*.bin / val_*.bin shards already made
  std::string vocab_json;     // GPT-2 BPE when both are given; byte-level otherwise
  std::string merges_txt;
  double val_fraction = 0.05;
};

// A group of transformer blocks recomputed in backward (training.activation_checkpointing).
struct CheckpointedBlocks {
  std::string name;     // as written: "block" (every block), "block.<i>", "block.<i>-<j>"
  int64_t first = 0;    // the group's blocks, first..last
  int64_t last = -1;    // -1: to the model's last block
  std::string strategy; // "each", "contiguous", "group_<N>"
};

struct TrainingConfig {
  int64_t steps = 100;
  int64_t global_batch = 32;  // sequences per optimizer step, over all data-parallel replicas
  int64_t seq_len = 64;
  double lr = 3e-3;
  double min_lr = 3e-4;        // cosine decay ends here
  int64_t warmup_steps = 10;   // linear warm-up from 0
  std::string optimizer = "adamw";  // "adamw" | "sgd"
  double weight_decay = 0.1;   // on matrices only (not biases, norms): AdamW's decoupled, SGD's L2
  double beta1 = 0.9;          // AdamW
  double beta2 = 0.95;         // AdamW
  double momentum = 0;         // SGD
  double grad_clip = 1.0;      // global-norm clipping; 0 disables (the norm is still logged)
  int64_t max_nonfinite_steps = 10;  // steps skipped in a row for inf/NaN gradients before stopping; 0 never
  std::string precision = "fp32";  // "fp32" | "bf16" | "fp16" (sets smp's bf16 / fp16 keys)
  uint64_t seed = 1234;
  int64_t val_every = 50;      // steps between validation losses; 0: only at the end
  int64_t val_batches = 4;
  std::string device = "cpu";  // "cpu" | "cuda" (GPU local_rank % GPUs on each rank)
  bool tf32 = false;           // fp32 matmuls and convolutions on CUDA in TF32 (PyTorch's off)
  // The training step (forward, backward, optimizer) captured once as a CUDA graph and replayed
  // (train::CudaGraphStep): only with device "cuda" on one rank (pp = tp = dp = 1).
  bool cuda_graphs = false;
  double peak_tflops = 0;      // the device's peak (e.g. 989 for an H100's dense bf16): MFU; 0: n/a
  // Virtual pipeline stages per rank (DistributedModelOptions::chunks_per_rank): the model
  // splits into smp.pipeline_parallel_degree x chunks_per_rank stages, which the interleaved
  // schedule runs (Megatron's interleaved 1F1B). 1: one stage per rank.
  int64_t chunks_per_rank = 1;
  // Activation checkpointing of the transformer blocks, by group: each group is one
  // DistributedModel::set_activation_checkpointing call over its blocks with its strategy.
  // JSON: "none", one strategy for every block ("each", "contiguous", "group_<N>"), or an
  // object from block group to strategy, groups apart:
  //   {"block.0-3": "contiguous", "block.4": "each", "block.5-7": "group_2"}
  std::vector<CheckpointedBlocks> activation_checkpointing;  // empty: none
  std::string prompt = "\n";     // the sample at the end starts here
  int64_t sample_tokens = 200;
  double temperature = 0.8;
};

// Checkpoints (smp::save_checkpoint): partial ones every `every` steps, named "step_<n>";
// a full Hugging Face-compatible one named "final" at the end when `full_at_end`.
struct CheckpointConfig {
  std::string dir;         // default: <run_dir>/checkpoints
  int64_t every = 0;       // steps between partial checkpoints; 0: none
  int64_t keep = 2;        // partial checkpoints kept (the oldest are deleted); 0: all
  bool full_at_end = false;
  std::string resume;      // "" (start fresh), "newest", or a tag; smp-train --resume sets it
  // Fault injection, for tests only: this world rank dies (SIGKILL) right after it wrote its
  // shard of a checkpoint, as in a crash in the middle of a save. -1: never.
  int64_t test_kill_rank = -1;
};

struct TrainConfig {
  models::ModelConfig model;
  DataConfig data;
  TrainingConfig training;
  CheckpointConfig checkpoint;
  Config smp;                    // SMP's parallel keys
  std::string run_dir = "runs/smp-train";
  // "model": {"from_hf": "<folder>"}: a Hugging Face GPT-2 / LLaMA folder (config.json,
  // model.safetensors) gives the architecture and the starting weights (fine-tuning); only
  // "dropout" may be set beside it.
  std::string init_from_hf;

  // Throws smp::ConfigError naming the section, key, value and what is allowed: unknown keys
  // (with the nearest valid one), bad types and ranges, seq_len above the model's max_seq_len.
  static TrainConfig from_json_file(const std::string& path);
  static TrainConfig from_json_string(const std::string& text);

  // The rules that need the number of ranks, checked once before a run starts: the layout fits
  // `world_size` (smp::Config::validate_world), global_batch divides by the data-parallel
  // replicas and each replica's batch by smp.microbatches, and model.from_hf is not combined
  // with delayed_parameter_initialization, and the checkpointed block groups lie within
  // model.num_layers. Throws smp::ConfigError naming the key, the value and what is allowed.
  void validate(int world_size) const;
};

// The learning rate at `step` (0-based): linear warm-up to lr over warmup_steps, then cosine
// decay to min_lr at the last step.
double learning_rate(const TrainingConfig& training, int64_t step);

}  // namespace smp::train
