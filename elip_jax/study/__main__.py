"""python -m elip_jax.study --config configs/NAME.py[:ARG] --methods none,elip,evit --seeds 3 --workdir DIR
       [--config.KEY=VALUE ...] [--regimes equal_steps,equal_flops,equal_time] [--runs 0-5 | --shard i/n]

Trains each (regime, method, seed) with the normal trainer in DIR/runs/, evaluates zero-shot classification and
retrieval both ways, and writes DIR/results.json, DIR/results.md and two PNGs. Rerun the same command to resume
(finished runs are not trained again). Spread runs over processes or hosts with --runs or --shard (the run
list is printed by --list); the process with --shard 0/n (or none) measures the plan the others wait for.
Config files and --config.KEY=VALUE overrides are read exactly as `python -m elip_jax.train` reads them.
Bad input: one line `error: ...`, exit code 2, before anything compiles. Exit code 3: a run was preempted.
"""
import logging
import os
import sys

from absl import app, flags, logging as absl_logging

from elip_jax.command_line import UsageError, run_command
from elip_jax.train.__main__ import FLAGS, parse_flags  # the trainer's --config, --workdir and overrides

flags.DEFINE_string("methods", None, "comma-separated registered reduction methods (the unpruned baseline is "
                    "added when missing)")
flags.DEFINE_string("seeds", "3", "a count N (seeds config.seed .. config.seed+N-1) or a comma-separated list")
flags.DEFINE_string("regimes", "equal_steps,equal_flops,equal_time", "which regimes to run (equal_steps first)")
flags.DEFINE_string("runs", None, "run indices this process trains, e.g. 0-5,9 (see --list)")
flags.DEFINE_string("shard", None, "i/n: this process trains runs i, i+n, i+2n, ...")
flags.DEFINE_integer("timing_repeats", 5, "interleaved rounds of the step timing (median)")
flags.DEFINE_integer("batch_multiple", 8, "the batch search tries multiples of this (and of the devices)")
flags.DEFINE_float("max_batch_factor", 4.0, "the batch search stops at this multiple of the config's batch")
flags.DEFINE_float("plan_wait_s", 3600.0, "how long a --shard i/n (i > 0) process waits for shard 0's plan")
flags.DEFINE_bool("list", False, "print the study's runs with their indices and exit")
flags.DEFINE_bool("report_only", False, "write the report from the runs finished so far and exit")

TRAINER_ONLY = ("compare_costs", "coordinator_address", "num_processes", "process_id")


def parse_seeds(text: str, first: int) -> list[int]:
    text = text.strip()
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
            if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
                raise ValueError
            return seeds
        count = int(text)
    except ValueError:
        raise UsageError(f"--seeds {text!r}: expected a count (3) or distinct seeds (0,1,2)") from None
    if count < 1:
        raise UsageError(f"--seeds {text!r}: expected a count >= 1")
    return list(range(first, first + count))


def check_inputs(study) -> None:
    """Everything that can be checked before compiling: each run's config, the dataset, the workdir."""
    from elip_jax import data as data_lib
    from elip_jax.study.runs import run_config
    from elip_jax.train import resume, setup
    from elip_jax.train.defaults import validate_config
    for method in study.methods:
        config = run_config(study.config, method, study.seeds[0])
        validate_config(config)
        setup.build_model(config)  # the method's schedule on this tower
    data_lib.validate_data_config(study.config.data)
    data_config = setup.prepare_data_config(study.config)
    data_lib.check_dataset(data_config.name, data_config.split, data_config.data_dir,
                           keys={"config.data.image_key": data_config.image_key,
                                 "config.data.caption_key": data_config.caption_key})
    resume.check_writable(study.workdir)


def study_command(argv) -> int:
    from elip_jax.study.driver import Study, run_study
    from elip_jax.study.runs import parse_methods, parse_regimes, parse_selection
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]}: every setting is a flag")
    for name in TRAINER_ONLY:
        if FLAGS[name].present:
            raise UsageError(f"--{name} is a trainer flag, not a study flag")
    if not FLAGS.methods:
        raise UsageError("--methods is required, e.g. --methods none,elip,evit")
    if not FLAGS.workdir:
        raise UsageError("--workdir is required: where the study's runs and results go (rerun to resume)")
    absl_logging.set_verbosity(absl_logging.WARNING)
    if FLAGS.timing_repeats < 1 or FLAGS.batch_multiple < 1 or FLAGS.max_batch_factor < 1:
        raise UsageError("--timing_repeats and --batch_multiple must be >= 1 and --max_batch_factor >= 1")
    config = FLAGS.config
    study = Study(config=config, config_name=flag_config_name(sys.argv), methods=parse_methods(FLAGS.methods),
                  seeds=parse_seeds(FLAGS.seeds, config.seed), regimes=parse_regimes(FLAGS.regimes),
                  workdir=FLAGS.workdir, repeats=FLAGS.timing_repeats, batch_multiple=FLAGS.batch_multiple,
                  max_batch_factor=FLAGS.max_batch_factor, plan_wait_s=FLAGS.plan_wait_s)
    keys = study.keys
    selection = parse_selection(FLAGS.runs, FLAGS.shard, len(keys))
    if FLAGS.list:
        for key in keys:
            print(f"{key.index:4d}  {key.name}")
        return 0
    # one process measures the plan: shard 0 of a sharded study (any --runs process measures it if missing)
    study.makes_plan = not FLAGS.shard or FLAGS.shard.strip().startswith("0/")
    check_inputs(study)
    return run_study(study, selection, report_only=FLAGS.report_only)


def flag_config_name(argv) -> str:
    from elip_jax.train.__main__ import flag_value
    value = flag_value(argv, "config") or "config"
    return os.path.relpath(value) if not os.path.isabs(value) else value


def main(argv):
    return run_command(study_command, argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app.run(main, flags_parser=parse_flags)
