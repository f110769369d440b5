#!/usr/bin/env python3
"""The floors of smp and what each may include: fails when a file includes a floor it may not.

The floor table below is the one place the order is written in code (docs/architecture.md shows
the same picture). A file's floor is its area: include/smp/<area>/..., src/<area>/..., and for
SMP's face at the top of include/smp/ the floor its concept belongs to. Besides the table:
  - smp/smp.h (the users' umbrella) is included by no library file;
  - smp/runtime.h (the context smp::init built) only by the SMP-API facades listed in FACADES;
    every other library file takes a ParallelContext as an argument.
Run with --report to print the figures the architecture issue asked for.
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Each floor and the floors below it that it may include (its own is always allowed).
FLOORS = {
    "core": [],
    "comm": ["core"],
    "layer": ["core"],
    "runtime": ["core", "comm"],
    "tensor_parallel": ["core", "comm", "layer"],
    "pipeline": ["core", "comm", "layer"],
    "data_parallel": ["core", "comm", "layer"],
    "parallel": ["core", "comm", "layer", "pipeline", "data_parallel"],
    "optim": ["core", "comm", "layer", "pipeline", "data_parallel", "parallel"],
    "checkpoint": ["core", "comm", "layer", "pipeline", "data_parallel", "parallel", "optim"],
    "models": ["core", "comm", "layer", "tensor_parallel", "pipeline", "data_parallel", "parallel",
               "optim", "checkpoint"],
    "train": ["core", "comm", "layer", "tensor_parallel", "pipeline", "data_parallel", "parallel",
              "optim", "checkpoint", "models"],
    # The planner: pure; it runs the pipeline's schedules and reads the models' named sizes.
    "plan": ["core", "pipeline", "models"],
}
# SMP's face at the top of include/smp/: the floor each belongs to.
TOP_LEVEL = {
    "runtime.h": "runtime",
    "distributed_model.h": "parallel",
    "step.h": "parallel",
    "distributed_optimizer.h": "optim",
    "smp.h": "umbrella",
}
# The files that may read the runtime: SMP-API facades, and the trainer (a program).
FACADES = {
    "src/runtime/runtime.cpp",
    "src/parallel/distributed_model.cpp",  # DistributedModel(layers): over smp::context()
    "src/tensor_parallel/nn.cpp",          # smp::nn's default TP group and sequence parallelism
    "src/checkpoint/save_load.cpp",        # smp.save / smp.load: the rank suffixes
    "src/train/trainer.cpp",               # smp-train's engine: a program over SMP's API
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"smp/([^"]+)"', re.M)


def floor_of_header(rel):  # rel: path under include/smp/
    if "/" in rel:
        return rel.split("/")[0]
    return TOP_LEVEL.get(rel, "?")


def library_files():
    for top in ("include/smp", "src"):
        for dirpath, _, names in os.walk(os.path.join(ROOT, top)):
            for name in sorted(names):
                if name.endswith((".h", ".cpp")):
                    path = os.path.relpath(os.path.join(dirpath, name), ROOT)
                    if top == "src":
                        floor = path.split("/")[1]
                    else:
                        floor = floor_of_header(os.path.relpath(path, "include/smp"))
                    yield path, floor


def violations():
    upward, runtime, unknown = [], [], []
    for path, floor in library_files():
        if floor == "umbrella":
            continue
        if floor not in FLOORS and floor != "runtime":
            unknown.append(f"{path}: no floor is named '{floor}'; add it to FLOORS")
            continue
        text = open(os.path.join(ROOT, path), encoding="utf-8").read()
        for header in INCLUDE.findall(text):
            target = floor_of_header(header)
            if target == "umbrella":
                runtime.append(f"{path} includes smp/smp.h (the users' umbrella)")
            elif target == "runtime" and floor != "runtime":
                if path not in FACADES:
                    runtime.append(f"{path} includes smp/runtime.h; take a ParallelContext instead")
            elif target == "?":
                unknown.append(f"{path} includes smp/{header}, which belongs to no floor")
            elif target != floor and target not in FLOORS[floor]:
                upward.append(f"{path} ({floor}) includes smp/{header} ({target}); "
                              f"{floor} may include {', '.join(FLOORS[floor]) or 'nothing of smp'}")
    return upward, runtime, unknown


def longest_function():
    """(lines, where) of the longest function body in src/: a line at column 0 ending in '{'
    (not a namespace, class or struct) up to the next '}' at column 0."""
    best = (0, "")
    for path, _ in library_files():
        if not path.endswith(".cpp"):
            continue
        lines = open(os.path.join(ROOT, path), encoding="utf-8").read().split("\n")
        start = None
        for i, line in enumerate(lines):
            if start is None and line.endswith("{") and line[:1].strip() and not re.match(
                    r"(namespace|class|struct|enum|extern|union)\b", line):
                start = i
            elif start is not None and line.startswith("}"):
                best = max(best, (i - start + 1, f"{path}:{start + 1}"))
                start = None
    return best


def main():
    upward, runtime, unknown = violations()
    if "--report" in sys.argv:
        lines, where = longest_function()
        print(f"# longest function: {where}")
        print(f"RESULT architecture runtime_includes_below_facade={len(runtime)} "
              f"upward_includes={len(upward)} longest_function_lines={lines}")
    for message in upward + runtime + unknown:
        print("layering:", message)
    if upward or runtime or unknown:
        return 1
    print(f"layering: {sum(1 for _ in library_files())} files, every include within its floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
