"""Device mesh, partition rules and multi-host start-up: the one place that
says how every array is laid out.

The train step is written as if for one device; ``jax.jit`` gets explicit
``in_shardings``/``out_shardings`` built here:

* the batch is split on the mesh's ``data`` axis (so batch norm, which takes a
  mean over the batch inside the jitted step, sees the *global* batch);
* parameters and optimiser state are replicated, unless a partition rule
  (``(regex, PartitionSpec)`` on the ``/``-joined pytree path) says otherwise,
  or FSDP-style sharding is on (``fsdp_min_size > 0``): then every tensor with
  at least that many elements is split over the ``data`` axis along its largest
  divisible dimension (ZeRO-3 style, as big_vision's ``fsdp`` rule).

Multi-host: ``initialize_distributed`` starts ``jax.distributed`` when flags,
environment variables, SLURM or a TPU pod say so; meshes span all devices of
all processes; ``shard_batch`` assembles global arrays from each process's
local slice with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"

# Environment variables read when no explicit argument is given.
_ENV_COORDINATOR = ("RSA_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS")
_ENV_NUM_PROCESSES = ("RSA_NUM_PROCESSES", "JAX_NUM_PROCESSES")
_ENV_PROCESS_ID = ("RSA_PROCESS_ID", "JAX_PROCESS_ID")


def _env(names: Sequence[str]) -> str | None:
    for n in names:
        if os.environ.get(n):
            return os.environ[n]
    return None


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
    """Starts ``jax.distributed`` when this run spans several processes.

    Must run before anything touches a JAX device. Decision order:
    1. explicit arguments (``--coordinator_address`` etc. in ``main.py``) or the
       env vars ``RSA_/JAX_COORDINATOR_ADDRESS``, ``..._NUM_PROCESSES``,
       ``..._PROCESS_ID``;
    2. a SLURM job step with more than one task (JAX reads the SLURM vars);
    3. a multi-host Cloud TPU slice (JAX auto-detects from the TPU metadata);
       ``TPU_WORKER_HOSTNAMES`` (GKE) or ``RSA_DISTRIBUTED=1`` (set by
       ``launch/tpu_pod.sh``, as TPU VMs do not export the host list) say so.
    Otherwise it is a single-process run and nothing is initialised.
    ``RSA_LOCAL_DEVICE_IDS=0,1,...`` picks this process's GPUs: JAX's SLURM
    detection otherwise gives each process only GPU ``SLURM_LOCALID``, which is
    right for one process per GPU but not for one per node
    (``launch/slurm_gpu.sbatch`` sets it).

    Returns:
      True if ``jax.distributed.initialize`` was called.
    """
    coordinator_address = coordinator_address or _env(_ENV_COORDINATOR)
    if num_processes is None and _env(_ENV_NUM_PROCESSES) is not None:
        num_processes = int(_env(_ENV_NUM_PROCESSES))
    if process_id is None and _env(_ENV_PROCESS_ID) is not None:
        process_id = int(_env(_ENV_PROCESS_ID))
    local_ids = os.environ.get("RSA_LOCAL_DEVICE_IDS")
    local_ids = [int(i) for i in local_ids.split(",")] if local_ids else None
    if coordinator_address:
        if num_processes is None or process_id is None:
            raise ValueError(
                f"coordinator address {coordinator_address!r} given but num_processes="
                f"{num_processes} / process_id={process_id}: pass --num_processes and "
                "--process_id (or RSA_NUM_PROCESSES / RSA_PROCESS_ID).")
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   local_device_ids=local_ids)
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize(local_device_ids=local_ids)  # SLURM auto-detection.
    elif (len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
          or os.environ.get("RSA_DISTRIBUTED", "0") not in ("", "0")):
        jax.distributed.initialize()  # cluster auto-detection (TPU metadata, ...).
    else:
        return False
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())
    check_gpu_visibility()
    return True


def visible_gpu_count() -> int | None:
    """NVIDIA GPUs this process may use: CUDA_VISIBLE_DEVICES, else the driver's list."""
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        ids = [i for i in cvd.split(",") if i.strip()]
        return 0 if ids[:1] == ["-1"] else len(ids)
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines())


def _processes_per_node() -> int:
    """This node's JAX processes under SLURM (``8`` or ``8(x2)`` forms), else 1."""
    value = (os.environ.get("SLURM_NTASKS_PER_NODE")
             or os.environ.get("SLURM_TASKS_PER_NODE", "1"))
    return int(re.match(r"\d+", value).group()) if re.match(r"\d+", value) else 1


def check_gpu_visibility(local_devices: int | None = None, visible_gpus: int | None = None,
                         processes_per_node: int | None = None,
                         platform: str | None = None) -> None:
    """Stops a GPU run whose processes leave some of the node's GPUs unused.

    With one process per node and no local device ids, JAX's SLURM detection gives
    each process only GPU ``SLURM_LOCALID`` (0): the run would silently use one GPU
    per node.  Arguments default to the live values (for tests: pass them).

    Raises:
      RuntimeError: local devices × processes on this node < GPUs visible.
    """
    platform = platform or jax.local_devices()[0].platform  # the devices this run drives
    if platform != "gpu":
        return
    local = jax.local_device_count() if local_devices is None else local_devices
    visible = visible_gpu_count() if visible_gpus is None else visible_gpus
    per_node = _processes_per_node() if processes_per_node is None else processes_per_node
    if visible is None or local * per_node >= visible:
        return
    raise RuntimeError(
        f"this process drives {local} GPU(s) and the node runs {per_node} process(es), but "
        f"{visible} GPUs are visible: {visible - local * per_node} would sit idle. Run one "
        f"process per GPU (SLURM --ntasks-per-node={visible}; launch/slurm_gpu.sbatch "
        f"--per-gpu) or give each process its GPUs (RSA_LOCAL_DEVICE_IDS=0,...,{visible - 1}, "
        f"i.e. jax.distributed.initialize(local_device_ids=...); launch/slurm_gpu.sbatch "
        f"sets it).")


