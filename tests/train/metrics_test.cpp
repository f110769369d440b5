// metrics.jsonl cut back to a resumed step (metrics_up_to_step, trainer.h): a resumed run
// appends after the steps its checkpoint holds, not after what the stopped run logged later.
// (Through smp-train: smp_train_test.sh's "resumed" case.)
#include <gtest/gtest.h>

#include "smp/train/trainer.h"

namespace smp::train {
namespace {

TEST(Metrics, KeepsEveryKindOfLineUpToTheResumedStep) {
  const std::string text =
      R"({"step":1,"loss":3.0})" "\n"
      R"({"step":2,"loss":2.5})" "\n"
      R"({"step":2,"val_loss":2.7})" "\n"
      R"({"step":3,"loss":2.2})" "\n"
      R"({"step":4,"loss":2.0})" "\n"
      R"({"step":4,"val_loss":2.4})" "\n";
  EXPECT_EQ(metrics_up_to_step(text, 2),
            R"({"step":1,"loss":3.0})" "\n"
            R"({"step":2,"loss":2.5})" "\n"
            R"({"step":2,"val_loss":2.7})" "\n");
  EXPECT_EQ(metrics_up_to_step(text, 4), text);  // nothing past the checkpoint: unchanged
  EXPECT_EQ(metrics_up_to_step(text, 0), "");
}

// Lines without a step stay where they come before the first line dropped; a line cut off by
// a crash (no newline, not JSON) goes, so the resumed run's first line starts a line of its own.
TEST(Metrics, LinesWithoutAStepAndCutOffLines) {
  const std::string text =
      R"({"event":"start"})" "\n"
      R"({"step":1,"loss":3.0})" "\n"
      R"({"note":"before the cut"})" "\n"
      R"({"step":2,"loss":2.5})" "\n"
      R"({"note":"after the cut"})" "\n"
      R"({"step":1,"val_loss":2.9})" "\n"
      R"({"step":3,"lo)";
  EXPECT_EQ(metrics_up_to_step(text, 1),
            R"({"event":"start"})" "\n"
            R"({"step":1,"loss":3.0})" "\n"
            R"({"note":"before the cut"})" "\n"
            R"({"step":1,"val_loss":2.9})" "\n");
  EXPECT_EQ(metrics_up_to_step(R"({"step":1,"loss":3.0})" "\n" R"({"step":2,"lo)", 1),
            R"({"step":1,"loss":3.0})" "\n");
  EXPECT_EQ(metrics_up_to_step(R"({"step":1,"loss":3.0})", 1), R"({"step":1,"loss":3.0})" "\n");
}

}  // namespace
}  // namespace smp::train
