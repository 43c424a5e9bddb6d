"""What a run on a large task (CIFAR-10, ImageNet) needs before it can start here: its data, verified,
and a GPU; and about how many GPU hours it would take.

The estimate is arithmetic on stated assumptions, not a measurement:

    training FLOPs = forward MACs per image of the dense architecture x 2 FLOPs per MAC
                     x 3 (forward + backward) x images (epochs x training-set size)
                     x the method's overhead over dense
    seconds        = images / min(compute-bound images/s, data-loading images/s)

Compute-bound images/s = ASSUMED sustained FLOP/s / (FLOPs per image x overhead). The sustained FLOP/s
and the data-loading rate are per task (`THROUGHPUT`), as fractions of an NVIDIA A100's 312 TFLOP/s
dense bf16 peak; the method overheads (`METHOD_OVERHEAD`) are assumptions too. Evaluation passes are
not counted. Forward MACs come from `prunebench.metrics.count_flops` on the task's architecture
(`DENSE_MACS` holds the values it gave, so planning builds no network)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

#: Dense bf16 tensor-core peak of an NVIDIA A100 (SXM), FLOP/s: the reference the assumptions scale.
A100_BF16_PEAK = 312e12


@dataclass(frozen=True)
class Throughput:
    """ASSUMED sustained training throughput of a task on an A100-class GPU."""

    peak_fraction: float  # of A100_BF16_PEAK, sustained over a whole run
    #: Images per second the input pipeline delivers (streamed data: JPEG decoding on CPU workers);
    #: None for data resident on the device.
    loader_images_per_second: float | None
    why: str

    @property
    def flops_per_second(self) -> float:
        return self.peak_fraction * A100_BF16_PEAK


#: Per task: the ASSUMED sustained throughput (not measured on any machine).
THROUGHPUT: dict[str, Throughput] = {
    "vgg-cifar10": Throughput(0.10, None, "32x32 images at batch 128 keep the convolutions small, far from peak"),
    "resnet56-cifar10": Throughput(0.05, None, "16-64 channel 3x3 convolutions on 32x32 images: small kernels"),
    "alexnet-imagenet": Throughput(0.30, 2_500.0, "large convolutions and fc layers; the images are decoded from "
                                   "JPEG and cropped on up to 8 DataLoader workers"),
}
#: A task not listed above: a cautious default.
DEFAULT_THROUGHPUT = Throughput(0.10, None, "no task-specific assumption")

#: Training cost of each method relative to dense at the same steps (ASSUMED; the regression baseline's
#: CPU "steps/s vs dense" on LeNet-300-100 is no GPU measurement). dynthresh: erf surrogate and one
#: threshold per weight (twice the parameters); sparse-vd and l0: a second weight-sized parameter and
#: noise in every forward pass; srinivas: a gate per weight and a Bernoulli draw per step (1.75x dense
#: on LeNet-300-100, one CPU thread, 10,000 steps); sensitivity: its loss-gradient reading, one elementwise
#: pass (the AlexNet default); an unknown method: the top of the 1-2.5x range.
METHOD_OVERHEAD: dict[str, float] = {"dense": 1.0, "dynthresh": 1.5, "sparse-vd": 2.0, "l0": 2.0, "dst": 1.3,
                                     "ltp": 1.3, "dns": 1.2, "magnitude": 1.1, "autoprune": 1.2, "srinivas": 1.8,
                                     "sensitivity": 1.2}
UNKNOWN_OVERHEAD = 2.5

#: Forward MACs per image of the dense architecture, from `count_flops` on the task's network with one
#: example (vgg-cifar10 and resnet56-cifar10 3x32x32, alexnet-imagenet 3x227x227).
DENSE_MACS: dict[str, int] = {"vgg-cifar10": 313_463_808, "resnet56-cifar10": 125_485_696,
                              "alexnet-imagenet": 724_406_816}
#: Input shape of one example per task, for tasks not in DENSE_MACS.
INPUT_SHAPES: dict[str, tuple[int, ...]] = {"vgg-cifar10": (3, 32, 32), "resnet56-cifar10": (3, 32, 32),
                                            "alexnet-imagenet": (3, 227, 227)}

#: The dataset each large task trains on; tasks not listed (xor, MNIST) fetch or generate their data.
TASK_DATA: dict[str, str] = {"vgg-cifar10": "cifar10", "resnet56-cifar10": "cifar10",
                             "alexnet-imagenet": "imagenet"}


@cache
def dense_macs(task: str) -> int:
    """Forward MACs per image of the task's dense architecture (DENSE_MACS, else `count_flops` on it)."""
    if task in DENSE_MACS:
        return DENSE_MACS[task]
    import torch

    from prunebench.metrics import count_flops
    from prunebench.registry import get_task

    if task not in INPUT_SHAPES:
        raise KeyError(f"no input shape known for task {task!r}")
    return count_flops(get_task(task).architecture(), torch.zeros(INPUT_SHAPES[task])).dense


