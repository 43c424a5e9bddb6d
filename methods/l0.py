"""L0 regularisation with hard-concrete gates. C. Louizos, M. Welling and D. P. Kingma, "Learning Sparse
Neural Networks through L0 Regularization", ICLR 2018 (arXiv 1712.01312). Authors' code:
AMLab-Amsterdam/L0_regularization (PyTorch), l0_layers.py and models.py.

Every unit carries a gate z in [0, 1] with a hard-concrete distribution of location log alpha: draw
u ~ U(0, 1), s = sigmoid((log u - log(1 - u) + log alpha) / beta), z = clamp(s (zeta - gamma) + gamma, 0, 1).
Because the stretched s can fall below 0 or above 1, z is exactly 0 or exactly 1 with positive
probability, and P(z != 0) = sigmoid(log alpha - beta log(-gamma / zeta)) is differentiable in log
alpha. The gates act on units (group sparsity): the input features of a Linear layer (a column of its
weight) and the output filters of a Conv2d layer (a filter and its bias). Training minimises the task
loss plus the expected number of non-zero weights, sum_l lambda_l sum_units fan * P(z != 0), with the
weights and the log alphas learnt jointly; at test time the gate is deterministic,
z = clamp(sigmoid(log alpha) (zeta - gamma) + gamma, 0, 1), and a unit with z = 0 is removed.

Method card (where each value comes from):
- beta = 2/3, gamma = -0.1, zeta = 1.1, u drawn from U(1e-6, 1 - 1e-6), the hard-concrete sample, the
  closed form P(z != 0), the test-time gate: authors' code l0_layers.py [V] (the paper's hard concrete
  distribution [R]).
- gates on the input features of fc layers and on the output filters of conv layers, one gate sample
  per unit per minibatch shared by the whole batch (the code's default local_rep=False,
  sample_weights): l0_layers.py [V]. Every prunable layer is gated, the output layer included
  (models.py) [V].
- penalty = sum_l (lam_l / N) sum_units fan_unit * P(z_unit != 0), with fan = the weights a gate
  controls (out_features for an fc input gate, in_channels/groups * kh * kw for a conv filter) and
  N = task.train_size: the code's _reg_w, whose per-weight term "- lamba" is summed over the unit's
  weights and divided by N in models.py [V]. The harness adds penalty() to the batch-mean task loss,
  as the code adds model.regularization() to the mean cross-entropy [V].
- lam = 0.1 (lambda = 0.1/N) dataclass default: paper Table 1, L0 rows for the MLP and LeNet-5 [R, via
  METHODS.md sec. 8]; the code's default lambas is 1 [V]. One value or one per prunable layer (the
  code's lambas). Per-task values: see the task's method_defaults [I]. The suite's 10,000 iterations are
  ~17 epochs against the paper's 200; log alpha moves about lr per Adam step at most, so a gate needs
  ~2,400 steps (Adam lr 1e-3) from log alpha 0 to test-time gate 0 (log alpha <= -log 11 = -2.40) [I].
- biases: not in the L0 penalty and not counted (suite convention, METHODS.md sec. 0) [I]. A conv
  filter's gate multiplies its bias in training and at test time alike, so a removed filter outputs
  exactly 0 [I] (the code gates the conv bias at test time only: its training forward pass leaves the
  bias out, and its penalty counts the bias with the sign of lambda flipped). An fc layer's gates act
  on its inputs, so its bias is never gated [V].
- weight_decay: the code re-weights an L2 term by the gate: + (weight_decay / 2) sum_units
  P(z != 0) ||w_unit||^2 (L0MLP passes prior_prec = N * weight_decay, divided by N again) [V]. Default 0
  [I]: the suite protocol has no weight decay, and the code's LeNet-5 script passes 5e-4 without the
  factor N, i.e. weight_decay = 5e-4 / N ~ 8e-9 here, which has no effect. Biases get no L2 [I].
- droprate_init 0.5 for every gate, 0.2 for the gates on the network's input features (the first layer
  when it is a Linear: the code's L0MLP layer 0; LeNet-5's first layer is a conv, 0.5 in the code) [V];
  log alpha starts at log(1 - p) - log(p) plus N(0, 0.01^2) noise (reset_parameters) [V].
- log alpha clamped to [log 1e-2, log 1e2] after every optimizer step (constrain_parameters) [V].
- weights and biases start from the task protocol's init (the code uses Kaiming-normal) [I].
- no parameter EMA: the code's scripts average the parameters (beta_ema 0.999) for evaluation; the
  suite evaluates the trained parameters for every method [I].
- what to expect: the paper reports surviving units, not weights (Table 1, 200 epochs [R]). Counted as
  weights, with the units no later layer reads dropped as this module deploys them, lambda = 0.1/N keeps
  MLP 219-214-100 -> 3.8x and LeNet-5 20-25-45-462 -> 11.2x; the per-layer-lambda "L0-sep" rows keep
  266-88-33 -> 10.0x and 9-18-65-25 -> 70.0x. The 70x that DT Table 2 quotes for L0 on LeNet-5 is the
  L0-sep architecture; its 12.2x on LeNet-300-100 matches no row exactly (L0-sep is closest) [I,
  arithmetic on the published unit counts]. The L0-sep lambdas are not in METHODS.md; the method
  expresses them (`--lam` takes one value per prunable layer), but without the published values an L0-sep
  run would be our own choice, not the paper's configuration, so none is made [I].
- measured at the paper's budget (issue 19; `prunebench sweep --methods l0 --tasks lenet300 --seeds 0-2
  --budget paper`, 120,000 Adam steps, lambda 0.1/N, one CPU thread): LeNet-300-100 4.30x, 4.33x, 4.37x at
  98.19%, 98.30%, 98.04% (seeds 0, 1, 2; dense of the same seeds and budget 97.73%, 97.76%, 97.98%: a gain of
  0.35 pp on average), 773-915 s of training each. Kept units (inputs of fc1, fc2, fc3, from the per-layer
  weight counts): 228-191-91, 227-189-93, 226-194-84 against the paper's 219-214-100, so 13% more
  compression than the 3.8x those unit counts imply, and a third of the 12.2x DT quotes. LeNet-5 at this
  budget (`--tasks lenet5`, same command): 11.0x, 12.0x, 12.2x at 99.24%, 99.08%, 99.08% (seeds 0, 1, 2;
  dense of the same seeds and budget 99.35%, 99.11%, 99.07%: +0.04 pp on average), 6,358-7,409 s of
  training each (three runs at a time on two cores, one thread each). Kept units (conv1 filters, conv2
  filters, fc1 inputs, fc2 inputs, from the per-layer weight counts: conv1/25, conv2/500, fc1/(fc2 inputs),
  fc2/10): 19-27-55-387, 19-25-52-369, 20-27-47-376 against the paper's
  20-25-45-462, so 11.7x on average against the 11.2x those units imply (+4%), and a sixth of the 70x DT
  quotes (the L0-sep architecture).
- training: one phase from scratch with the task protocol's optimizer, lr, batch and iterations under
  budget "equal"; budget "paper": `epochs` (200) epochs at the protocol lr, constant (the code's
  scripts: Adam lr 1e-3, batch 100, 200 epochs [V]), i.e. 120,000 steps on MNIST.
- deployed network: each weight times its unit's test-time gate (and a conv filter's bias too), so the
  plain network computes exactly what the gated model computes in eval mode; gates strictly between 0
  and 1 scale their unit's weights. Units whose gate is 0 are exact zeros. A unit that the next layer's
  gates remove entirely (e.g. a hidden neuron of LeNet-300-100 whose fc2 input gate is 0) is dropped
  with its incoming weights and bias (prunebench.structured.zero_unread_units), as removing the
  neuron would; this never changes the network's output [I]. Only across links where a layer's outputs
  reach one next prunable layer alone, unit by unit (`prunebench.structured.Structure.feeds`): not into
  a residual addition (ResNet-56) nor through a channel-mixing op (AlexNet's LRN after conv1 and conv2,
  where a zeroed unit would change its neighbours' normalisation) [I].
- BatchNorm after a conv (VGG-like, ResNet-56): a filter whose gate is 0 outputs 0 before BatchNorm, so
  BatchNorm's shift after it; the deployed network keeps BatchNorm as trained (copied by name), so it
  computes the same [I]. Grouped convolutions (AlexNet conv2, conv4, conv5): a filter gate holds
  in_channels/groups * kh * kw weights (the fan of the penalty).

Cost (issue 18). Beyond a dense step: one hard-concrete draw and the expected-L0 term per gate (units,
not weights: 1,184 on LeNet-300-100), and the gate multiply over each layer's weights with its two
gradients (g z, and the per-unit sums of g W). Measured at 1.37x a dense LeNet-300-100 step on one CPU
thread (leaderboards/method-cost.md). Tried and not kept: gating the batch's inputs instead of the
weight's columns (fc1's input then needs a gradient: one more full matrix product per step), and one
compiled pass for the gate multiply and both gradients (slower than autograd's three small passes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from prunebench.methods._common import expand_per_layer, per_layer_values
from torch import nn
from torch.nn import functional as F

from prunebench.knob import CompressionKnob
from prunebench.protocol import Phase, Protocol
from prunebench.pruner import Hyperparameters, Pruner, init_like, prunable_layers, register, swap_layers
from prunebench.structured import Structure, network_structure, unread_units, zero_unread_units

if TYPE_CHECKING:
    from prunebench.tasks import Task

BETA = 2.0 / 3.0  # temperature of the concrete distribution
GAMMA = -0.1  # stretch interval (gamma, zeta)
ZETA = 1.1
EPSILON = 1e-6  # u ~ U(EPSILON, 1 - EPSILON), as the code draws it
LOG_ALPHA_MIN = math.log(1e-2)
LOG_ALPHA_MAX = math.log(1e2)
INIT_NOISE_STD = 1e-2  # log alpha init ~ N(log(1-p) - log(p), 0.01^2)


def hard_concrete(log_alpha: torch.Tensor, u: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """The train-time gate for uniform noise u: clamp(sigmoid((logit u + log alpha)/beta)(zeta-gamma)+gamma, 0, 1)."""
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / beta)
    return torch.clamp(s * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def sample_gates(log_alpha: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """One hard-concrete sample per entry of log alpha, u ~ U(1e-6, 1 - 1e-6) from torch's global generator."""
    u = torch.rand_like(log_alpha, requires_grad=False) * (1.0 - 2.0 * EPSILON) + EPSILON
    return hard_concrete(log_alpha, u, beta)


