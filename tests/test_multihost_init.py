"""``parallel.initialize_distributed`` picks the right ``jax.distributed.initialize``
call from flags and environment (the call itself is recorded, not made)."""

import jax
import pytest

from rsa_jax import parallel

_VARS = ("RSA_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS", "RSA_NUM_PROCESSES",
         "JAX_NUM_PROCESSES", "RSA_PROCESS_ID", "JAX_PROCESS_ID", "SLURM_NTASKS",
         "TPU_WORKER_HOSTNAMES", "RSA_DISTRIBUTED", "RSA_LOCAL_DEVICE_IDS")


@pytest.fixture
def calls(monkeypatch):
    for v in _VARS:
        monkeypatch.delenv(v, raising=False)
    recorded = []
    monkeypatch.setattr(jax.distributed, "initialize",
                        lambda *a, **kw: recorded.append((a, kw)))
    return recorded


def test_single_process_initialises_nothing(calls):
    assert parallel.initialize_distributed() is False and calls == []


def test_explicit_flags(calls):
    assert parallel.initialize_distributed("10.0.0.1:1234", 2, 1)
    assert calls == [(("10.0.0.1:1234", 2, 1), {"local_device_ids": None})]


def test_env_vars_and_local_device_ids(calls, monkeypatch):
    monkeypatch.setenv("RSA_COORDINATOR_ADDRESS", "h:1")
    monkeypatch.setenv("RSA_NUM_PROCESSES", "4")
    monkeypatch.setenv("RSA_PROCESS_ID", "3")
    monkeypatch.setenv("RSA_LOCAL_DEVICE_IDS", "0,1")
    parallel.initialize_distributed()
    assert calls == [(("h:1", 4, 3), {"local_device_ids": [0, 1]})]


def test_coordinator_without_ids_is_an_error(calls, monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "h:1")
    with pytest.raises(ValueError, match="--num_processes and --process_id"):
        parallel.initialize_distributed()


def test_slurm_one_process_per_node_gets_all_gpus(calls, monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("RSA_LOCAL_DEVICE_IDS", "0,1,2,3,4,5,6,7")
    parallel.initialize_distributed()
    assert calls == [((), {"local_device_ids": list(range(8))})]


def test_slurm_one_process_per_gpu_leaves_it_to_jax(calls, monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "16")
    parallel.initialize_distributed()
    assert calls == [((), {"local_device_ids": None})]


@pytest.mark.parametrize("var, value", [("RSA_DISTRIBUTED", "1"),
                                        ("TPU_WORKER_HOSTNAMES", "t0,t1,t2,t3")])
def test_tpu_pod_auto_detection(calls, monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    parallel.initialize_distributed()
    assert calls == [((), {})]


def test_barrier_is_a_no_op_for_one_process(calls):
    parallel.barrier("anything")   # would need a coordination service otherwise
    assert calls == []
