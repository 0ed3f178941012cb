"""Two real JAX processes (jax.distributed on CPU, gloo): each builds global arrays from its local rows."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import free_port

WORKER = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{sys.argv[1]}", num_processes=2, process_id=int(sys.argv[2]))
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    import elip_jax.data as data
    sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
    from test_data import fake_tokenize
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))
    config = data.default_data_config()
    config.name, config.data_dir, config.caption_key = "indexed_toy", sys.argv[3], "captions/text"
    train = data.make_train_iterator(config, global_batch_size=8, image_size=8, seed=0, sharding=sharding,
                                     context_length=16, tokenize_fn=fake_tokenize)
    batch = next(train)
    local_ids = (np.concatenate([np.asarray(s.data) for s in batch["images"].addressable_shards])[:, 0, 0, 0] // 3)
    everything = multihost_utils.process_allgather(batch["images"], tiled=True)[:, 0, 0, 0] // 3
    evaluation = data.make_eval_iterator("indexed_toy", "test", data_dir=sys.argv[3], image_size=8,
                                         global_batch_size=6, sharding=sharding)
    indices = [multihost_utils.process_allgather(b["index"], tiled=True).tolist() for b in evaluation]
    json.dump({"shape": list(batch["images"].shape), "local": local_ids.tolist(), "global": everything.tolist(),
               "eval_steps": len(evaluation), "eval_indices": indices}, open(sys.argv[4], "w"))
""")


def test_two_processes_build_global_batches(tmp_path):
    sys.path.insert(0, os.path.dirname(__file__))
    from test_data import IndexedToy  # pylint: disable=g-import-not-at-top
    root = str(tmp_path / "tfds")
    IndexedToy(data_dir=root, file_format="array_record").download_and_prepare()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.getcwd()}
    outputs = [tmp_path / f"out{i}.json" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, str(script), str(port), str(i), root, str(outputs[i])], env=env,
                              cwd=os.getcwd(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
    try:
        logs = [p.communicate(timeout=90)[0].decode()[-3000:] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("the two-process run did not finish in 90 s")
    assert all(p.returncode == 0 for p in procs), logs
    results = [json.load(open(o)) for o in outputs]
    assert results[0]["shape"] == [8, 8, 8, 3]
    assert results[0]["global"] == results[1]["global"]  # both see the same global batch ...
    assert sorted(results[0]["local"] + results[1]["local"]) == sorted(results[0]["global"])  # ... made of both
    assert not set(results[0]["local"]) & set(results[1]["local"])
    assert results[0]["eval_steps"] == results[1]["eval_steps"] == 3
    flat = [i for batch in results[0]["eval_indices"] for i in batch]
    assert [i for i in flat if i >= 0] == list(range(13)) and flat.count(-1) == 5
