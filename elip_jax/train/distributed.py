"""Multi-process start-up: jax.distributed.initialize from flags or the environment, with a timeout."""
from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Optional

import jax

# What schedulers and launchers set; with any of these jax.distributed.initialize() finds its peers itself.
AUTO_DETECTED = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "OMPI_MCA_orte_hnp_uri")


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, timeout_s: int = 300, cpu_collectives: str = "gloo") -> bool:
    """Joins the other processes of this job, or does nothing for a single-process run.

    Explicit flags win; else ELIP_JAX_COORDINATOR / ELIP_JAX_NUM_PROCESSES / ELIP_JAX_PROCESS_ID; else the
    cluster environment (Slurm, TPU pods) when one is detected. Returns True when running multi-process.
    Raises RuntimeError naming the coordinator and the timeout when the peers do not all arrive.
    """
    coordinator_address = coordinator_address or os.environ.get("ELIP_JAX_COORDINATOR")
    if num_processes is None and "ELIP_JAX_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["ELIP_JAX_NUM_PROCESSES"])
    if process_id is None and "ELIP_JAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["ELIP_JAX_PROCESS_ID"])
    explicit = coordinator_address is not None
    if not explicit and not any(v in os.environ for v in AUTO_DETECTED):
        return False
    if explicit and (num_processes is None or process_id is None):
        raise ValueError("a coordinator address needs num_processes and process_id too "
                         f"(got num_processes={num_processes}, process_id={process_id})")
    if explicit and num_processes == 1:
        return False
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    where = coordinator_address or "the address found in the cluster environment"
    failure = (f"could not join the distributed job at {where} within {timeout_s} s (process {process_id} of "
               f"{num_processes}): a peer never arrived or the coordinator is unreachable. Check that every "
               f"process runs the same command with the same coordinator address")
    if explicit and process_id != 0:
        wait_for_coordinator(coordinator_address, timeout_s, failure)
    # jax aborts the process (it does not raise) when peers are missing at its deadline: say why first
    watchdog = threading.Timer(max(timeout_s - 1, 0.5), lambda: print(f"elip_jax: {failure}", file=sys.stderr,
                                                                       flush=True))
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout_s)
    except Exception as error:  # jax raises XlaRuntimeError / RuntimeError depending on the version
        raise RuntimeError(f"{failure}. Cause: {error}") from error
    finally:
        watchdog.cancel()
    return True


def wait_for_coordinator(address: str, timeout_s: float, failure: str):
    """Polls the coordinator's port until it accepts a connection; RuntimeError(failure) at the deadline."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1.0).close()
            return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{failure}. Cause: {error}") from error
            time.sleep(0.25)
