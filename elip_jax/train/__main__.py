"""python -m elip_jax.train --config configs/NAME.py[:ARG] --workdir DIR [--config.KEY=VALUE ...]"""
import logging

from absl import app, flags, logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "configs/NAME.py[:ARG]", lock_config=True)
flags.DEFINE_string("workdir", None, "where checkpoints, TensorBoard logs and summary.json go; rerun to resume")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs")
flags.DEFINE_integer("num_processes", None, "number of processes of a multi-process run")
flags.DEFINE_integer("process_id", None, "this process's index in a multi-process run")
flags.DEFINE_integer("distributed_timeout_s", 300, "how long to wait for every process to join")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax and tfds log every file at INFO
    from elip_jax.train.distributed import initialize
    initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, FLAGS.distributed_timeout_s)
    from elip_jax.train.loop import train
    summary = train(FLAGS.config, FLAGS.workdir)
    return 0 if summary["finished"] else 3  # 3: stopped early (preempted), rerun the same command to resume


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app.run(main)
