"""The study command: does a token-reduction method keep accuracy, and does the memory it spares buy speed?

    python -m elip_jax.study --config configs/study12.py --methods none,elip,evit --seeds 3 --workdir DIR

Each (regime, method, seed) is one ordinary training run (elip_jax.train) in its own workdir under DIR/runs/, so a
killed study resumes where it stopped and a finished run is never trained again. Rooms of this package:
    runs       the study's runs: names, indices, the config each one trains, --runs / --shard selection
    budget     the largest batch that fits a memory budget (bisection over compiled memory, compile only)
    measure    the plan: each method's XLA FLOPs and memory, its largest batches, interleaved step timing
    aggregate  per-run results read back from the workdirs, mean and standard deviation over seeds, the tables
    plots      the pictures (accuracy against training FLOPs, loss curves), drawn with PIL
    driver     the study from start to end: plan, runs, report
"""
