"""A gloo weight-transfer backend for vLLM servers on machines without NCCL (CPU).

vLLM's weight-transfer API (``vllm.distributed.weight_transfer``) moves a trainer's weights
into a running server: the trainer opens a process group with the server's workers, tells
them over HTTP what is coming (``/init_weight_transfer_engine``, ``/start_weight_update``,
``/update_weights``, ``/finish_weight_update``) and broadcasts the tensors.  Its built-in
transports are CUDA-only (NCCL, CUDA IPC).  This module adds ``rlkit_gloo`` with the same
handshake over a gloo group, so server mode runs - and is tested - on CPU:

* the sender packs consecutive tensors into byte buckets of ``bucket_bytes`` (one broadcast
  per bucket, not one per parameter); both sides derive the same buckets from the metadata;
* the worker loads what it receives through vLLM's layerwise reload (``start`` initialises
  it, ``finish`` finalises it), as the NCCL engine does;
* the group has a timeout, so a server that dies mid-transfer raises instead of hanging.

The worker half must be registered inside the server's processes: ``register`` is exposed
as a ``vllm.general_plugins`` entry point (pyproject.toml), which vLLM calls in every process
it starts.  The trainer half is used by ``rlkit.rollout.server``.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, ClassVar, Iterator

import torch
from vllm.distributed.weight_transfer.base import (
    TrainerInitInfo,
    TrainerWeightTransferEngine,
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)

BACKEND = "rlkit_gloo"
DEFAULT_BUCKET_BYTES = 64 << 20


def plan_buckets(nbytes: list[int], bucket_bytes: int) -> list[list[int]]:
    """Group consecutive tensor indices so each bucket holds at most ``bucket_bytes``
    (a tensor larger than that travels alone).  Sender and receivers both call this."""
    buckets: list[list[int]] = []
    current: list[int] = []
    size = 0
    for index, n in enumerate(nbytes):
        if current and size + n > bucket_bytes:
            buckets.append(current)
            current, size = [], 0
        current.append(index)
        size += n
    if current:
        buckets.append(current)
    return buckets


def _nbytes(dtype: torch.dtype, shape: list[int]) -> int:
    numel = 1
    for dim in shape:
        numel *= int(dim)
    return numel * torch.empty((), dtype=dtype).element_size()


def _open_group(host: str, port: int, rank: int, world_size: int, timeout_s: float):
    from vllm.distributed.utils import stateless_init_torch_distributed_process_group

    return stateless_init_torch_distributed_process_group(
        host, port, rank, world_size, "gloo", timeout=timedelta(seconds=timeout_s))


@dataclass
class GlooWeightTransferInitInfo(WeightTransferInitInfo):
    """What a server worker needs to join the trainer's group (worker ranks follow rank 0)."""

    master_address: str
    master_port: int
    world_size: int
    rank_offset: int = 1
    bucket_bytes: int = DEFAULT_BUCKET_BYTES
    timeout_s: float = 300.0


@dataclass
class GlooWeightTransferUpdateInfo(WeightTransferUpdateInfo):
    """One round: names, dtypes and shapes of the tensors, in broadcast order."""

    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]

    def __post_init__(self):
        if not len(self.names) == len(self.dtype_names) == len(self.shapes):
            raise ValueError(f"names, dtype_names and shapes differ in length: {len(self.names)}, "
                             f"{len(self.dtype_names)}, {len(self.shapes)}")


class GlooWeightTransferEngine(WeightTransferEngine[GlooWeightTransferInitInfo,
                                                    GlooWeightTransferUpdateInfo]):
    """Server side: receive buckets from rank 0 and load them with layerwise reload."""

    init_info_cls = GlooWeightTransferInitInfo
    update_info_cls = GlooWeightTransferUpdateInfo

    def __init__(self, config, vllm_config, device, model) -> None:
        super().__init__(config, vllm_config, device, model)
        self.group = None
        self.bucket_bytes = DEFAULT_BUCKET_BYTES

    def init_transfer_engine(self, init_info: GlooWeightTransferInitInfo) -> None:
        parallel = self.parallel_config
        worker_rank = parallel.data_parallel_index * parallel.world_size + parallel.rank
        self.bucket_bytes = init_info.bucket_bytes
        self.group = _open_group(init_info.master_address, init_info.master_port,
                                 init_info.rank_offset + worker_rank, init_info.world_size,
                                 init_info.timeout_s)

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)

    def update_weights(self, update_info: dict[str, Any]) -> None:
        # The base class synchronises the accelerator afterwards; gloo has finished by then.
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: GlooWeightTransferUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError("rlkit_gloo weight transfer is not initialised: call "
                               "/init_weight_transfer_engine first")
        self.model.load_weights(self._received(update_info))

    def _received(self, info: GlooWeightTransferUpdateInfo) -> Iterator[tuple[str, torch.Tensor]]:
        dtypes = [getattr(torch, name) for name in info.dtype_names]
        sizes = [_nbytes(d, s) for d, s in zip(dtypes, info.shapes)]
        for bucket in plan_buckets(sizes, self.bucket_bytes):
            buffer = torch.empty(sum(sizes[i] for i in bucket), dtype=torch.uint8)
            self.group.broadcast(buffer, 0).wait()
            offset = 0
            for i in bucket:
                raw = buffer[offset:offset + sizes[i]].clone()  # aligned storage for the dtype view
                offset += sizes[i]
                yield info.names[i], raw.view(dtypes[i]).reshape(info.shapes[i]).to(self.device)

    def shutdown(self) -> None:
        self.group = None


