"""Atomic checkpoints and exact resume.

One checkpoint is the folder ``<train.output_dir>/checkpoints/step_<N>/`` (N = steps done):

    model.safetensors   policy weights, HF names (tied weights once; aliases in the metadata)
    optimizer.pt        single backend: optimizer moments, LR-scheduler position
    deepspeed/          deepspeed backend: DeepSpeed's own checkpoint (ZeRO-sharded optimizer
                        states, one file per rank, and the scheduler)
    rng.pt              python ``random``, torch CPU, torch CUDA (once initialised), numpy;
                        ``rng_rank<r>.pt`` for the other ranks of a distributed run
    reward.pt           the reward module's ``state_dict()`` (tensors, numbers, strings, lists, dicts)
    reward_state/<name> reward components with a training backend of their own (PRIME's PRM):
                        that backend's state, laid out like the policy's
    critic/             PPO's critic backend, laid out like the policy's
    extra.pt            what the caller adds (the trainer: the run summary so far, the monitors' state)
    trainer_state.json  step, PromptSampler state, format version
    config.yaml         the config of the run that wrote it
    COMPLETE            written last; a folder without it is not a checkpoint

Under data parallelism every rank takes part (the backend's state is collective), rank 0
writes the shared files, renames and prunes; the run folder must be on a file system all
ranks see (as DeepSpeed's own checkpoints require).  ZeRO-sharded states resume only on the
same number of ranks, which ``load_checkpoint`` checks.

Atomicity: every file is written and fsync'ed inside ``checkpoints/.tmp-step_<N>-*``, then the
folder is renamed to its final name. A crash or SIGKILL at any point leaves the earlier
checkpoints intact and at worst a ``.tmp-*`` folder, which ``latest_checkpoint`` ignores and
the next save deletes. Pruned checkpoints are renamed to ``.trash-*`` before deletion, so no
half-deleted folder ever keeps a ``step_<N>`` name. Exports (``final/``, ``best/``: the backends'
``save_pretrained``) are written the same way, by ``atomic_folder``.

Exactness: with ``rollout.backend=hf`` sampling draws from torch's global RNG, so restoring the
RNG states (after every component is built) makes a resumed run repeat the uninterrupted one
bit for bit on CPU (tested). With ``rollout.backend=vllm`` the engine is seeded once when it
starts (vLLM's ``set_random_seed``); a resumed run starts it with ``train.seed + step`` so it
does not replay the seed of step 0, and the global RNG states are restored after that. This
vLLM version samples requests that carry no seed of their own from torch's global generators
(CPU and CUDA), which are restored: a tiny-model run on CPU with float32 weights resumed exactly
(checked by hand, not in the tests). Not restored is what the engine keeps inside (scheduler
queues, per-request generators, the prefix cache, which every weight update resets anyway), so
for vLLM bitwise equal rollouts are likely on CPU but not promised (GPU kernels, bf16 weights).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterator

import torch
import yaml

from rlkit.config import config_to_dict, redacted
from rlkit.rng import rng_state, set_rng_state

MARKER = "COMPLETE"
WEIGHTS = "model.safetensors"
FORMAT = 1
IGNORED_CHANGES = ("train.resume", "train.output_dir")


class CheckpointError(ValueError):
    """A missing, incomplete or unusable checkpoint; the message names the path."""


# ---------------------------------------------------------------- finding checkpoints

def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run folder as ``(step, path)``, oldest first."""
    root = Path(run_dir) / "checkpoints"
    found = []
    for path in root.glob("step_*") if root.is_dir() else ():
        step = path.name[len("step_"):]
        if step.isdigit() and (path / MARKER).is_file():
            found.append((int(step), path))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def checkpoint_step(path: str | Path) -> int:
    """The step a checkpoint was written at (CheckpointError when it is missing or incomplete)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not (path / MARKER).is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {MARKER} file)")
    return int(json.loads((path / "trainer_state.json").read_text())["step"])


def start_point(cfg, is_main: bool = True) -> tuple[Path | None, int]:
    """Where a run starts, from ``train.resume``: ``(checkpoint, step)`` or ``(None, 0)``.

    ``never``, or ``auto`` without a checkpoint in ``train.output_dir``: a fresh run; an old
    ``checkpoints/`` folder there is moved aside to ``checkpoints.<time>/`` (as metrics.jsonl
    is) so that ``auto`` never picks up a checkpoint of an earlier, unrelated run. A path names
    a checkpoint folder or a run folder (its latest checkpoint). Only the main rank moves
    folders (``is_main``); the others only read.
    """
    run_dir, resume = Path(cfg.train.output_dir), cfg.train.resume
    path = None
    if resume == "auto":
        path = latest_checkpoint(run_dir)
    elif resume != "never":
        path = Path(resume)
        if not (path / MARKER).is_file() and latest_checkpoint(path) is not None:
            path = latest_checkpoint(path)
    if path is None:
        if is_main:
            _set_aside(run_dir / "checkpoints")
        return None, 0
    try:
        step = checkpoint_step(path)
    except CheckpointError as exc:
        raise CheckpointError(f"train.resume={resume}: {exc}") from None
    if step > cfg.train.steps:
        raise CheckpointError(f"train.resume={resume}: {path} is at step {step}, past "
                              f"train.steps={cfg.train.steps}; raise train.steps")
    later = [p for s, p in list_checkpoints(run_dir) if s > step]
    if later:
        raise CheckpointError(f"train.resume={resume}: {run_dir} already holds later checkpoints "
                              f"({', '.join(p.name for p in later)}); resume into another "
                              f"train.output_dir or move them away")
    return path, step


def _set_aside(folder: Path) -> None:
    """``checkpoints`` -> ``checkpoints.<mtime>`` (a random suffix if that exists too)."""
    if folder.is_dir():
        target = folder.with_name(f"{folder.name}.{int(folder.stat().st_mtime)}")
        folder.rename(target.with_name(f"{target.name}-{uuid.uuid4().hex[:6]}") if target.exists() else target)


def should_save(cfg, step: int) -> bool:
    """Every ``train.save_every`` steps (0: never) and always at the last step."""
    every = cfg.train.save_every
    return step == cfg.train.steps or (every > 0 and step % every == 0)


# ---------------------------------------------------------------- saving

def save_checkpoint(run_dir: str | Path, step: int, backend, sampler, reward, cfg,
                    extra: dict | None = None, critic=None) -> Path:
    """Write ``run_dir/checkpoints/step_<step>`` atomically, then keep the newest
    ``train.keep_checkpoints`` (0 = all). ``extra`` is any torch-saveable dict; a ``critic``
    backend (PPO) saves its own state into ``critic/``.

    Every rank of a distributed run calls this at the same step."""
    rng = rng_state()  # first: nothing below may move the RNGs before they are recorded
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step}"
    tmp = None
    if backend.is_main:
        root.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(root)
        tmp = root / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        if critic is not None:
            (tmp / "critic").mkdir()
    tmp = Path(backend.broadcast_object(str(tmp) if tmp else None))
    try:
        backend.save_state(tmp)  # collective: every rank writes its shard
        if critic is not None:
            critic.save_state(tmp / "critic")
        reward.save_state(tmp / "reward_state")  # modules with a backend of their own (PRIME's PRM)
        write_file(tmp / rng_file(backend.rank), rng)
        if backend.is_main:
            write_file(tmp / "reward.pt", reward.state_dict())
            write_file(tmp / "extra.pt", extra or {})
            meta = {"format": FORMAT, "step": step, "sampler": sampler.state_dict(), "time": time.time(),
                    "backend": cfg.backend.name, "world_size": backend.world_size}
            write_file(tmp / "trainer_state.json", json.dumps(meta, indent=2))
            write_file(tmp / "config.yaml", yaml.safe_dump(redacted(config_to_dict(cfg)), sort_keys=False))
        fsync_tree(tmp)  # what the backends wrote themselves (DeepSpeed's shards, critic/, reward_state/)
        backend.barrier()  # every rank's files are on disk before the marker says so
        if backend.is_main:
            write_file(tmp / MARKER, f"{step}\n")
            _fsync(tmp)
            swap_in(tmp, final)  # the same step saved again: exchanged with the old one
    except BaseException:
        if backend.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if backend.is_main:
        prune(run_dir, cfg.train.keep_checkpoints, protect=final)
    backend.barrier()
    return final


def rng_file(rank: int) -> str:
    return "rng.pt" if rank == 0 else f"rng_rank{rank}.pt"


def prune(run_dir: str | Path, keep: int, protect: Path | None = None) -> None:
    """Delete all but the ``keep`` newest complete checkpoints (``keep=0``: keep all)."""
    if keep <= 0:
        return
    for _, path in list_checkpoints(run_dir)[:-keep]:
        if path != protect:
            _discard(path)


def _discard(path: Path) -> None:
    """Rename to ``.trash-*`` (atomic) and delete, so no half-deleted folder keeps its name."""
    trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_leftovers(root: Path) -> None:
    """Temp and trash folders of an interrupted save or prune."""
    for path in root.iterdir():
        if path.name.startswith((".tmp-", ".trash-")):
            shutil.rmtree(path, ignore_errors=True)


def fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder``, then every folder below it (deepest first) and itself."""
    for dirpath, _, filenames in os.walk(folder, topdown=False):
        for name in filenames:
            _fsync(Path(dirpath, name))
        _fsync(Path(dirpath))


