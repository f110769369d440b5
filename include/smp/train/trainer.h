// The trainer behind smp-train: data, model, optimizer and the training loop, everything a run
// writes under one run directory.
//
//   <run_dir>/config.json      the run configuration as understood (every default filled in)
//   <run_dir>/data/            token shards made from the text (train_*.bin, val_*.bin)
//   <run_dir>/metrics.jsonl    one JSON line per step and per validation
//   <run_dir>/loss.svg         training and validation loss curves, with the unigram entropy
//   <run_dir>/timeline.svg     the last step's pipeline timeline, one row per pipeline rank
//   <run_dir>/timeline.json    the same as a Chrome-trace / Perfetto file (rank 0's pipeline)
//   <run_dir>/sample.txt       text generated from the prompt at the end
//   <run_dir>/summary.json     final losses, speed, memory, the layout
//   <checkpoint dir>/          checkpoints (CheckpointConfig; default <run_dir>/checkpoints):
//                              step_<n>_partial/ every `every` steps, final/ (Hugging Face
//                              weights, transformers loads it) when full_at_end
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "smp/train/train_config.h"

namespace smp::train {

struct TrainSummary {
  int64_t first_step = 0;            // steps done before this run (resumed from a checkpoint)
  std::vector<double> train_losses;  // per step of this run, averaged over data-parallel replicas
  std::vector<double> grad_norms;    // per step of this run: the global norm before clipping
                                     // (0 when training.grad_clip is 0)
  double final_val_loss = 0;
  double unigram_entropy = 0;        // of the training tokens, in nats
  double tokens_per_s = 0;           // training steps after the first, validation excluded
  double mfu = 0;                    // model FLOPs utilisation (training.peak_tflops; 0: n/a)
  std::string sample;
  std::string run_dir;
};

// Collective over the world; smp::init(config.smp) must have run. Checks
// config.validate(world size) before anything runs. Prints the start-up table, a progress line
// per step and the summary on rank 0. Throws smp::ConfigError (on every rank) for bad
// configurations and data, smp::Error otherwise.
TrainSummary train(const TrainConfig& config);

// The lines of metrics.jsonl's `text` that a run resumed at `step` keeps: every line whose
// "step" is at most `step`, whatever its kind (training, validation), and the lines without a
// step that come before the first line dropped. What the earlier run logged after its
// checkpoint goes, so the resumed run's lines do not repeat those steps; so does a line that is
// not a JSON object (one cut off by a crash). Each kept line ends with a newline.
std::string metrics_up_to_step(const std::string& text, int64_t step);

// A step's mean loss, its gradient norm (DistributedOptimizer's *_tensor: fp64, 0-dim) and the
// optimizer's overflow flag (overflow_tensor(): 0-dim) as three fp64 elements on the norm's
// device, to leave the device with one copy (one wait).
at::Tensor step_figures(const at::Tensor& loss, const at::Tensor& norm, const at::Tensor& overflow);

}  // namespace smp::train
