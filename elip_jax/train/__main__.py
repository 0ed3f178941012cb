"""python -m elip_jax.train --config configs/NAME.py[:ARG] --workdir DIR [--config.KEY=VALUE ...]

Bad input (a flag, a config key or value, the dataset, the workdir, a resume that does not match it, a missing
peer) ends with one line `error: ...` and exit code 2, before anything compiles (elip_jax.command_line).
Exit code 3: stopped early (preempted); rerun the same command to resume.
"""
import importlib.util
import logging
import os
import sys

from absl import app, flags, logging as absl_logging
from ml_collections import config_flags

from elip_jax.command_line import UsageError, fail, run_command

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "configs/NAME.py[:ARG]", lock_config=True)
flags.DEFINE_string("workdir", None, "where checkpoints, TensorBoard logs and summary.json go; rerun to resume")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs")
flags.DEFINE_integer("num_processes", None, "number of processes of a multi-process run")
flags.DEFINE_integer("process_id", None, "this process's index in a multi-process run")
flags.DEFINE_integer("distributed_timeout_s", 300, "how long to wait for every process to join")
flags.DEFINE_bool("compare_costs", False, "print the training step's XLA FLOPs and temporary memory with the "
                  "configured reduction and without any, then exit: nothing is trained or written (a --workdir "
                  "that trained this config lends its measured step)")
flags.mark_flags_as_required(["config"])

EXIT_PREEMPTED = 3


def parse_flags(argv):
    """absl's parser, with any flag error (an unknown flag or config key, a bad value, a config file that does
    not load) as one line instead of absl's usage text or a traceback."""
    try:
        check_config_file(argv)
        return FLAGS(argv)
    except flags.Error as error:
        message = str(error)
    except (AttributeError, KeyError) as error:  # --config.KEY=VALUE naming a key the config does not have
        message = unknown_key_message(argv) or f"--config: {type(error).__name__}: {error}"
    except (ValueError, OSError) as error:
        message = str(error)
    if "Traceback (most recent call last)" in message:  # the config file's get_config raised: its last line
        where = message.split(":", 1)[0]
        message = f"{where}: {[line for line in message.splitlines() if line.strip()][-1].strip()}"
    sys.exit(fail(UsageError(message)))


def flag_value(argv, name: str):
    """The value of the last --name=VALUE or --name VALUE in argv (the one absl keeps), else None."""
    value = None
    for i, arg in enumerate(argv[1:], 1):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def check_config_file(argv) -> None:
    path = flag_value(argv, "config")
    if path is not None and not os.path.isfile(path.split(":", 1)[0]):
        raise UsageError(f"--config {path.split(':', 1)[0]!r}: no such file (expected configs/NAME.py[:ARG])")


def unknown_key_message(argv):
    """'--config.a.b: config.a has no key 'b' (it has: ...)' for the first override naming a missing key."""
    path = flag_value(argv, "config")
    if path is None:
        return None
    file, _, arg = path.partition(":")
    try:
        spec = importlib.util.spec_from_file_location("elip_jax_config_check", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config(arg) if arg else module.get_config()
    except Exception:  # pylint: disable=broad-except  # the flag parser reports a config that does not load
        return None
    for option in argv[1:]:
        if not option.startswith("--config."):
            continue
        keys = option[len("--config."):].split("=", 1)[0].split(".")
        node, where = config, "config"
        for key in keys:
            if not hasattr(node, "keys") or key not in node:
                known = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else type(node).__name__
                return f"--config.{'.'.join(keys)}: {where} has no key {key!r} (it has: {known})"
            node, where = node[key], f"{where}.{key}"
    return None


def train_command(argv) -> int:
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]}: every setting is a flag (--config.KEY=VALUE)")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax and tfds log every file at INFO
    if FLAGS.compare_costs:
        from elip_jax.train.costs import compare_costs
        compare_costs(FLAGS.config, FLAGS.workdir)
        return 0
    if not FLAGS.workdir:
        raise UsageError("--workdir is required: where checkpoints, logs and summary.json go (rerun to resume)")
    from elip_jax.train.distributed import initialize
    try:
        initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, FLAGS.distributed_timeout_s)
    except RuntimeError as error:  # a peer that never arrived, an unreachable coordinator
        raise UsageError(str(error)) from None
    from elip_jax.train.loop import train
    summary = train(FLAGS.config, FLAGS.workdir)
    return 0 if summary["finished"] else EXIT_PREEMPTED


def main(argv):
    return run_command(train_command, argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app.run(main, flags_parser=parse_flags)