def expected_l0(log_alpha: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """P(z != 0) = 1 - Q(s <= 0) = sigmoid(log alpha - beta log(-gamma / zeta)), per gate."""
    return torch.sigmoid(log_alpha - beta * math.log(-GAMMA / ZETA))


def deterministic_gate(log_alpha: torch.Tensor) -> torch.Tensor:
    """The deterministic gate: clamp(sigmoid(log alpha)(zeta - gamma) + gamma, 0, 1)."""
    return torch.clamp(torch.sigmoid(log_alpha) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def log_alpha_init(droprate: float) -> float:
    """Location whose dropout rate is `droprate`: log(1 - p) - log(p)."""
    return math.log(1.0 - droprate) - math.log(droprate)


class _Gated:
    """What the gated Linear and Conv2d layers share: one log alpha per unit, train/test gates."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    log_alpha: nn.Parameter
    training: bool

    def __init__(self, source: nn.Module, droprate: float = 0.5) -> None:
        init_like(self, source)
        mean = log_alpha_init(droprate)
        n_units = source.out_channels if isinstance(source, nn.Conv2d) else source.in_features
        noise = torch.randn(n_units, device=source.weight.device, dtype=source.weight.dtype)
        self.log_alpha = nn.Parameter(mean + INIT_NOISE_STD * noise)

    # subclass-specific: how a gate vector broadcasts onto the weight, and how many weights a gate holds
    def _on_weight(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def fan(self) -> int:
        raise NotImplementedError

    def gate(self) -> torch.Tensor:
        """One sample per unit in training (shared by the minibatch), the deterministic gate in eval."""
        return sample_gates(self.log_alpha) if self.training else deterministic_gate(self.log_alpha)

    def eval_gate(self) -> torch.Tensor:
        return deterministic_gate(self.log_alpha.detach())

    def kept_units(self) -> int:
        return int((self.eval_gate() > 0).sum())

    def unit_sq_norms(self) -> torch.Tensor:
        """||w_unit||^2 per unit."""
        raise NotImplementedError

    def penalty(self, lam_over_n: float, weight_decay: float) -> torch.Tensor:
        """lam/N * fan * sum P(z != 0), plus the gate-weighted L2 (weight_decay/2) sum P(z != 0) ||w_unit||^2."""
        p_nonzero = expected_l0(self.log_alpha)
        total = (lam_over_n * self.fan) * p_nonzero.sum()
        if weight_decay > 0:
            total = total + 0.5 * weight_decay * (p_nonzero * self.unit_sq_norms()).sum()
        return total

    def gated_weight(self, z: torch.Tensor) -> torch.Tensor:
        return self.weight * self._on_weight(z)


class L0Linear(_Gated, nn.Linear):
    """nn.Linear whose input features are gated: W[:, j] * z_j."""

    def _on_weight(self, z: torch.Tensor) -> torch.Tensor:
        return z.view(1, -1)

    @property
    def fan(self) -> int:
        return self.out_features

    def unit_sq_norms(self) -> torch.Tensor:
        return self.weight.pow(2).sum(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.gated_weight(self.gate()), self.bias)


class L0Conv2d(_Gated, nn.Conv2d):
    """nn.Conv2d whose output filters are gated: (W[k], b[k]) * z_k."""

    def _on_weight(self, z: torch.Tensor) -> torch.Tensor:
        return z.view(-1, 1, 1, 1)

    @property
    def fan(self) -> int:
        return self.weight[0].numel()  # in_channels / groups * kh * kw

    def unit_sq_norms(self) -> torch.Tensor:
        return self.weight.pow(2).sum((1, 2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.gate()
        bias = None if self.bias is None else self.bias * z
        return self._conv_forward(x, self.gated_weight(z), bias)


@dataclass
class L0Hparams(Hyperparameters):
    lam: tuple[float, ...] = field(default=(0.1,), metadata={
        "help": "L0 strength times N: the penalty per expected non-zero weight is lam/N (N = training-set "
        "size); one value for every layer, or one per prunable layer, e.g. '0.1,0.1,0.1' (>= 0)", "min": 0})
    droprate_init: float = field(default=0.5, metadata={
        "help": "initial dropout rate p of the gates, log alpha = log(1-p) - log(p) (code: 0.5)", "gt": 0, "lt": 1})
    input_droprate_init: float = field(default=0.2, metadata={
        "help": "initial dropout rate of the gates on the network's input features (first layer when it is "
        "a Linear; code's MLP: 0.2)", "gt": 0, "lt": 1})
    weight_decay: float = field(default=0.0, metadata={
        "help": "gate-weighted L2: + weight_decay/2 * sum P(z!=0) ||w_unit||^2 (code's L0MLP weight_decay; >= 0)",
        "min": 0})
    drop_unread_units: bool = field(default=True, metadata={
        "help": "deploy without the units a later layer's gates never read (their incoming weights and bias)"})
    epochs: int = field(default=200, metadata={"help": "budget 'paper': training epochs (>= 1)", "min": 1})

    def __post_init__(self) -> None:
        self.lam = per_layer_values(self.lam, float)


@register("l0")
class L0Regularization(Pruner):
    citation = "Louizos, Welling & Kingma, Learning Sparse Neural Networks through L0 Regularization, ICLR 2018"
    hparams_class = L0Hparams
    knob = CompressionKnob("lam", raises=True, low=0.01, high=100.0, scale=True,
        note="L0 strength of the gates, one factor on the calibrated per-layer lam")
    hp: L0Hparams
    provenance = "paper"
    trained_network_differs = True  # trained with stochastic gates; deployed with the deterministic ones

    def __init__(self, hparams: L0Hparams, task: Task, budget: str = "equal") -> None:
        super().__init__(hparams, task, budget)
        if task.train_size <= 0:
            raise ValueError(f"l0 needs the task's train_size (N of lambda = lam/N); {task.name} has none")
        plain = task.architecture()
        n_layers = len(prunable_layers(plain))
        self.lam = expand_per_layer(self.hp.lam, n_layers, "lam")
        self.layers: list[tuple[str, L0Linear | L0Conv2d]] = []
        #: Which layer feeds which (`unread_units` only looks across those links).
        self.structure: Structure = network_structure(plain)

    def phases(self, protocol: Protocol) -> list[Phase]:
        if self.budget == "equal":
            return super().phases(protocol)
        return [Phase(f"{self.hp.epochs} epochs", self.hp.epochs * self.iterations_per_epoch(protocol), protocol.lr)]

    # -- hooks --------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> nn.Module:
        hp = self.hp  # the gates on the network's input features (a first Linear) start at their own rate
        self.layers = swap_layers(model, L0Linear, L0Conv2d, lambda index, layer: (
            hp.input_droprate_init if index == 0 and isinstance(layer, nn.Linear) else hp.droprate_init,))
        return model

    def penalty(self) -> torch.Tensor | None:
        if all(v == 0 for v in self.lam) and self.hp.weight_decay == 0:
            return None
        n = self.task.train_size
        return sum(layer.penalty(lam / n, self.hp.weight_decay)
                   for (_, layer), lam in zip(self.layers, self.lam, strict=True))

    @torch.no_grad()
    def after_step(self, step: int) -> None:  # noqa: ARG002
        for _, layer in self.layers:
            layer.log_alpha.clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)

    # -- what the harness measures ---------------------------------------------------------------
    @torch.no_grad()
    def kept_weights(self) -> int:
        """Weights of the deployed network that the gates keep, from the gates alone: each layer's kept
        units x fan, less the weights of units the next layer's gates never read (`unread_units`)."""
        masks = [layer._on_weight((layer.eval_gate() > 0).to(layer.weight.dtype)).expand_as(layer.weight).clone()
                 for _, layer in self.layers]
        if self.hp.drop_unread_units:
            groups = [getattr(layer, "groups", 1) for _, layer in self.layers]
            for mask, unread in zip(masks, unread_units(masks, self.structure.links(), groups), strict=False):
                mask[unread] = 0.0
        return sum(int(torch.count_nonzero(mask)) for mask in masks)  # exact beyond 2**24 weights

    def deployed(self, model: nn.Module) -> nn.Module:
        weights, conv_gates = {}, {}
        for name, _ in self.layers:
            layer = model.get_submodule(name)
            z = layer.eval_gate()
            weights[name] = layer.gated_weight(z).detach()
            if isinstance(layer, L0Conv2d) and layer.bias is not None:
                conv_gates[name] = z
        net = self.export(model, weights=weights)
        with torch.no_grad():  # export copies raw biases; a conv filter's gate scales its bias too
            for name, z in conv_gates.items():
                bias = net.get_submodule(name).bias
                bias.copy_(model.get_submodule(name).bias.detach() * z)
        return zero_unread_units(net, self.structure) if self.hp.drop_unread_units else net

    def scores(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The unit's log alpha on each of its weights (higher = more likely kept)."""
        scores = {}
        for name, _ in self.layers:
            layer = model.get_submodule(name)
            scores[name] = layer._on_weight(layer.log_alpha.detach()).expand_as(layer.weight).clone()
        return scores