def is_main_process() -> bool:
    """Only process 0 logs, prints and writes summaries."""
    return jax.process_index() == 0


def barrier(name: str, timeout_s: int = 3600) -> None:
    """Waits until every process reaches ``barrier(name)`` (no-op for one process).

    Uses the ``jax.distributed`` coordination service, not a device collective:
    on CPU a gloo collective gives up when the other processes are more than
    30 s late (e.g. while process 0 builds the dataset).
    """
    if jax.process_count() == 1:
        return
    client = distributed_client()
    _barrier_count[0] += 1  # ids must be unique; every process counts the same calls
    if client is None:
        multihost_utils.sync_global_devices(name)
    else:
        client.wait_at_barrier(f"rsa_jax:{name}:{_barrier_count[0]}", timeout_s * 1000)


_barrier_count = [0]


def distributed_client() -> Any | None:
    """The ``jax.distributed`` coordination-service client, or None if not started.

    The one use of JAX's private API in this project (``jax._src.distributed``): the
    client's ``wait_at_barrier`` is the only barrier with a caller-chosen timeout.
    tests/test_architecture.py fails loudly if a JAX upgrade moves it.
    """
    from jax._src import distributed  # private: see the docstring
    return distributed.global_state.client


def create_mesh(mesh_shape: Mapping[str, int] | None = None,
                devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over all devices of all processes.

    Args:
      mesh_shape: axis name -> size, one size may be -1 (= the rest). The
        default is a 1-D data-parallel mesh ``{'data': -1}``.
      devices: defaults to ``jax.devices()`` (global).
    """
    devices = list(jax.devices() if devices is None else devices)
    mesh_shape = dict(mesh_shape or {DATA_AXIS: -1})
    if DATA_AXIS not in mesh_shape:
        raise ValueError(f"mesh_shape {mesh_shape} needs a {DATA_AXIS!r} axis")
    sizes = list(mesh_shape.values())
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh_shape {mesh_shape}: at most one axis may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    sizes = [len(devices) // known if s == -1 else s for s in sizes]
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh_shape {mesh_shape} does not use exactly the "
                         f"{len(devices)} available devices")
    dev = mesh_utils.create_device_mesh(sizes, devices=devices, allow_split_physical_axes=True)
    return Mesh(dev, tuple(mesh_shape.keys()))


def mesh_platform(mesh: Mesh) -> str:
    """The platform of the mesh's devices ('cpu', 'gpu', 'tpu'): the one a program
    sharded over it is built for, also for TPU devices described by
    `jax.experimental.topologies` on a host without TPUs (`rsa_jax.aot`)."""
    platforms = {d.platform for d in mesh.devices.flat}
    if len(platforms) != 1:
        raise ValueError(f"a mesh over devices of several platforms: {sorted(platforms)}")
    return platforms.pop()


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)


def _fsdp_spec(shape: Sequence[int], axis_size: int) -> P:
    """Shards the largest dimension that the data axis divides; else replicated."""
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % axis_size == 0:
            spec = [None] * len(shape)
            spec[dim] = DATA_AXIS
            return P(*spec)
    return P()


def tree_shardings(mesh: Mesh, tree: Any,
                   rules: Sequence[tuple[str, Sequence[str | None]]] = (),
                   fsdp_min_size: int = 0) -> Any:
    """NamedShardings for every leaf of ``tree`` (arrays or ShapeDtypeStructs).

    The first rule whose regex ``re.search``-es the leaf's path wins; then FSDP
    (if ``fsdp_min_size > 0`` and the leaf is that large); else replicated.
    Optimiser-state leaves carry their parameter's path as a suffix, so one
    rule covers a weight and its momentum.
    """
    compiled = [(re.compile(r), P(*spec)) for r, spec in rules]
    axis_size = mesh.shape[DATA_AXIS]

    def one(path, leaf):
        name, shape = _path_str(path), tuple(getattr(leaf, "shape", ()))
        for regex, spec in compiled:
            if regex.search(name):
                return NamedSharding(mesh, spec)
        if fsdp_min_size > 0 and int(np.prod(shape, dtype=np.int64)) >= fsdp_min_size:
            return NamedSharding(mesh, _fsdp_spec(shape, axis_size))
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(one, tree)


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh,
                keys: Sequence[str] = ("video", "label", "mask")) -> dict[str, jax.Array]:
    """Process-local numpy batch -> global ``jax.Array``s split on the data axis.

    Each process passes its own slice (``global_batch / process_count`` rows);
    host-only fields (e.g. int64 ``index``) are left out.
    """
    sharding = data_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k]))
            for k in keys if k in batch}


def to_host(x: Any) -> Any:
    """Fetches (possibly multi-host sharded) arrays as full numpy arrays."""
    if jax.process_count() == 1:
        return jax.device_get(x)
    return multihost_utils.process_allgather(x, tiled=True)
