"""smp.amp.GradScaler: torch's GradScaler whose inf/NaN check spans every rank, so all
pipeline stages and replicas skip (or take) the same step."""

import torch
import torch.distributed as dist


class GradScaler(torch.amp.GradScaler):
    def __init__(self, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000, enabled=True):
        device = "cuda" if torch.cuda.is_available() else "cpu"
        super().__init__(device, init_scale=init_scale, growth_factor=growth_factor,
                         backoff_factor=backoff_factor, growth_interval=growth_interval, enabled=enabled)

    def _unscale_grads_(self, optimizer, inv_scale, found_inf, allow_fp16):
        per_device = super()._unscale_grads_(optimizer, inv_scale, found_inf, allow_fp16)
        found = sum(t.to("cpu", torch.float32) for t in per_device.values()) if per_device else torch.zeros(1)
        found = found.reshape(1)
        dist.all_reduce(found, op=dist.ReduceOp.MAX)
        for t in per_device.values():
            t.copy_(found.to(t.device).reshape(t.shape))
        return per_device
