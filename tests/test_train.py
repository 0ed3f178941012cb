"""The trainer: config validation, the step's safeguards, checkpoints, exact resume after SIGKILL, many processes."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import elip_jax
from elip_jax.train.defaults import validate_config
from elip_jax.train.loop import train
from elip_jax.train.metrics import read_scalars
from elip_jax.train.optim import decay_mask, learning_rate_schedule, make_optimizer
from elip_jax.train.step import init_state, make_train_step
from elip_jax.train.workdir import load_workdir
from tests.conftest import smoke_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(builtin_data_dir):
    return builtin_data_dir  # tests/conftest.py: prepared once per run


@pytest.fixture(scope="module")
def trained(smoke_workdir):
    """configs/smoke.py as it is, trained to the end (12 steps, checkpoints kept at 8, 10 and 12) once per run
    (tests/conftest.py): shared, so a test that changes it works on a copy."""
    return smoke_workdir()


def run_cli(workdir, data_dir, *flags, devices=8, env_extra=None, wait=True, stderr=subprocess.STDOUT):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "elip_jax.train", f"--config={REPO}/configs/smoke.py", f"--workdir={workdir}",
           f"--config.data.data_dir={data_dir}", *flags]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    if wait:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
    return proc


def final_params(workdir, step):
    restored = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
    return restored["params"]


def losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["train/loss"] for r in map(json.loads, f)}


# ---------------------------------------------------------------- config and step

@pytest.mark.parametrize("key,value,message", [
    ("model.name", "ViT-Q-99", "config.model.name = 'ViT-Q-99' is invalid: expected one of"),
    ("reduction.method", "prune", "config.reduction.method = 'prune' is invalid"),
    ("optim.grad_accum_steps", 3, r"config.optim.grad_accum_steps = 3 is invalid: expected a divisor of batch_size"),
    ("loss", "hinge", "config.loss = 'hinge' is invalid"),
    ("eval.reduction", "prune", "config.eval.reduction = .prune. is invalid: expected one of"),
    ("batch_size", 0, "config.batch_size = 0 is invalid: expected an int >= 1"),
])
def test_invalid_config_values_fail_before_compiling_naming_the_key(key, value, message):
    config = smoke_config("unused", **{key: value})
    with pytest.raises(ValueError, match=message):
        validate_config(config)


def test_a_schedule_that_does_not_fit_the_model_is_named(data_dir, tmp_path):
    config = smoke_config(data_dir, **{"reduction.begin_layers": (1, 9), "reduction.keep_ratios": (0.5, 0.2)})
    with pytest.raises(ValueError, match=r"config.reduction is invalid for tiny .*begin_layers\[1\] = 9"):
        train(config, str(tmp_path))


def test_weight_decay_skips_norms_biases_embeddings_and_the_logit_scale():
    model = elip_jax.create_model("tiny")
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 77), jnp.int32))
    mask = decay_mask(shapes["params"])
    assert mask["visual"]["resblocks_0"]["attn"]["in_proj_kernel"]
    assert mask["visual"]["conv1"]["kernel"] and mask["visual"]["proj"] and mask["text"]["text_projection"]
    assert not mask["visual"]["resblocks_0"]["attn"]["in_proj_bias"]
    assert not mask["visual"]["ln_pre"]["LayerNorm_0"]["scale"]
    assert not mask["text"]["token_embedding"]["embedding"]
    assert not mask["visual"]["positional_embedding"] and not mask["visual"]["class_embedding"]
    assert not mask["logit_scale"]


def _step_setup(accum=1, lr=1e-3):
    model = elip_jax.create_model("tiny", reduction="elip")
    images = jax.random.randint(jax.random.key(1), (8, 64, 64, 3), 0, 256).astype(jnp.uint8)
    tokens = elip_jax.tokenize([f"a {c} circle" for c in ("red", "blue", "green", "white") * 2])
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), tokens[:1])["params"]  # compiled: faster
    tx = optax.scale_by_adam()  # the direction; the step applies the schedule's rate (train/optim.py)
    step = make_train_step(model, tx, optax.constant_schedule(lr), loss_name="clip", logit_scale_max=100.0,
                           grad_accum_steps=accum)
    return jax.jit(step), init_state(params, tx, 0), {"images": images, "tokens": jnp.asarray(tokens)}


@pytest.mark.slow
def test_a_non_finite_loss_skips_the_update_and_is_counted():
    step, state, batch = _step_setup()
    poisoned = jax.tree_util.tree_map(lambda x: x, state)
    poisoned = poisoned.replace(params={**state.params, "logit_scale": jnp.float32(jnp.nan)})
    new_state, metrics = step(poisoned, batch)
    assert not bool(metrics["finite"])
    assert int(new_state.nonfinite_in_a_row) == 1 and int(new_state.nonfinite_total) == 1 and int(new_state.step) == 1
    jax.tree_util.tree_map(np.testing.assert_array_equal, new_state.opt_state, poisoned.opt_state)
    np.testing.assert_array_equal(new_state.params["visual"]["proj"], state.params["visual"]["proj"])
    good_state, metrics = step(state, batch)
    assert bool(metrics["finite"]) and int(good_state.nonfinite_in_a_row) == 0
    assert not np.array_equal(good_state.params["visual"]["proj"], state.params["visual"]["proj"])


def test_logit_scale_is_clamped_at_100():
    step, state, batch = _step_setup()
    state = state.replace(params={**state.params, "logit_scale": jnp.float32(np.log(500.0))})
    new_state, metrics = step(state, batch)
    assert float(new_state.params["logit_scale"]) == pytest.approx(np.log(100.0))
    assert float(metrics["logit_scale"]) == pytest.approx(100.0, rel=1e-5)


@pytest.mark.slow
def test_gradient_accumulation_averages_micro_batch_gradients():
    step1, state, batch = _step_setup(accum=1)
    step2, _, _ = _step_setup(accum=2)
    _, m2 = step2(state, batch)
    # by hand: the mean of the two micro-batches' losses (examples 0,2,4,6 and 1,3,5,7)
    halves = [{k: v[i::2] for k, v in batch.items()} for i in (0, 1)]
    hand = np.mean([float(step1(state, h)[1]["loss"]) for h in halves])
    assert float(m2["loss"]) == pytest.approx(hand, rel=1e-5)


def test_warmup_starts_at_lr_over_warmup_steps_and_reaches_lr():
    config = smoke_config("unused", **{"optim.lr": 1e-3, "optim.warmup_steps": 4, "optim.end_lr_ratio": 0.1})
    schedule = learning_rate_schedule(config.optim, num_steps=20)
    rates = [float(schedule(s)) for s in range(21)]
    np.testing.assert_allclose(rates[:5], [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3], rtol=1e-6)  # step 0 already learns
    assert all(a > b for a, b in zip(rates[4:20], rates[5:20]))  # cosine decay from step 4 ...
    assert rates[20] == pytest.approx(1e-4)  # ... to lr * end_lr_ratio at num_steps


def test_after_a_skipped_step_the_logged_rate_is_the_rate_used():
    """One counter (the state's step) drives the rate: a skipped non-finite step advances it like any other,
    and the rate logged for a step is the one its update used."""
    config = smoke_config("unused", **{"optim.lr": 1e-2, "optim.warmup_steps": 4, "optim.weight_decay": 0.0,
                                       "optim.grad_clip_norm": 0.0, "optim.eps": 1e-12})
    model = elip_jax.create_model("tiny", reduction="elip")
    images = jax.random.randint(jax.random.key(1), (8, 64, 64, 3), 0, 256).astype(jnp.uint8)
    tokens = jnp.asarray(elip_jax.tokenize([f"a {c} circle" for c in ("red", "blue", "green", "white") * 2]))
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), tokens[:1])["params"]  # compiled: faster
    tx = make_optimizer(config.optim)
    schedule = learning_rate_schedule(config.optim, num_steps=100)
    step = jax.jit(make_train_step(model, tx, schedule, loss_name="clip", logit_scale_max=100.0))
    batch = {"images": images, "tokens": tokens}
    state = init_state(params, tx, 0)

    poisoned = state.replace(params={**params, "logit_scale": jnp.float32(jnp.nan)})
    skipped, metrics = step(poisoned, batch)
    assert not bool(metrics["finite"]) and int(skipped.step) == 1
    assert float(metrics["learning_rate"]) == pytest.approx(2.5e-3)  # step 0: lr / warmup_steps

    after, metrics = step(skipped.replace(params=params), batch)  # the first update actually applied
    logged = float(metrics["learning_rate"])
    assert logged == pytest.approx(float(schedule(1))) == pytest.approx(5e-3)
    # Adam's first update is lr * g / |g| per element: the largest parameter change is the rate used
    used = float(jnp.max(jnp.abs(after.params["visual"]["proj"] - params["visual"]["proj"])))
    assert used == pytest.approx(logged, rel=1e-4)


# ---------------------------------------------------------------- checkpoints

FULL_DISK_SCRIPT = """
import json, logging, sys
import jax.numpy as jnp, numpy as np
from elip_jax.train import checkpointing
logging.basicConfig(level=logging.ERROR)
directory = sys.argv[1]
checkpointer = checkpointing.Checkpointer(directory + "/ckpt", every_steps=1, keep=3, async_save=True)
ok1 = checkpointer.save(1, {"w": jnp.arange(4.0)}, {"position": 1}) and checkpointer.wait()
try:  # fill the disk
    with open(directory + "/filler", "wb") as f:
        while True:
            f.write(b"x" * 65536)
            f.flush()
except OSError:
    pass
ok2 = checkpointer.save(2, {"w": jnp.zeros(4)}, {"position": 2}) and checkpointer.wait()
import jax
checkpointer = checkpointing.Checkpointer(directory + "/ckpt", every_steps=1, keep=3)  # as a resumed run would
restored, data = checkpointer.restore({"w": jax.ShapeDtypeStruct((4,), jnp.float32)}, 1)
print(json.dumps({"ok1": bool(ok1), "ok2": bool(ok2), "latest": checkpointer.latest_step(),
                  "w": np.asarray(restored["w"]).tolist(), "data": data}))
"""


def test_a_save_on_a_full_disk_is_reported_and_earlier_checkpoints_stay_intact(tmp_path):
    """A real full disk: a 1 MiB tmpfs in a private mount namespace (unshare), filled after the first save."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK_SCRIPT)
    shell = f"mount -t tmpfs -o size=1m tmpfs {disk} && {sys.executable} {script} {disk}"
    out = subprocess.run(["unshare", "-rm", "sh", "-c", shell], cwd=REPO, capture_output=True, text=True,
                         timeout=180, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ok1"] and not result["ok2"]
    assert "earlier checkpoints are intact" in out.stderr
    assert result["latest"] == 1 and result["w"] == [0.0, 1.0, 2.0, 3.0] and result["data"] == {"position": 1}


@pytest.mark.slow
def test_sigterm_saves_and_stops_and_a_rerun_finishes(data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    proc = run_cli(workdir, data_dir, "--config.num_steps=400", "--config.checkpoint.every_steps=1000", wait=False)
    metrics_file = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 240
    while not os.path.exists(metrics_file) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3, out[-3000:]  # stopped early, resumable
    assert "preemption signal" in out
    saved = ocp.CheckpointManager(os.path.join(workdir, "checkpoints")).latest_step()
    assert saved is not None and 1 <= saved < 400


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(data_dir, trained, tmp_path):
    steps = 12
    interrupted = str(tmp_path / "interrupted")
    proc = run_cli(interrupted, data_dir, wait=False)
    deadline = time.time() + 240
    checkpoint_dir = os.path.join(interrupted, "checkpoints")
    while time.time() < deadline and not os.path.isdir(os.path.join(checkpoint_dir, "4")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    killed_at = ocp.CheckpointManager(checkpoint_dir).latest_step()
    assert killed_at is not None and killed_at < steps, "the run finished before it could be killed"

    summary = train(smoke_config(data_dir), interrupted)  # resume in this process
    assert summary["finished"] and summary["steps"] == steps

    uninterrupted = trained  # the same config, trained without interruption
    a, b = final_params(interrupted, steps), final_params(uninterrupted, steps)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    for step, loss in losses(uninterrupted).items():
        if step > killed_at:
            assert losses(interrupted)[step] == loss


@pytest.mark.slow
def test_restoring_onto_a_different_number_of_devices(data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    run_cli(workdir, data_dir, "--config.num_steps=4", "--config.mesh.fsdp=2", "--config.param_sharding=fsdp",
            devices=2)
    model, variables, step = load_workdir(workdir)  # evaluation on 8 devices of a checkpoint written on 2
    assert step == 4 and model.config.image_size == 64
    written = final_params(workdir, 4)
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables["params"], written)
    config = smoke_config(data_dir, num_steps=6)
    summary = train(config, workdir)  # 8 devices, replicated parameters
    assert summary["finished"] and summary["steps"] == 6 and summary["devices"] == 8
    assert sorted(losses(workdir)) == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_two_processes_give_the_losses_of_one_process(data_dir, tmp_path):
    """2 processes x 2 CPU devices over gloo against 1 process x 4 devices, same global batch."""
    single = str(tmp_path / "single")
    run_cli(single, data_dir, "--config.num_steps=3", devices=4)
    multi = str(tmp_path / "multi")
    port = 20000 + os.getpid() % 20000
    procs = [run_cli(multi, data_dir, "--config.num_steps=3", f"--coordinator_address=127.0.0.1:{port}",
                     "--num_processes=2", f"--process_id={i}", devices=2, wait=False) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    with open(os.path.join(multi, "summary.json")) as f:
        assert json.load(f)["processes"] == 2
    expected, got = losses(single), losses(multi)
    assert sorted(got) == [1, 2, 3]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6)


def test_a_peer_that_never_arrives_gives_a_clear_error(tmp_path):
    code = ("from elip_jax.train.distributed import initialize\n"
            "initialize('127.0.0.1:1', num_processes=2, process_id=1, timeout_s=3)\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0
    assert "could not join the distributed job at 127.0.0.1:1 within 3 s" in out.stderr


# ---------------------------------------------------------------- resuming a workdir

def corrupt(workdir, step):
    """Truncates the array data of one checkpoint, as a full disk or a failing copy would leave it."""
    state = os.path.join(workdir, "checkpoints", str(step), "state")
    for root, _, files in os.walk(state):
        if os.path.basename(root) == "d":
            for name in files:
                with open(os.path.join(root, name), "r+b") as f:
                    f.truncate(100)


def snapshot(directory):
    """{relative path: bytes} of every file under directory."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, directory)] = f.read()
    return files


def test_a_resume_with_another_model_is_refused_in_one_line_before_anything_is_written(trained, data_dir,
                                                                                      tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    before = snapshot(workdir)
    proc = run_cli(workdir, data_dir, "--config.num_steps=14", "--config.loss=siglip", "--config.batch_size=32",
                   "--config.model.image_size=32", devices=1, wait=False, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-3000:]
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: cannot resume {workdir}")
    for field in ("model image_size (was 64, now 32)", "loss (was 'clip', now 'siglip')",
                  "batch_size (was 16, now 32)"):
        assert field in err
    assert snapshot(workdir) == before  # config.json and model_config.json still describe the checkpoints


def test_a_resume_past_a_truncated_checkpoint_logs_no_step_twice_and_keeps_the_first_record(trained, data_dir,
                                                                                           tmp_path, capsys):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    first_losses = losses(workdir)
    config_before = snapshot(workdir)["config.json"]
    corrupt(workdir, 12)
    summary = train(smoke_config(data_dir, num_steps=14), workdir)
    assert summary["finished"] and summary["steps"] == 14
    out = capsys.readouterr().out
    failed = [line for line in out.splitlines() if "could not be restored" in line]
    assert len(failed) == 2, out  # the step that failed and why; where it went
    assert failed[0].startswith("checkpoint step 12 in") and "OUT_OF_RANGE" in failed[0]
    assert "resuming from step 10" in failed[1]
    assert os.path.isdir(os.path.join(workdir, "unrestorable_checkpoints", "12"))

    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == list(range(1, 15))
    scalars = read_scalars(os.path.join(workdir, "tensorboard"))
    for tag in ("train/loss", "train/lr"):
        assert sorted(step for step, _ in scalars[tag]) == list(range(1, 15)), tag
    # step 11 starts from checkpoint 10 (parameters and data iterator): its loss is the first run's; later ones
    # differ, since the cosine schedule now ends at step 14
    assert losses(workdir)[11] == first_losses[11]

    assert snapshot(workdir)["config.json"] == config_before  # what steps 1-12 were trained with
    with open(os.path.join(workdir, "config_history.jsonl")) as f:
        (entry,) = [json.loads(line) for line in f]
    assert entry["resumed_from_step"] == 10 and entry["changed"] == {"num_steps": [12, 14]}


def test_a_workdir_whose_checkpoints_all_fail_is_one_error_naming_them(trained, data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    for step in (8, 10, 12):
        corrupt(workdir, step)
    proc = run_cli(workdir, data_dir, "--config.num_steps=14", devices=1, wait=False, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: no checkpoint in"), err
    assert "Traceback" not in err, err  # the failed restores' late reads (TensorStore) print nothing
    assert all(os.path.join(workdir, "checkpoints", str(s)) in errors[0] for s in (8, 10, 12))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int) == ["8", "10", "12"]  # nothing moved


# ---------------------------------------------------------------- the command line

@pytest.mark.parametrize("flags,message", [
    (["--config.nokey=1"], "error: --config.nokey: config has no key 'nokey' (it has: batch_size,"),
    (["--config.optim.lrr=1"], "error: --config.optim.lrr: config.optim has no key 'lrr' (it has: b1,"),
    (["--config.batch_size=abc"], "error: flag --config.batch_size=abc: invalid literal"),
    (["--config.batch_size=0"], "error: config.batch_size = 0 is invalid: expected an int >= 1"),
    (["--config=configs/nope.py"], "error: --config 'configs/nope.py': no such file"),
    (["--config.data.name=nope_ds"], "error: unknown dataset 'nope_ds': not a TFDS name"),
    (["--config.data.split=validation"], "error: dataset 'elip_shapes/small' has no split 'validation'"),
    (["--config.data.caption_key=text"], "error: dataset 'elip_shapes/small' has no feature 'text' (given as "
                                         "config.data.caption_key)"),
    (["--workdir={tmp}/a_file/run"], "error: --workdir '{tmp}/a_file/run' is not a writable directory"),
    (["--bogus=1"], "error: Unknown command line flag 'bogus'"),
    (["--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=1", "--distributed_timeout_s=2"],
     "error: could not join the distributed job at 127.0.0.1:1 within 2 s"),
])
def test_bad_input_is_one_line_and_exit_code_2(flags, message, data_dir, tmp_path):
    (tmp_path / "a_file").write_text("")
    flags = [f.format(tmp=tmp_path) for f in flags]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    cmd = [sys.executable, "-m", "elip_jax.train", f"--config={REPO}/configs/smoke.py",
           f"--workdir={tmp_path}/run", f"--config.data.data_dir={data_dir}", *flags]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.count("\n") == 1 and out.stderr.startswith(message.format(tmp=tmp_path)), out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def test_compare_costs_reports_what_elip_saves_from_xla_without_training(trained, data_dir):
    """What the demo shows: XLA's FLOPs and temporary memory of one training step, ELIP against unpruned; the
    trained workdir lends its measured step, so only the unpruned one is compiled."""
    with open(os.path.join(trained, "summary.json")) as f:
        summary = json.load(f)
    before = snapshot(trained)
    env = dict(os.environ, JAX_PLATFORMS="cpu")  # the devices the workdir was trained on (conftest: 8)
    cmd = [sys.executable, "-m", "elip_jax.train", f"--config={REPO}/configs/smoke.py", f"--workdir={trained}",
           f"--config.data.data_dir={data_dir}", "--config.num_steps=12", "--compare_costs"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("compiling the unpruned model's training step")
    assert lines[1].startswith("what elip saves per training step (global batch 16)")
    unpruned, elip = lines[2].split(), lines[3].split()
    assert unpruned[0] == "unpruned" and elip[0] == "elip"
    assert float(elip[1]) == pytest.approx(summary["flops_per_step_per_device"] / 1e9, rel=0.01)
    assert float(elip[3]) == pytest.approx(summary["temp_bytes_per_device"] / 2**20, rel=0.01)
    assert float(elip[1]) < float(unpruned[1]) and "fewer FLOPs" in lines[3]
    assert snapshot(trained) == before  # nothing trained or written
