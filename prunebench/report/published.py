"""Published figures beside each measured row: compression and accuracy loss per (method, task).

Accuracy loss is in percentage points, positive = the sparse network is worse than its dense
baseline (the DT paper's "Top-1 acc. loss"; METHODS.md section 9 lists the same numbers as error
deltas). Each figure keeps its source so a table can say where it comes from. Baselines, LeNet-5
variants and weight counting differ between papers: these are context, not measurements under our
protocol."""

from __future__ import annotations

from dataclasses import dataclass

DT_TABLE2 = "DT paper Table 2"


@dataclass(frozen=True)
class Published:
    method: str
    task: str
    compression: float | None      # dense weights / remaining weights; None = not published
    accuracy_loss: float | None    # pp, positive = worse than dense; None = not published
    source: str
    note: str = ""

    @property
    def available(self) -> bool:
        return self.compression is not None


def _p(method: str, task: str, compression: float | None, loss: float | None, source: str, note: str = "") -> Published:
    return Published(method, task, compression, loss, source, note)


_NONE_LENET = "none published for LeNet"
_NONE_VGG = "not reported for VGG-like on CIFAR-10 (DT Table 2: '-')"

PUBLISHED: dict[tuple[str, str], Published] = {(p.method, p.task): p for p in [
    _p("dynthresh", "lenet300", 81.0, 0.36, "DT paper Tables 1-2",
       "individual thresholds (layer-wise 23x, global 17x)"),
    _p("dynthresh", "lenet5", 151.0, -0.03, DT_TABLE2),
    _p("magnitude", "lenet300", 12.2, -0.05, DT_TABLE2, "iterative pruning, Han et al. 2015"),
    _p("magnitude", "lenet5", 11.9, -0.03, DT_TABLE2, "iterative pruning, Han et al. 2015"),
    _p("dns", "lenet300", 56.0, -0.29, DT_TABLE2, "DNS paper: error 2.28% -> 1.99%"),
    _p("dns", "lenet5", 108.0, 0.00, DT_TABLE2, "DNS paper: error 0.91% -> 0.91%"),
    _p("sparse-vd", "lenet300", 68.0, 0.28, DT_TABLE2, "sparse VD: error 1.64% -> 1.92%"),
    _p("sparse-vd", "lenet5", 280.0, -0.05, DT_TABLE2, "sparse VD: error 0.80% -> 0.75%"),
    _p("l0", "lenet300", 12.2, 0.28, DT_TABLE2, "as reported by the sensitivity-driven paper [20]; the L0 "
       "paper's units imply 3.8x at lambda 0.1/N (219-214-100), 10.0x for L0-sep (266-88-33)"),
    _p("l0", "lenet5", 70.0, 0.20, DT_TABLE2, "as reported by the sensitivity-driven paper [20]: the L0 "
       "paper's L0-sep units 9-18-65-25 (70.0x); lambda 0.1/N's 20-25-45-462 imply 11.2x. L0-sep is not run "
       "here: its per-layer lambdas are in the L0 paper's Table 1 only, which could not be read from this "
       "machine (no network beyond the package registries), and the authors' code "
       "(AMLab-Amsterdam/L0_regularization@39a5fe6, train_lenet5.py) defaults to lambdas [1, 1, 1, 1] x 1/N; the "
       "recalled {10, 0.5, 0.1, 10}/N stay unverified"),
    _p("dst", "lenet300", 40.0, 0.47, "DST paper (METHODS.md sec. 9)", "~40x (2.48% kept); accuracy 98.16% -> 97.69%"),
    _p("dst", "lenet5", 61.0, 0.07, "DST paper (METHODS.md sec. 9)", "~61x (1.64% kept); accuracy 99.18% -> 99.11%"),
    _p("ltp", "lenet300", None, None, "METHODS.md sec. 9", _NONE_LENET + " (LTP reports ImageNet only)"),
    _p("ltp", "lenet5", None, None, "METHODS.md sec. 9", _NONE_LENET + " (LTP reports ImageNet only)"),
    _p("autoprune", "lenet300", None, None, "METHODS.md sec. 9", _NONE_LENET),
    _p("autoprune", "lenet5", None, None, "METHODS.md sec. 9", _NONE_LENET),
    # CIFAR-10 VGG-like (DT Table 2, CIFAR10 column; METHODS.md secs. 9-10).
    _p("dynthresh", "vgg-cifar10", 102.0, -1.2, DT_TABLE2, "individual thresholds, 100 epochs from scratch"),
    _p("sparse-vd", "vgg-cifar10", 65.0, 0.0, DT_TABLE2, "Table 2 prints -0.0% p; the sparse VD README says "
       "'up to 68x'; its VGG-like has a width factor k, no dropout before fc1, ZCA whitening, no augmentation, "
       "Adam lr 1e-5 for 200 epochs"),
    _p("dst", "vgg-cifar10", 27.0, 0.73, "DST paper (METHODS.md sec. 5)", "VGG-16 with BN (13 conv + fc "
       "512-512-10), ~27x (3.76% kept); accuracy 93.75% -> 93.02%, mean of 5 runs; 160 epochs"),
    _p("magnitude", "vgg-cifar10", None, None, DT_TABLE2, _NONE_VGG),
    _p("dns", "vgg-cifar10", None, None, DT_TABLE2, _NONE_VGG),
    _p("l0", "vgg-cifar10", None, None, DT_TABLE2, _NONE_VGG),
    _p("ltp", "vgg-cifar10", None, None, "METHODS.md sec. 9", "none published (LTP reports ImageNet only)"),
    _p("autoprune", "vgg-cifar10", None, None, "METHODS.md sec. 9", "unknown (full text unavailable)"),
    # ImageNet AlexNet (DT Table 2, ImageNet column; METHODS.md sec. 10): top-1 accuracy loss.
    _p("dynthresh", "alexnet-imagenet", 11.7, 0.82, DT_TABLE2, "individual thresholds, 150 epochs from scratch"),
    _p("magnitude", "alexnet-imagenet", 9.1, -0.01, DT_TABLE2, "iterative pruning, Han et al. 2015; over 960 "
       "epochs of training (DT sec. 4.2.2)"),
    _p("dns", "alexnet-imagenet", 17.7, 0.31, DT_TABLE2, "230 epochs: 90 pretraining + 140 pruning "
       "(DT sec. 4.2.2)"),
    _p("ltp", "alexnet-imagenet", 26.4, None, "LTP abstract (METHODS.md sec. 6)", "79.1% top-5; no top-1 loss "
       "stated; fine-tuned from a pretrained AlexNet (which variant is not known)"),
    _p("sparse-vd", "alexnet-imagenet", None, None, DT_TABLE2, "none published for AlexNet"),
    # The two reconstructions (METHODS.md sec. 8: their method sections could not be read here).
    _p("sensitivity", "lenet300", 103.0, 0.31, DT_TABLE2, "Tartaglione et al. 2018; prunebench's method is a "
       "reconstruction"),
    _p("sensitivity", "lenet5", 51.0, -0.02, DT_TABLE2, "Tartaglione et al. 2018; prunebench's method is a "
       "reconstruction"),
    _p("srinivas", "lenet300", None, None, DT_TABLE2, "none published for LeNet-300-100"),
    _p("srinivas", "lenet5", 24.0, 0.01, DT_TABLE2, "Srinivas et al. 2017; prunebench's method is a "
       "reconstruction"),
    _p("srinivas", "alexnet-imagenet", 10.3, 0.31, DT_TABLE2, "Srinivas et al. 2017; prunebench's method is a "
       "reconstruction"),
]}


