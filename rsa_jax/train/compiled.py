"""The train step as its compiler sees it: HBM use, FLOPs, HBM bytes and collectives
per chip, and the largest per-chip batch that fits.

`compile_step` builds exactly the program `train.train_and_evaluate` runs (the same
`step.compile_steps`, state shardings, donation and uint8 input) over any list of
devices, without running it: the live devices of a run, or TPU chips described by
`jax.experimental.topologies` on a host that has none (`python -m rsa_jax.aot`).
Its figures are the compiler's own (``memory_analysis``, ``cost_analysis``) and so
are per chip: a sharded program is compiled once per device.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from rsa_jax import parallel
from rsa_jax.models import build_model
from rsa_jax.train import optim
from rsa_jax.train import step as step_lib

# The lr schedule's shape does not change the program: any positive length compiles
# the same step.
_STEPS_PER_EPOCH = 1000
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
                "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
                "c128": 16}


class DoesNotFit(Exception):
    """The step's compile ran out of device memory at this per-chip batch."""

    def __init__(self, per_chip_batch: int, needed: float | None, available: float | None,
                 detail: str):
        self.per_chip_batch, self.needed, self.available = per_chip_batch, needed, available
        super().__init__(f"per-chip batch {per_chip_batch} does not fit: {detail}")