@dataclass
class GlooTrainerInitInfo(TrainerInitInfo):
    """Trainer side: rank 0 opens the group at ``master_address:master_port``."""

    backend: ClassVar[str] = BACKEND

    master_address: str
    master_port: int
    world_size: int               # 1 trainer sender + the server's workers (TP x DP)
    bucket_bytes: int = DEFAULT_BUCKET_BYTES
    timeout_s: float = 300.0


class GlooTrainerWeightTransferEngine(TrainerWeightTransferEngine[GlooTrainerInitInfo]):
    """Trainer side: drives the HTTP handshake and broadcasts packed buckets from rank 0."""

    init_info_cls = GlooTrainerInitInfo

    def __init__(self, *, client, source, is_sender: bool = True,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
        super().__init__(client=client, source=source, is_sender=is_sender)
        self.bucket_bytes = bucket_bytes
        self.group = None

    @classmethod
    def trainer_init(cls, init_info: GlooTrainerInitInfo, *, client, source=None):
        if source is None:
            raise ValueError("the rlkit_gloo trainer engine needs a WeightSource")
        engine = cls(client=client, source=source, is_sender=init_info.is_sender,
                     bucket_bytes=init_info.bucket_bytes)
        if not engine.is_sender:
            return engine
        worker_info = GlooWeightTransferInitInfo(
            master_address=init_info.master_address, master_port=init_info.master_port,
            world_size=init_info.world_size, bucket_bytes=init_info.bucket_bytes,
            timeout_s=init_info.timeout_s)
        # The workers block in the rendezvous until rank 0 joins: ask them from a side thread.
        with ThreadPoolExecutor(max_workers=1) as pool:
            joined = pool.submit(client.init_weight_transfer_engine, asdict(worker_info))
            engine.group = _open_group(init_info.master_address, init_info.master_port, 0,
                                       init_info.world_size, init_info.timeout_s)
            joined.result()
        return engine

    def send_weights(self) -> None:
        source = self.source
        meta = source.metadata()
        if not self.is_sender:
            for _ in source:  # stay in any gather collective the source runs
                pass
            return
        info = GlooWeightTransferUpdateInfo(
            names=[m.name for m in meta],
            dtype_names=[str(m.dtype).removeprefix("torch.") for m in meta],
            shapes=[list(m.shape) for m in meta])
        tensors = list(source)
        for (name, tensor), m in zip(tensors, meta):
            if name != m.name or tensor.dtype != m.dtype or tuple(tensor.shape) != tuple(m.shape):
                raise ValueError(f"weight source disagrees with its metadata at {name!r}")
        self.client.start_weight_update()
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            received = pool.submit(self.client.update_weights, asdict(info))
            sizes = [t.numel() * t.element_size() for _, t in tensors]
            for bucket in plan_buckets(sizes, self.bucket_bytes):
                if received.done():  # the server refused before the broadcast: say why
                    received.result()
                flat = torch.cat([tensors[i][1].detach().contiguous().view(-1).view(torch.uint8)
                                  for i in bucket])
                self.group.broadcast(flat, 0).wait()
            received.result()
        finally:
            pool.shutdown(wait=False)  # a failed broadcast leaves the request thread blocked
        self.client.finish_weight_update()

    def shutdown(self) -> None:
        self.group = None


def register() -> None:
    """vLLM plugin hook: make ``rlkit_gloo`` known to both weight-transfer factories.

    vLLM calls general plugins once per process, possibly several times; registering twice
    raises in vLLM's factory, so an existing entry is left alone.
    """
    from vllm.distributed.weight_transfer.factory import (
        WeightTransferEngineFactory,
        WeightTransferTrainerFactory,
    )

    if BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(BACKEND, GlooWeightTransferEngine)
    if BACKEND not in WeightTransferTrainerFactory._registry:
        WeightTransferTrainerFactory.register_engine(BACKEND, GlooTrainerWeightTransferEngine)
