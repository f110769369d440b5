// smp: the one include for users. SMP v1's core API in C++.
//
//   smp::init(smp::Config::from_json_file("run.json"));   // every rank, first
//   smp::DistributedModel model(layers);                   // the model, split on the first step
//   smp::DistributedOptimizer optimizer(model, ...);
//   auto out = smp::step(model, {x}, {y}, loss_fn);
//   smp::shutdown();                                        // every rank, last
//
// An umbrella for programs: nothing in the library includes it. Each header it pulls in says
// what it holds: runtime.h (init, rank helpers, object messaging), distributed_model.h,
// distributed_optimizer.h, step.h, checkpoint/checkpoint.h.
#pragma once

#include "smp/checkpoint/checkpoint.h"
#include "smp/distributed_model.h"
#include "smp/distributed_optimizer.h"
#include "smp/runtime.h"
#include "smp/step.h"