#: DT paper Table 1: LeNet-300-100 by threshold scale (Table 2's 81x is the individual row).
DT_TABLE1_SCALES = {
    "layer": _p("dynthresh", "lenet300", 23.0, 0.33, "DT paper Table 1", "layer-wise thresholds"),
    "global": _p("dynthresh", "lenet300", 17.0, 0.25, "DT paper Table 1", "one global threshold"),
}


def published(method: str, task: str, hparams: dict | None = None) -> Published | None:
    """The published figure for `method` on `task` (and, for dynthresh on lenet300, the threshold
    scale in `hparams`), or None when the sources hold no entry at all (e.g. `dense`, or `xor`)."""
    if method == "dynthresh" and task == "lenet300" and hparams and hparams.get("scale") in DT_TABLE1_SCALES:
        return DT_TABLE1_SCALES[hparams["scale"]]
    return PUBLISHED.get((method, task))


@dataclass(frozen=True)
class Released:
    """A method's trained model as its authors released it, measured here in the harness's counting (conv and
    fc weights) and on our test set: a second reference beside the published figure, which the paper's own
    counting or rounding may have moved."""

    method: str
    task: str
    compression: float     # dense weights / non-zero weights of the released sparse model
    accuracy: float        # % on the MNIST test set
    dense_accuracy: float  # % of the authors' released dense model, the loss's reference
    source: str

    @property
    def accuracy_loss(self) -> float:
        """pp, positive = the released sparse model is worse than the released dense one."""
        return round(self.dense_accuracy - self.accuracy, 2)


_DNS_RELEASED = ("yiwenguo/Dynamic-Network-Surgery@27d4926f0f, models/{}/caffe_{}_sparse.caffemodel (and _original), "
                 "measured by `python benchmarks/dns_released.py --models DIR` (leaderboards/foundation/"
                 "dns-released.json; Caffe's input scale 1/256, the prototxt's networks)")

RELEASED: dict[tuple[str, str], Released] = {(r.method, r.task): r for r in [
    Released("dns", "lenet300", 53.76, 98.01, 97.72, _DNS_RELEASED.format("lenet300100", "lenet300100")),
    Released("dns", "lenet5", 108.25, 99.09, 99.09, _DNS_RELEASED.format("lenet5", "lenet5")),
]}


def released(method: str, task: str) -> Released | None:
    """The authors' released model of `method` on `task`, as measured here, or None."""
    return RELEASED.get((method, task))
