"""Adam and SGD for a handful of small tensors, without importing ``torch.optim``.

Constructing any ``torch.optim`` optimiser imports ``torch._dynamo``: about a second of start-up
and 70 MB of memory per process, a large share of a short run. These implement exactly the
updates of ``torch.optim.Adam`` (default arguments) and ``torch.optim.SGD`` (tested against
them in tests/test_optim.py), with state dicts for checkpoints.
"""

from __future__ import annotations

import math

import torch


class SGD:
    def __init__(self, params: list[torch.Tensor], lr: float):
        self.params, self.lr = list(params), lr

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for p in self.params:
            if p.grad is not None:
                p.add_(p.grad, alpha=-self.lr)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Adam:
    """Adam (Kingma and Ba 2015) with bias correction, as torch.optim.Adam computes it:

        m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2,
        p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    The moments live in one flat buffer each (``m`` and ``v`` are views of it per parameter):
    when every parameter has a gradient, as in every update here, a step is a handful of
    vector operations on the whole buffer instead of a handful per tensor, which is most of
    the cost for a 64x64 critic's minibatch steps.
    """

    def __init__(self, params: list[torch.Tensor], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps = list(params), lr, betas, eps
        self.steps = [0] * len(self.params)  # per parameter, as torch.optim.Adam counts them
        sizes = [p.numel() for p in self.params]
        flat = torch.zeros(sum(sizes), dtype=self.params[0].dtype,
                           device=self.params[0].device) if self.params else None

        def views(buffer: torch.Tensor | None) -> list[torch.Tensor]:
            if buffer is None:
                return []
            return [c.view_as(p) for c, p in zip(buffer.split(sizes), self.params)]

        self._m, self._v = flat, None if flat is None else flat.clone()
        self._grad = None if flat is None else flat.clone()
        self._update = None if flat is None else flat.clone()
        self.m, self.v = views(self._m), views(self._v)
        self._update_views = views(self._update)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        for i in live:
            self.steps[i] += 1
        b1, b2 = self.betas
        if len(live) == len(self.params) and len(set(self.steps)) == 1:
            t = self.steps[0]
            step_size = self.lr / (1 - b1**t)
            correction2 = math.sqrt(1 - b2**t)
            torch.cat([p.grad.reshape(-1) for p in self.params], out=self._grad)
            g = self._grad
            self._m.mul_(b1).add_(g, alpha=1 - b1)
            self._v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = self._v.sqrt().div_(correction2).add_(self.eps)
            torch.div(self._m, denom, out=self._update).mul_(-step_size)
            torch._foreach_add_(self.params, self._update_views)
            return
        for i in live:  # rare: some parameters without a gradient, or unequal step counts
            p, g, m, v, t = self.params[i], self.params[i].grad, self.m[i], self.v[i], \
                self.steps[i]
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = v.sqrt().div_(math.sqrt(1 - b2**t)).add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / (1 - b1**t))

    def state_dict(self) -> dict:
        return {"steps": list(self.steps), "m": [m.clone() for m in self.m],
                "v": [v.clone() for v in self.v]}

    def load_state_dict(self, state: dict) -> None:
        # checkpoints from before per-parameter counts hold one count "t"
        self.steps = list(state["steps"]) if "steps" in state else [state["t"]] * len(self.params)
        for mine, saved in zip(self.m + self.v, state["m"] + state["v"]):
            mine.copy_(saved)