def swap_in(tmp: Path, final: Path) -> None:
    """Rename the finished folder ``tmp`` to ``final``.  An existing ``final`` is exchanged with
    ``tmp`` in one step where the system can (Linux ``renameat2(RENAME_EXCHANGE)``), so a crash
    leaves ``final`` old or new, never missing; elsewhere it is renamed to ``.trash-*`` first
    (a crash between the two renames leaves it whole under that name).  Then deleted."""
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        if _exchange(tmp, final):  # tmp now holds the old folder
            _fsync(final.parent)
            shutil.rmtree(tmp, ignore_errors=True)
            return
        trash = final.with_name(f".trash-{final.name}-{uuid.uuid4().hex[:8]}")
        os.replace(final, trash)
        os.replace(tmp, final)
        _fsync(final.parent)
        shutil.rmtree(trash, ignore_errors=True)
        return
    os.replace(tmp, final)
    _fsync(final.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2 with RENAME_EXCHANGE); False where unsupported."""
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Write the folder ``path`` all at once, as checkpoints are (exports: ``final/``, ``best/``).

    Yields an empty sibling ``.tmp-<name>-<id>`` to write into; when the block ends, every file
    in it is fsynced and it replaces ``path`` (``swap_in``).  If the block raises, it is
    deleted and ``path`` is left as it was; a process killed in the block leaves only the
    hidden ``.tmp-*`` folder, which the next write of the same ``path`` deletes.
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    leftover = re.compile(rf"\.(tmp|trash)-{re.escape(path.name)}-[0-9a-f]{{8}}")
    for old in path.parent.iterdir():
        if leftover.fullmatch(old.name):
            shutil.rmtree(old, ignore_errors=True)
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some platforms cannot open or sync a directory
        pass


def write_file(path: Path, obj) -> None:
    """Text as is, anything else with torch.save; flushed to disk before returning."""
    if isinstance(obj, str):
        path.write_text(obj)
    else:
        torch.save(obj, path)
    _fsync(path)


def save_weights(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors file of ``tensors``; names that share one tensor (tied weights) are stored
    once and recorded as aliases in the file's metadata."""
    from safetensors.torch import save_file

    unique, aliases, seen = {}, {}, {}
    for name, t in tensors.items():
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if key in seen and t.numel():
            aliases[name] = seen[key]
            continue
        seen[key] = name
        unique[name] = t.detach().cpu().contiguous()
    save_file(unique, str(path), metadata={"aliases": json.dumps(aliases)})
    _fsync(path)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Inverse of ``save_weights`` (aliases filled back in)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        tensors = {name: fh.get_tensor(name) for name in fh.keys()}
        aliases = json.loads((fh.metadata() or {}).get("aliases", "{}"))
    tensors.update({alias: tensors[source] for alias, source in aliases.items()})
    return tensors


