"""The data config: everything the training pipeline reads, with defaults that work for the built-in dataset."""
import ml_collections

from elip_jax.data.names import BUILTIN_DATASET


def default_data_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.name = BUILTIN_DATASET        # any TFDS name: 'coco_captions', 'my_dataset/config:1.0.0', ...
    config.data_dir = None               # None: $ELIP_JAX_DATA_DIR or ~/.cache/elip_jax/tensorflow_datasets
    config.split = "train"               # any TFDS split spec, e.g. 'train[:90%]'
    config.image_key = "image"
    config.caption_key = "captions"      # a key path: 'captions/text' reads coco_captions' nested text field
    config.num_workers = 0               # grain worker processes; 0 processes in the main process (threads)
    config.prefetch = 2                  # batches buffered ahead (per worker when num_workers > 0)
    config.read_threads = 2              # threads decoding examples inside each worker (or the main process)
    config.shuffle = True                # global shuffle, reshuffled every epoch
    config.seed = 0                      # data seed: order, crops and caption choice; the trainer may override
    config.min_image_size = 8            # images with a shorter side are skipped; larger small ones are upscaled
    config.crop_scale = (0.9, 1.0)       # random resized crop area range (open_clip's default for CLIP training)
    config.crop_ratio = (3 / 4, 4 / 3)   # random resized crop aspect-ratio range
    config.max_consecutive_skips = 10000  # a dataset this broken raises instead of spinning forever
    config.shuffle_buffer = 10000        # tfrecord (tf.data) datasets only: no global shuffle there
    return config


def validate_data_config(config) -> None:
    """Fails early, naming the key, before any worker starts."""
    def need(condition, key, expected):
        if not condition:
            raise ValueError(f"data_config.{key} must be {expected}; got {config.get(key)!r}")
    for key in ("name", "split", "image_key", "caption_key"):
        need(isinstance(config.get(key), str) and config.get(key), key, "a non-empty string")
    need(isinstance(config.num_workers, int) and config.num_workers >= 0, "num_workers", "an int >= 0")
    need(isinstance(config.prefetch, int) and config.prefetch >= 0, "prefetch", "an int >= 0")
    need(isinstance(config.read_threads, int) and config.read_threads >= 0, "read_threads", "an int >= 0")
    need(isinstance(config.seed, int) and 0 <= config.seed < 2**32, "seed", "an int in [0, 2**32)")
    need(isinstance(config.min_image_size, int) and config.min_image_size >= 1, "min_image_size", "an int >= 1")
    scale, ratio = tuple(config.crop_scale), tuple(config.crop_ratio)
    need(len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1, "crop_scale", "(low, high) with 0 < low <= high <= 1")
    need(len(ratio) == 2 and 0 < ratio[0] <= ratio[1], "crop_ratio", "(low, high) with 0 < low <= high")
    need(isinstance(config.max_consecutive_skips, int) and config.max_consecutive_skips >= 1,
         "max_consecutive_skips", "an int >= 1")
