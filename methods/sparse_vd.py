"""Sparse Variational Dropout. D. Molchanov, A. Ashukha and D. Vetrov, "Variational Dropout Sparsifies
Deep Neural Networks", ICML 2017 (arXiv 1701.05369). Authors' code:
bayesgroup/variational-dropout-sparsifies-dnn (Theano/Lasagne).

Every weight gets a Gaussian posterior N(theta, sigma^2) under the log-uniform prior, trained with the
additive reparameterisation (theta and log sigma^2 are the parameters; log alpha = log sigma^2 -
log theta^2, clipped to [-8, 8]). Training uses the local reparameterisation trick: a layer samples
its pre-activations, mu + sqrt(var) * eps with mu = x theta and var = x^2 (alpha theta^2) (conv: the
same with convolutions), eps drawn per example and per output unit. The loss adds beta * KL, with
the KL approximated by -KL = k1 sigmoid(k2 + k3 log alpha) - 0.5 log(1 + 1/alpha) - k1. Weights
with log alpha >= 3 are dropped; evaluation is deterministic with theta * 1[log alpha < 3].

Method card (where each value comes from):
- k1, k2, k3, the clip to [-8, 8], log sigma^2 init -10, the threshold 3, the 1e-8 inside the sqrt:
  paper Eq. 14 and authors' code nets/layers.py [V].
- log alpha = clip(log sigma^2 - log(theta^2 + 1e-8)): the 1e-8 is the code's conv layer [V] (its
  dense layer has none); used everywhere here so theta = 0 gives no NaN gradient [I].
- train_clip = True: both LeNet scripts pass it [V]: the mean term uses theta * 1[log alpha < 3]
  during training. The variance term uses the unclipped theta (alpha theta^2 = the posterior's
  variance), as the code's dense layer does (its conv layer clips there too) [I for conv].
- KL warm-up beta: 0 for epochs 0-4, (epoch - 5)/15 for epochs 5-19, then 1, with the completed epoch
  index epoch = floor(step * batch / N), as optpolicy.rw_linear receives it [V].
- objective: the code minimises (N/M) sum CE + beta KL; the harness adds `penalty()` to the batch-mean
  CE, so penalty = beta * KL / N with N = task.train_size (the same objective divided by N) [V, up to
  that constant factor, which Adam does not see].
- theta starts from the task protocol's init (MNIST: truncated normal, std 0.01; the code's fc layers
  use N(0, 0.01^2), its conv layers Glorot-uniform [V]); biases are not variational.
- budget "paper": 200 epochs, Adam at the protocol lr (1e-3 [V]); the code sets the lr once per epoch:
  LeNet-300-100 holds it for 100 epochs then decays it linearly to 0 at epoch 200 (lr_linear), LeNet-5
  decays linearly from epoch 0 (lr_linear_to0) [V] (per task: `lr_decay_start`). A phase has one lr,
  so the decay is split into `lr_phases` (10) phases whose lr is the mean of the code's per-epoch lrs
  inside the phase [I]; the optimizer state carries across these phases (one Adam run, as in the
  code).
- budget "equal": one phase of the protocol's iterations at its lr; the warm-up still counts epochs.
- grouped convolutions (AlexNet conv2, conv4, conv5): mean and variance are both computed by the layer's
  own grouped convolution (each output reads only its group's inputs, so the local reparameterisation
  is unchanged); BatchNorm after a layer (VGG-like, ResNet-56) sees the sampled pre-activations in
  training and is copied into the deployed network as trained [I].
- cost (issue 18): beyond a dense step, the local reparameterisation's second matrix product per layer
  (its floor: about 2x the dense matmul time), the noise draw per output, and per weight log alpha, its
  exponential and the KL term's gradient; Adam over twice the parameters. The fused path
  (`SVDPosterior`) computes the mean and variance weights in one compiled pass (log, exp) and, in one
  compiled backward pass, both parameters' gradients with the KL term's gradient in closed form
  (dKL/dlog alpha = -k1 k3 s (1 - s) - 0.5 / (1 + alpha), s = sigmoid(k2 + k3 log alpha)), so log alpha
  is computed once per step and no KL term enters the loss; beta / N reaches it as a 0-d buffer
  updated after every step. The plain path (autograd through `moments` and `kl`) is the reference
  (PRUNEBENCH_FUSED=0) [I, implementation].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from prunebench.methods._common import FusedPenalty, carry_optimizer_state, fusable, fused
from torch import nn
from torch.nn import functional as F

from prunebench.knob import CompressionKnob
from prunebench.protocol import Phase, Protocol
from prunebench.pruner import Hyperparameters, Pruner, init_like, register, swap_layers

if TYPE_CHECKING:
    from prunebench.tasks import Task

K1, K2, K3 = 0.63576, 1.87320, 1.48695
LOG_ALPHA_CLIP = 8.0
THETA_EPS = 1e-8  # inside log(theta^2 + eps)
VAR_EPS = 1e-8  # inside sqrt(var + eps)


def kl_approximation(log_alpha: torch.Tensor) -> torch.Tensor:
    """KL(q || log-uniform prior) per weight, paper Eq. 14: the negative of
    k1 sigmoid(k2 + k3 log alpha) - 0.5 log1p(exp(-log alpha)) - k1."""
    neg_kl = K1 * torch.sigmoid(K2 + K3 * log_alpha) - 0.5 * torch.log1p(torch.exp(-log_alpha)) - K1
    return -neg_kl


def kl_weight(epoch: int, start: int = 5, end: int = 20) -> float:
    """Warm-up beta: 0 before `start`, linear 0 -> 1 from `start` to `end`, then 1 (code: rw_linear)."""
    if epoch < start:
        return 0.0
    if epoch < end:
        return (epoch - start) / (end - start)
    return 1.0


@fusable(lambda x: (x, x, 3.0, True))
def posterior_forward(theta: torch.Tensor, log_sigma2: torch.Tensor, threshold: float,
                      train_clip: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mean and variance weights of the local reparameterisation (theta, clipped by log alpha <
    threshold under train_clip, and alpha theta^2) and the unclipped log alpha, in one pass."""
    raw = log_sigma2 - torch.log(theta * theta + THETA_EPS)
    log_alpha = torch.clamp(raw, -LOG_ALPHA_CLIP, LOG_ALPHA_CLIP)
    mean = theta * ((log_alpha < threshold) | (not train_clip))
    return mean, torch.exp(log_alpha) * theta * theta, raw