# ---------------------------------------------------------------- loading

def load_checkpoint(path: str | Path, backend, sampler, reward, critic=None) -> int:
    """Restore weights, optimizer, scheduler, sampler, reward state, the critic's state (PPO)
    and RNG states; the step."""
    path = Path(path)
    step = checkpoint_step(path)
    meta = json.loads((path / "trainer_state.json").read_text())
    saved_world = int(meta.get("world_size", 1))
    if (path / "deepspeed").is_dir() and saved_world != backend.world_size:
        raise CheckpointError(f"{path}: written by {saved_world} DeepSpeed ranks; its ZeRO-sharded optimizer "
                              f"states load only on {saved_world} ranks, not {backend.world_size}")
    rng_path = path / rng_file(backend.rank)
    parts = (
        ("weights and optimizer", lambda: backend.load_state(path)),
        ("data position", lambda: sampler.load_state_dict(meta["sampler"])),
        ("reward state", lambda: reward.load_state_dict(load_torch(path / "reward.pt"))),
        ("reward modules' models (reward_state/)", lambda: reward.load_state(path / "reward_state")),
        *((("critic (critic/)", lambda: critic.load_state(path / "critic")),) if critic is not None else ()),
        ("RNG states", lambda: set_rng_state(load_torch(rng_path if rng_path.exists() else path / "rng.pt"))),
    )
    for what, restore in parts:
        try:
            restore()
        except Exception as exc:  # noqa: BLE001 - reported with the path and the part
            raise CheckpointError(f"{path}: cannot restore the {what}: {exc}") from exc
    return step


def read_extra(path: str | Path) -> dict:
    """The ``extra`` dict a checkpoint was saved with."""
    return load_torch(Path(path) / "extra.pt")


def load_torch(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def resume(path: Path, cfg, backend, sampler, reward, rollout, logger, critic=None) -> dict:
    """Load a checkpoint into a built run, push the weights into the rollout engine, note the
    resume in the metrics; returns the run summary saved with it."""
    step = load_checkpoint(path, backend, sampler, reward, critic)
    rollout.update_weights(backend.sync_weights())
    changes = config_changes(path / "config.yaml", cfg)
    if logger is not None:
        logger.log(step, {"checkpoint": str(path), "config_changes": changes}, kind="resume")
    return dict(read_extra(path).get("summary", {}))


def config_changes(saved_yaml: Path, cfg) -> list[str]:
    """``key: old -> new`` for every config value that differs from the saved config."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    old = flat(yaml.safe_load(saved_yaml.read_text()) or {})
    new = flat(redacted(config_to_dict(cfg)))  # secrets are saved redacted: compared (and shown) so
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k) and k not in IGNORED_CHANGES]