@dataclasses.dataclass(frozen=True)
class StepReport:
    """What the compiler says of one train step, per chip.

    Attributes:
      per_chip_batch, chips: clips per chip per step; chips in the mesh.
      compile_s: seconds spent lowering and compiling.
      argument_bytes, output_bytes, alias_bytes, temp_bytes, code_bytes: the
        compiler's buffer sizes (alias: outputs that reuse donated arguments).
      flops, hbm_bytes: ``cost_analysis``'s 'flops' and 'bytes accessed'.
      collectives: kind -> {'count': ops, 'bytes': bytes of their results}.
    """

    per_chip_batch: int
    chips: int
    compile_s: float
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    flops: float
    hbm_bytes: float
    collectives: dict[str, dict[str, int]]

    @property
    def hbm_total(self) -> int:
        """Device memory the step holds at once: arguments, outputs that are not
        donated arguments, temporaries and code."""
        return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes
                + self.code_bytes)

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOP per byte of HBM traffic."""
        return self.flops / self.hbm_bytes if self.hbm_bytes else float("inf")


def parse_oom(message: str) -> tuple[float | None, float | None] | None:
    """(bytes needed, bytes available) from an out-of-memory compile error, (None,
    None) for one that names no sizes, or None when `message` is not about memory."""
    if "RESOURCE_EXHAUSTED" not in message and "out of memory" not in message.lower():
        return None
    units = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
    size = r"([\d.]+)\s*([KMGT]?)i?B?"
    m = re.search(rf"required[^(]*\({size}\)[^(]*available[^(]*\({size}\)", message)
    if m is None:
        m = re.search(rf"[Uu]sed {size} of {size}", message)
    if m is None:
        return None, None
    return (float(m.group(1)) * units[m.group(2)], float(m.group(3)) * units[m.group(4)])


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """Collective ops of a compiled HLO module: kind -> {'count', 'bytes'}.

    Asynchronous pairs count once (their ``-start``); bytes are those of the
    collective's result arrays (for an async all-gather or collective-permute, whose
    start returns operand and result together, the result half).
    """
    out: dict[str, dict[str, int]] = {}
    op = "|".join(_COLLECTIVES)
    for m in re.finditer(rf"=\s*(.+?)\s+({op})(-start)?\(", hlo_text):
        sizes = _array_bytes(m.group(1))
        if m.group(3) and m.group(2) in ("all-gather", "collective-permute") and len(sizes) > 1:
            sizes = sizes[len(sizes) // 2:len(sizes) // 2 + 1]
        entry = out.setdefault(m.group(2), {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += int(sum(sizes))
    return out


def _array_bytes(type_text: str) -> list[int]:
    """Bytes of each array in an HLO result type (``bf16[8,128]{...}`` or a tuple)."""
    return [_DTYPE_BYTES.get(t, 0) * math.prod(int(d) for d in dims.split(",") if d)
            for t, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", type_text)]


def unoptimised_flops(lowered: Any) -> float:
    """FLOPs of a lowered program before any compiler pass (the whole global program),
    from XLA's HLO cost analysis run by the CPU client.

    Uses ``jax._src.lib._jax.hlo_module_cost_analysis``, what ``Lowered.cost_analysis``
    calls with the lowering's own backend (for which the CUDA plugin has none);
    tests/test_aot.py pins that both agree on a CPU program.
    """
    from jax._src import xla_bridge
    from jax._src.lib import _jax
    module = lowered.compiler_ir("hlo").as_hlo_module()
    return float(_jax.hlo_module_cost_analysis(xla_bridge.get_backend("cpu"), module)
                 .get("flops", 0.0))


def largest_fusions(hlo_text: str, top: int = 8) -> list[dict]:
    """The `top` instructions of a compiled module's entry computation by the bytes of
    their results (fusions, convolutions, copies...): where the HBM traffic goes.

    Each: {'name', 'op' (fusion kind or opcode), 'shape', 'bytes', 'source' (the jax
    op_name of its metadata, shortened)}.
    """
    entry = hlo_text[hlo_text.find("ENTRY"):]
    entry = entry[:entry.find("\n}")]
    rows = []
    skip = ("parameter", "constant", "tuple", "get-tuple-element", "bitcast")
    for line in entry.splitlines()[1:]:
        m = re.match(r"\s*(?:ROOT\s+)?%?(\S+)\s*=\s*(.+?)\s+([a-z][\w-]*)\(", line)
        if m is None or m.group(3) in skip:
            continue
        kind = re.search(r"kind=(k\w+)", line)
        src = re.search(r'op_name="([^"]*)"', line)
        rows.append({"name": m.group(1), "op": kind.group(1) if kind else m.group(3),
                     "shape": re.sub(r"\{[^}]*\}", "", m.group(2))[:80],
                     "bytes": sum(_array_bytes(m.group(2))),
                     "source": src.group(1)[-90:] if src else ""})
    return sorted(rows, key=lambda r: -r["bytes"])[:top]


def batch_step(config: Any, chips: int) -> int:
    """The smallest per-chip batch step that keeps every global batch valid: divisible
    by ``grad_accum_steps`` and by the batch-norm clip groups."""
    need = math.lcm(max(1, int(config.get("grad_accum_steps", 1) or 1)),
                    max(1, int(config.model.get("bn_group_clips", 0) or 0)))
    return need // math.gcd(need, chips)


def _check_batch(config: Any, chips: int, per_chip_batch: int) -> None:
    step = batch_step(config, chips)
    if per_chip_batch < 1 or per_chip_batch % step:
        raise ValueError(
            f"per-chip batch {per_chip_batch} on {chips} chips (global {per_chip_batch * chips}) "
            f"does not divide into grad_accum_steps={config.get('grad_accum_steps', 1)} "
            f"micro-batches of whole model.bn_group_clips={config.model.get('bn_group_clips', 0)} "
            f"groups: use a multiple of {step}")


def compile_step(config: Any, devices: Sequence[Any], per_chip_batch: int) -> StepReport:
    """Compiles the train step of `config` for `devices` at `per_chip_batch` clips/chip.

    The mesh is ``config.mesh_shape`` over `devices`, the model is built for their
    platform, and the batch is the pipeline's: uint8 (or float32) video and int32
    labels, split over the data axis.

    Raises:
      DoesNotFit: the compiler ran out of device memory.
      ValueError: a per-chip batch that does not divide (`batch_step`).
    """
    t0 = time.perf_counter()
    train_fn, state, batch, mesh = step_program(config, devices, per_chip_batch)
    lowered = train_fn.lower(state, batch)
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        oom = parse_oom(str(e))
        if oom is None:
            raise
        needed, available = oom
        detail = (f"the compiler needs {needed / 2 ** 30:.2f} GiB per chip, "
                  f"{available / 2 ** 30:.2f} GiB available" if needed and available
                  else str(e).strip().splitlines()[0])
        raise DoesNotFit(per_chip_batch, needed, available, detail) from None
    return report_of(compiled, per_chip_batch, mesh.devices.size, time.perf_counter() - t0,
                     lowered)


def step_program(config: Any, devices: Sequence[Any], per_chip_batch: int):
    """(jitted train step, abstract state, abstract batch, mesh) of `compile_step`."""
    mesh = parallel.create_mesh(config.get("mesh_shape"), devices=list(devices))
    chips = mesh.devices.size
    _check_batch(config, chips, per_chip_batch)
    d = config.data
    model = build_model(config.model, platform=parallel.mesh_platform(mesh))
    tx = optim.create_optimizer(config, _STEPS_PER_EPOCH)
    state, shardings = step_lib.abstract_train_state(
        model, tx, (1, d.num_frames, d.image_size, d.image_size, 3), mesh,
        [tuple(r) for r in config.get("partition_rules", ())], config.get("fsdp_min_size", 0))
    train_fn, _ = step_lib.compile_steps(
        mesh, shardings, learning_rate_fn=optim.lr_schedule(config, _STEPS_PER_EPOCH),
        label_smoothing=config.label_smoothing, grad_accum_steps=config.grad_accum_steps)
    n = per_chip_batch * chips
    batch_sh = parallel.data_sharding(mesh)
    video_dtype = jnp.uint8 if d.get("uint8_output", False) else jnp.float32
    batch = {"video": jax.ShapeDtypeStruct((n, d.num_frames, d.image_size, d.image_size, 3),
                                           video_dtype, sharding=batch_sh),
             "label": jax.ShapeDtypeStruct((n,), jnp.int32, sharding=batch_sh)}
    return train_fn, state, batch, mesh


def report_of(compiled: Any, per_chip_batch: int, chips: int, compile_s: float,
              lowered: Any = None) -> StepReport:
    """`StepReport` of a ``jax.stages.Compiled``.

    Compilers without a cost analysis (jax 0.10.2's CUDA plugin compiling without a
    GPU) get the FLOPs of the `lowered` program, divided over the `chips` (exact for
    data parallelism), and no HBM bytes (NaN): before fusion they mean nothing.
    """
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    if cost is None:
        if lowered is None:
            raise ValueError("this compiler has no cost analysis: pass the lowered program")
        cost = {"flops": unoptimised_flops(lowered) / chips, "bytes accessed": float("nan")}
    return StepReport(
        per_chip_batch=per_chip_batch, chips=chips, compile_s=compile_s,
        argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
        code_bytes=int(mem.generated_code_size_in_bytes), flops=float(cost.get("flops", 0.0)),
        hbm_bytes=float(cost.get("bytes accessed", 0.0)),
        collectives=collectives(compiled.as_text()))


def largest_batch(compile_at: Callable[[int], StepReport], step: int, capacity: float,
                  max_batch: int = 4096) -> tuple[int, dict[int, StepReport | DoesNotFit]]:
    """The largest per-chip batch (a multiple of `step`, at most `max_batch`) whose
    compile fits.

    ``compile_at(b)`` returns a `StepReport` or raises `DoesNotFit`.  Batches 1·step
    and 2·step give the memory per clip; the first guess is where that line meets
    `capacity`, checked with its neighbour; then doubling and bisection decide with
    real compiles, each batch compiled at most once.

    Returns:
      (largest batch that fits, 0 if none; every compile's result by batch).
    """
    tried: dict[int, StepReport | DoesNotFit] = {}
    top = max_batch // step * step

    def fits(b: int) -> bool:
        if b not in tried:
            try:
                tried[b] = compile_at(b)
            except DoesNotFit as e:
                tried[b] = e
        return isinstance(tried[b], StepReport)

    if not fits(step):
        return 0, tried
    if top < 2 * step or not fits(2 * step):
        return step, tried
    one, two = tried[step], tried[2 * step]
    per_step = max(1, two.hbm_total - one.hbm_total)
    lo, hi = 2 * step, None                        # lo fits; hi, once known, does not
    guess = min(top, max(lo + step, step * (1 + int((capacity - one.hbm_total) // per_step))))
    if guess > lo:
        lo, hi = (guess, None) if fits(guess) else (lo, guess)
        probe = lo + step if hi is None else hi - step
        if lo < probe <= top and (hi is None or probe < hi):
            lo, hi = (probe, hi) if fits(probe) else (lo, probe)
    while hi is None:
        if lo >= top:
            return lo, tried
        nxt = min(2 * lo, top)
        lo, hi = (nxt, None) if fits(nxt) else (lo, nxt)
    while hi - lo > step:
        mid = lo + (hi - lo) // (2 * step) * step
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, tried


def compile_or_explain(train_fn: Any, state: Any, batch: Any, config: Any, mesh: Any,
                       compile_at: Callable[[Any, int], StepReport] | None = None) -> Any:
    """``train_fn.lower(state, batch).compile()``; a compile that runs out of device
    memory raises `DoesNotFit` with what to do instead (`explain_oom`), not XLA's dump.

    ``compile_at(config, per_chip_batch)`` compiles a variant (default:
    `compile_step` over the mesh's devices; tests pass a fake).
    """
    try:
        return train_fn.lower(state, batch).compile()
    except jax.errors.JaxRuntimeError as e:
        oom = parse_oom(str(e))
        if oom is None:
            raise
    devices = list(mesh.devices.flat)
    per_chip = int(config.global_batch_size) // len(devices)
    raise explain_oom(config, per_chip, *oom, kind=devices[0].device_kind,
                      compile_at=compile_at or (lambda c, b: compile_step(c, devices, b)))


def explain_oom(config: Any, per_chip_batch: int, needed: float | None,
                available: float | None, kind: str,
                compile_at: Callable[[Any, int], StepReport]) -> DoesNotFit:
    """The one-line answer to a step that does not fit: the per-chip batch, the bytes
    it needs, the chip's capacity, the largest per-chip batch that fits (searched as
    ``python -m rsa_jax.aot --fit`` does, by compiling only) and the first
    ``model.remat`` setting, if any, with which the requested batch fits."""
    from rsa_jax import chips
    from rsa_jax.models.resnet_tsn import REMAT
    chip = chips.chip_for(kind)
    capacity = available or (chip.hbm_bytes if chip else None)
    step = batch_step(config, int(config.global_batch_size) // per_chip_batch)
    best, _ = largest_batch(lambda b: compile_at(config, b), step, capacity or 0,
                            max_batch=per_chip_batch - 1)
    current = str(config.model.get("remat", "none"))
    fits_with = None
    for remat in REMAT[REMAT.index(current) + 1:] if current in REMAT else ():
        variant = config.copy_and_resolve_references()
        with variant.unlocked():
            variant.model.remat = remat
        try:
            compile_at(variant, per_chip_batch)
        except DoesNotFit:
            continue
        fits_with = remat
        break

    def size(x):
        return "?" if x is None else f"{x / 2 ** 30:.2f} GiB"
    where = f"{chip.name} chip" if chip else f"{kind!r} device"
    advice = [f"the largest per-chip batch that fits is {best}" if best else
              "no per-chip batch fits"]
    if fits_with:
        advice.append(f"--config.model.remat={fits_with} fits batch {per_chip_batch}")
    return DoesNotFit(per_chip_batch, needed, available,
                      f"the train step needs {size(needed)} of device memory per chip; the "
                      f"{where} has {size(capacity)}: " + "; ".join(advice)
                      + " (python -m rsa_jax.aot --fit)")
