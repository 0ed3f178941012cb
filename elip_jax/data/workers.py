"""Worker-process options for grain pipelines."""
import grain


def multiprocessing_options(num_workers: int, per_worker_buffer_size: int) -> grain.MultiprocessingOptions:
    # grain's worker processes read absl flags; a program that does not run absl.app (pytest, notebooks,
    # plain scripts) has not parsed them, and grain would raise UnparsedFlagAccessError. Mark them parsed
    # (their defaults) so the pipeline works from any entry point.
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=per_worker_buffer_size)