@dataclass(frozen=True)
class GpuEstimate:
    """GPU hours of one training run on an A100-class GPU, from the stated assumptions."""

    task: str
    method: str
    macs_per_image: int
    epochs: float
    train_size: int
    overhead: float
    throughput: Throughput

    @property
    def images(self) -> float:
        return self.epochs * self.train_size

    @property
    def flops(self) -> float:
        """Training FLOPs: MACs x 2 FLOPs x 3 (forward + backward) x images x overhead."""
        return 6.0 * self.macs_per_image * self.images * self.overhead

    @property
    def images_per_second(self) -> float:
        compute = self.throughput.flops_per_second / (6.0 * self.macs_per_image * self.overhead)
        loader = self.throughput.loader_images_per_second
        return min(compute, loader) if loader else compute

    @property
    def loader_bound(self) -> bool:
        loader = self.throughput.loader_images_per_second
        return bool(loader) and loader < self.throughput.flops_per_second / (6.0 * self.macs_per_image * self.overhead)

    @property
    def hours(self) -> float:
        return self.images / self.images_per_second / 3600.0

    def describe(self) -> str:
        """One sentence with every factor and the assumptions, e.g. for a report."""
        t = self.throughput
        rate = (f"ASSUMED {t.flops_per_second / 1e12:.0f} TFLOP/s sustained ({100 * t.peak_fraction:.0f}% of an "
                f"A100's {A100_BF16_PEAK / 1e12:.0f} TFLOP/s bf16 peak: {t.why})")
        if t.loader_images_per_second:
            rate += (f", and at most {t.loader_images_per_second:,.0f} images/s from the data loader (ASSUMED)"
                     + ("; the loader bounds this run" if self.loader_bound else ""))
        return (f"{self.macs_per_image / 1e9:.2f} GMAC forward per image x 2 FLOP/MAC x 3 (forward + backward) x "
                f"{self.epochs:g} epochs x {self.train_size:,} images x {self.overhead:g} ({self.method}'s "
                f"ASSUMED overhead over dense) = {self.flops / 1e15:,.0f} PFLOP at {rate}; training only, "
                "evaluation excluded; an estimate from assumptions, not a measurement")


def format_hours(hours: float) -> str:
    """'0.13 h', '2.4 h', '21 h'."""
    if hours < 1:
        return f"{hours:.2f} h"
    return f"{hours:.1f} h" if hours < 10 else f"{hours:.0f} h"


def estimate_gpu_hours(task: str, method: str, epochs: float | None = None) -> GpuEstimate:
    """The GPU-hour estimate of one `method` run on `task` under the task's protocol (`epochs`, default:
    the protocol's epochs, else its iterations x batch size / training-set size). KeyError when the task
    is not registered."""
    from prunebench.registry import get_task

    task_obj = get_task(task)
    protocol = task_obj.protocol
    if not task_obj.train_size:
        raise ValueError(f"task {task!r} does not state its training-set size")
    if epochs is None:
        epochs = protocol.epochs or protocol.iterations * protocol.batch_size / task_obj.train_size
    return GpuEstimate(task, method, dense_macs(task), float(epochs), task_obj.train_size,
                       METHOD_OVERHEAD.get(method, UNKNOWN_OVERHEAD), THROUGHPUT.get(task, DEFAULT_THROUGHPUT))


def data_blocker(task: str, data_dir: Path) -> str | None:
    """None when the task's data is present and verified under `data_dir` (or the task fetches or
    generates its own: xor, MNIST); else why not, e.g. "needs the data: CIFAR-10 is not verified in
    D (data_batch_1: missing, ...); `prunebench data fetch cifar10` fetches it"."""
    dataset = TASK_DATA.get(task)
    if dataset == "cifar10":
        from prunebench.cifar10 import cifar10_status

        status = cifar10_status(Path(data_dir))
        if all(state == "ok" for state in status.values()):
            return None
        return (f"needs the data: CIFAR-10 is not verified in {data_dir} ({_problems(status, ok=('ok',))}); "
                "`prunebench data fetch cifar10` fetches it")
    if dataset == "imagenet":
        from prunebench.imagenet import imagenet_status, imagenet_verified

        status = imagenet_status(Path(data_dir))
        if imagenet_verified(status):
            return None
        return (f"needs the data: ImageNet (ILSVRC-2012) is not verified in {data_dir} "
                f"({_problems(status, ok=('ok',), ok_suffix=' ok', ignore='optional')}); place it as "
                "`prunebench data fetch imagenet` describes (it is never downloaded)")
    return None


def _problems(status: dict[str, str], ok: tuple[str, ...], ok_suffix: str | None = None,
              ignore: str | None = None, limit: int = 3) -> str:
    """The first `limit` rows of a data status that are not ok, as 'name: state, ...'."""
    bad = [f"{name}: {state}" for name, state in status.items()
           if state not in ok and not (ok_suffix and state.endswith(ok_suffix)) and not (ignore and ignore in state)]
    more = f", {len(bad) - limit} more" if len(bad) > limit else ""
    return ", ".join(bad[:limit]) + more if bad else "not verified"