@fusable(lambda x: (x, x, x, x, torch.tensor(0.5), 3.0, True))
def posterior_backward(theta: torch.Tensor, raw: torch.Tensor, grad_mean: torch.Tensor, grad_var: torch.Tensor,
                       kl_scale: torch.Tensor, threshold: float,
                       train_clip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """dL/dtheta and dL/dlog sigma^2 in one pass: the chain through the mean and variance weights and
    log alpha (zero where the clip is active, as autograd's clamp), plus kl_scale * dKL/dlog alpha."""
    log_alpha = torch.clamp(raw, -LOG_ALPHA_CLIP, LOG_ALPHA_CLIP)
    inside = (raw >= -LOG_ALPHA_CLIP) & (raw <= LOG_ALPHA_CLIP)
    alpha = torch.exp(log_alpha)
    theta2 = theta * theta
    s = torch.sigmoid(K2 + K3 * log_alpha)
    d_kl = -K1 * K3 * s * (1 - s) - 0.5 / (1 + alpha)
    grad_log_alpha = (grad_var * alpha * theta2 + kl_scale * d_kl) * inside
    keep = (log_alpha < threshold) | (not train_clip)
    grad_theta = grad_mean * keep + grad_var * alpha * 2 * theta - grad_log_alpha * 2 * theta / (theta2 + THETA_EPS)
    return grad_theta, grad_log_alpha


class SVDPosterior(torch.autograd.Function):
    """(theta, log sigma^2) -> (mean weight, variance weight), forward `posterior_forward`, backward
    `posterior_backward`, which adds the KL term's gradient scaled by `kl_scale` (beta / N)."""

    @staticmethod
    def forward(ctx, theta: torch.Tensor, log_sigma2: torch.Tensor, kl_scale: torch.Tensor, threshold: float,
                train_clip: bool) -> tuple[torch.Tensor, torch.Tensor]:
        mean, var, raw = fused(posterior_forward, theta.numel())(theta, log_sigma2, threshold, train_clip)
        ctx.save_for_backward(theta, raw, kl_scale)
        ctx.constants = (threshold, train_clip)
        return mean, var

    @staticmethod
    def backward(ctx, grad_mean: torch.Tensor, grad_var: torch.Tensor):
        theta, raw, kl_scale = ctx.saved_tensors
        grad_theta, grad_log_sigma2 = fused(posterior_backward, theta.numel())(
            theta, raw, grad_mean.contiguous(), grad_var.contiguous(), kl_scale, *ctx.constants)
        return grad_theta, grad_log_sigma2, None, None, None


class _Variational:
    """What the variational Linear and Conv2d layers share. `weight` is theta."""

    weight: nn.Parameter
    log_sigma2: nn.Parameter
    threshold: float
    train_clip: bool
    training: bool

    def __init__(self, source: nn.Module, log_sigma2_init: float = -10.0, threshold: float = 3.0,
                 train_clip: bool = True) -> None:
        init_like(self, source)
        self.log_sigma2 = nn.Parameter(torch.full_like(self.weight, log_sigma2_init))
        self.threshold = threshold
        self.train_clip = train_clip
        #: The fused path (`SVDPosterior`) and beta / N, the KL term's scale its backward applies.
        self.fused = False
        self.register_buffer("kl_scale", torch.zeros((), device=self.weight.device), persistent=False)

    @property
    def theta(self) -> nn.Parameter:
        return self.weight

    def log_alpha(self) -> torch.Tensor:
        log_alpha = self.log_sigma2 - torch.log(self.weight * self.weight + THETA_EPS)
        return torch.clamp(log_alpha, -LOG_ALPHA_CLIP, LOG_ALPHA_CLIP)

    def kept(self) -> torch.Tensor:
        """The deployed mask 1[log alpha < threshold] (bool)."""
        return self.log_alpha().detach() < self.threshold

    def kl(self) -> torch.Tensor:
        return kl_approximation(self.log_alpha()).sum()

    def _affine(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of the pre-activation under the posterior (local reparameterisation)."""
        if self.fused:
            mean_weight, var_weight = SVDPosterior.apply(self.weight, self.log_sigma2, self.kl_scale,
                                                         self.threshold, self.train_clip)
            return self._affine(x, mean_weight, self.bias), self._affine(x * x, var_weight, None)
        log_alpha = self.log_alpha()
        mean_weight = self.weight * (log_alpha < self.threshold) if self.train_clip else self.weight
        mu = self._affine(x, mean_weight, self.bias)
        var = self._affine(x * x, torch.exp(log_alpha) * self.weight * self.weight, None)
        return mu, var

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._affine(x, self.weight * self.kept(), self.bias)
        mu, var = self.moments(x)
        return mu + torch.sqrt(var + VAR_EPS) * torch.randn_like(mu)


class VariationalLinear(_Variational, nn.Linear):
    """nn.Linear with a Gaussian posterior per weight, sampled by local reparameterisation."""

    def _affine(self, x, weight, bias):
        return F.linear(x, weight, bias)


class VariationalConv2d(_Variational, nn.Conv2d):
    """nn.Conv2d with a Gaussian posterior per weight, sampled by local reparameterisation."""

    def _affine(self, x, weight, bias):
        return self._conv_forward(x, weight, bias)


@dataclass
class SparseVDHparams(Hyperparameters):
    log_sigma2_init: float = field(default=-10.0, metadata={"help": "initial log sigma^2 of every weight"})
    threshold: float = field(default=3.0, metadata={"help": "log alpha at or above which a weight is dropped"})
    train_clip: bool = field(default=True, metadata={
        "help": "zero weights with log alpha >= threshold in the training mean too (code: train_clip)"})
    warmup_start: int = field(default=5, metadata={"help": "KL weight is 0 before this epoch (>= 0)", "min": 0})
    warmup_end: int = field(default=20, metadata={"help": "KL weight reaches 1 at this epoch (>= warmup_start)"})
    epochs: int = field(default=200, metadata={"help": "budget 'paper': training epochs (>= 1)", "min": 1})
    lr_decay_start: int = field(default=0, metadata={
        "help": "budget 'paper': epoch from which the lr decays linearly to 0 at the last epoch", "min": 0})
    lr_phases: int = field(default=10, metadata={
        "help": "budget 'paper': constant-lr phases that approximate the linear decay (>= 1)", "min": 1})

    def validate(self) -> None:
        super().validate()
        if self.warmup_end < self.warmup_start:
            raise ValueError(f"warmup_end must be >= warmup_start, got {self.warmup_end} < {self.warmup_start}")
        if self.lr_decay_start >= self.epochs:
            raise ValueError(f"lr_decay_start must be in [0, epochs), got {self.lr_decay_start}")
        if self.lr_phases > self.epochs - self.lr_decay_start:
            raise ValueError(f"lr_phases must be <= the decay epochs ({self.epochs - self.lr_decay_start}), "
                             f"got {self.lr_phases}")


@register("sparse-vd")
class SparseVariationalDropout(FusedPenalty, Pruner):
    citation = "Molchanov, Ashukha & Vetrov, Variational Dropout Sparsifies Deep Neural Networks, ICML 2017"
    hparams_class = SparseVDHparams
    knob = CompressionKnob("threshold", raises=False, low=-8.0, high=8.0, log=False, exact_cut=True,
        note="the log-alpha cut: log alpha is clipped to [-8, 8], so the cut is searched linearly; the deployed "
        "mask is 1[log alpha < cut], so a trained network can also be cut at any log alpha (its scores)")
    hp: SparseVDHparams

    def __init__(self, hparams: SparseVDHparams, task: Task, budget: str = "equal") -> None:
        super().__init__(hparams, task, budget)
        if task.train_size <= 0:
            raise ValueError(f"sparse-vd needs the task's train_size (N of the KL term); {task.name} has none")
        self.layers: list[tuple[str, _Variational]] = []
        self.batch_size = task.protocol.batch_size
        self.step = 0

    # -- schedule -----------------------------------------------------------------------------
    def epoch(self) -> int:
        """Completed epochs after `self.step` optimizer steps."""
        return self.step * self.batch_size // self.task.train_size

    def kl_weight(self) -> float:
        return kl_weight(self.epoch(), self.hp.warmup_start, self.hp.warmup_end)

    def paper_lr(self, epoch: int, base_lr: float) -> float:
        """The code's per-epoch lr: constant until lr_decay_start, then linear to 0 at `epochs`."""
        start, end = self.hp.lr_decay_start, self.hp.epochs
        if epoch < start:
            return base_lr
        return base_lr * (end - epoch) / (end - start)

    def phases(self, protocol: Protocol) -> list[Phase]:
        self.batch_size = protocol.batch_size
        if self.budget == "equal":
            return super().phases(protocol)
        per_epoch = self.iterations_per_epoch(protocol)
        phases = []
        if self.hp.lr_decay_start > 0:
            start = self.hp.lr_decay_start
            phases.append(Phase(f"epochs 0-{start - 1}", start * per_epoch, protocol.lr))
        decay_epochs = self.hp.epochs - self.hp.lr_decay_start
        bounds = [self.hp.lr_decay_start + round(i * decay_epochs / self.hp.lr_phases)
                  for i in range(self.hp.lr_phases + 1)]
        for first, stop in zip(bounds[:-1], bounds[1:], strict=True):
            lrs = [self.paper_lr(e, protocol.lr) for e in range(first, stop)]
            phases.append(Phase(f"epochs {first}-{stop - 1}", (stop - first) * per_epoch, sum(lrs) / len(lrs)))
        return phases

    # -- hooks --------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> nn.Module:
        hp = self.hp
        self.layers = swap_layers(model, VariationalLinear, VariationalConv2d,
                                  lambda *_: (hp.log_sigma2_init, hp.threshold, hp.train_clip))
        for _, layer in self.layers:
            layer.fused = self.fused
        self.sync_kl_scale()
        return model

    @torch.no_grad()
    def sync_kl_scale(self) -> None:
        """beta / N for the next step, into each layer's `kl_scale` (the fused backward reads it)."""
        scale = self.kl_weight() / self.task.train_size
        if scale == getattr(self, "_kl_scale", None):
            return
        self._kl_scale = scale
        for _, layer in self.layers:
            layer.kl_scale.fill_(scale)

    def on_phase_start(self, phase: Phase, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        carry_optimizer_state(self.optimizer, optimizer)  # the phases are one Adam run with an lr schedule
        super().on_phase_start(phase, model, optimizer)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.sync_kl_scale()

    def plain_penalty(self) -> torch.Tensor | None:
        """beta * KL / N as a tensor (the plain path's loss term; tests)."""
        beta = self.kl_weight()
        if beta == 0:
            return None
        kl = sum(layer.kl() for _, layer in self.layers)
        return beta * kl / self.task.train_size

    def after_step(self, step: int) -> None:
        self.step = step
        if self.fused:
            self.sync_kl_scale()

    def deployed(self, model: nn.Module) -> nn.Module:
        weights = {}
        for name, _ in self.layers:
            layer = model.get_submodule(name)
            weights[name] = layer.weight.detach() * layer.kept()
        return self.export(model, weights=weights)

    def scores(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """-log alpha: the lower the dropout rate, the more a weight is kept."""
        return {name: -model.get_submodule(name).log_alpha().detach() for name, _ in self.layers}
