"""How a bundle is opened: ArgsGenerator.from_bundle's keywords as one value, checked once. Devices become Device
values here, at the entry, and travel as such."""

from __future__ import annotations

from dataclasses import dataclass

from .backend import Device, EngineOptions
from .engines import check_engine
from .errors import GenerationError
from .loops import resolve_loop

CHOICES = ("auto", "host", "device")


@dataclass(frozen=True)
class RuntimeOptions:
    """`device` runs both models unless `lm_device` / `rm_device` say otherwise. `backend`: the engine ("onnxruntime",
    "onnxruntime-trt" or "tensorrt"); `threads`: ONNX Runtime's intra-op threads; `cuda_graph`: capture decode steps
    (ORT on CUDA, static-cache bundles); `choice`: where logit + w·reward is combined and chosen ("host", "device" or
    "auto"); `loop`: "cpp" | "python" (default: args_runtime.LOOP_IMPL)."""

    device: Device | str = "cpu"
    lm_device: Device | str | None = None
    rm_device: Device | str | None = None
    backend: str = "onnxruntime"
    threads: int | None = None
    verify_checksums: bool = True
    loop: str | None = None
    cuda_graph: bool = False
    choice: str = "auto"

    def __post_init__(self) -> None:
        device = Device.parse(self.device)
        fix = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731  (frozen: set once, here)
        fix("device", device)
        fix("lm_device", Device.parse(self.lm_device) if self.lm_device is not None else device)
        fix("rm_device", Device.parse(self.rm_device) if self.rm_device is not None else device)
        fix("loop", resolve_loop(self.loop))
        check_engine(self.backend)
        if self.choice not in CHOICES:
            raise GenerationError(f"choice={self.choice!r} is not one of {CHOICES}")
        if self.threads is not None and (not isinstance(self.threads, int) or isinstance(self.threads, bool) or self.threads < 1):
            raise GenerationError(f"threads={self.threads!r} must be None (the engine's default) or an integer >= 1")

    @property
    def engine(self) -> EngineOptions:
        # With CUDA graphs both graphs keep fixed addresses, even if ORT refuses one of them its graph: the RM binds the
        # LM's top-k ids as they are.
        return EngineOptions(threads=self.threads, cuda_graph=self.cuda_graph, fixed_addresses=True if self.cuda_graph else None)
