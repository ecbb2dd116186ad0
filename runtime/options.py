"""How a bundle is opened: ArgsGenerator.from_bundle's keywords as one value, checked once. Devices become Device
values here, at the entry, and travel as such."""

from __future__ import annotations

from dataclasses import dataclass, fields
from numbers import Integral

from .backend import Device, EngineOptions
from .engines import check_engine
from .errors import GenerationError
from .loops import LOOPS, resolve_loop

CHOICES = ("auto", "host", "device")
SHARED_THREADS_HELP = ("run every ONNX Runtime session of this process on one thread pool whose threads wait spinning "
                       "between runs (default on in the command-line tools: 13-15 %% faster per token on a 2-core CPU); "
                       "--no-shared-threads gives each graph its own pool that sleeps between runs, as the Python API does by default")
MAX_THREADS = 1024  # ONNX Runtime takes an int32 and starts that many threads per session


@dataclass(frozen=True)
class RuntimeOptions:
    """`device` runs both models unless `lm_device` / `rm_device` say otherwise. `backend`: the engine ("onnxruntime",
    "onnxruntime-trt" or "tensorrt"); `threads`: ONNX Runtime's intra-op threads; `shared_threads`: every ONNX Runtime
    session of this process on one thread pool (faster on the CPU, but process-wide: see claim_shared_pool);
    `cuda_graph`: capture decode steps (ORT on CUDA, static-cache bundles); `choice`: where logit + w·reward is combined
    and chosen ("host", "device" or "auto"); `loop`: "cpp" | "python" (default: args_runtime.LOOP_IMPL)."""

    device: Device | str = "cpu"
    lm_device: Device | str | None = None
    rm_device: Device | str | None = None
    backend: str = "onnxruntime"
    threads: int | None = None
    shared_threads: bool = False
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
        if self.loop is not None and (not isinstance(self.loop, str) or self.loop not in LOOPS):
            raise GenerationError(f"loop={self.loop!r} is not one of {LOOPS} (or None: the C++ loop when it is built)")
        fix("loop", resolve_loop(self.loop))
        check_engine(self.backend)
        if not isinstance(self.choice, str) or self.choice not in CHOICES:
            raise GenerationError(f"choice={self.choice!r} is not one of {CHOICES}")
        threads = self.threads
        if threads is not None and (not isinstance(threads, Integral) or isinstance(threads, bool) or not 1 <= threads <= MAX_THREADS):
            raise GenerationError(f"threads={threads!r} must be None (the engine's default) or an integer from 1 to {MAX_THREADS}")
        fix("threads", None if threads is None else int(threads))
        for name in ("verify_checksums", "cuda_graph", "shared_threads"):
            if not isinstance(getattr(self, name), bool):
                raise GenerationError(f"{name}={getattr(self, name)!r} must be True or False")

    @staticmethod
    def from_keywords(device: Device | str, keywords: dict) -> "RuntimeOptions":
        """from_bundle's keywords as options; an unknown keyword is a TypeError naming from_bundle's keywords."""
        known = [f.name for f in fields(RuntimeOptions)]
        unknown = [name for name in keywords if name not in known]
        if unknown:
            raise TypeError(f"from_bundle() got an unexpected keyword argument {unknown[0]!r}; its keywords are {', '.join(known)}")
        return RuntimeOptions(device=device, **keywords)

    @property
    def engine(self) -> EngineOptions:
        # With CUDA graphs both graphs keep fixed addresses, even if ORT refuses one of them its graph: the RM binds the
        # LM's top-k ids as they are.
        return EngineOptions(threads=self.threads, shared_threads=self.shared_threads, cuda_graph=self.cuda_graph,
                             fixed_addresses=True if self.cuda_graph else None)
