#!/usr/bin/env python3
"""Peer measurements for the decode benchmark, run on the same GPU in the same job.

Prints the device copy bandwidth (read + write counted) and torch SDPA decode over a contiguous
KV cache of the same size as flashport's paged one (q [B, Hq, 1, D], k/v [B, Hkv, L, D], bf16,
GQA through enable_gqa), per SDPA backend, as GB/s counting K, V, Q and O bytes once.
usage: peer_torch_decode.py [B] [L] [Hq] [Hkv] [D]
"""
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench


def copy_gbps() -> float:
    n = 1 << 30  # 2 GiB of bf16
    src = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def main() -> None:
    b, l, hq, hkv, d = (int(x) for x in (sys.argv[1:] + ["64", "4096", "32", "8", "128"][len(sys.argv) - 1:]))
    torch.manual_seed(0)
    print(f"peer device=\"{torch.cuda.get_device_name()}\" torch={torch.__version__}")
    print(f"peer copy GB/s={copy_gbps():.0f}")
    q = torch.randn(b, hq, 1, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, hkv, l, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(b, hkv, l, d, device="cuda", dtype=torch.bfloat16)
    c = min(b, 4)  # the float64 check on the first requests only (256 x 16384 would not fit)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q[:c].double(), k[:c].double().repeat_interleave(hq // hkv, 1),
        v[:c].double().repeat_interleave(hq // hkv, 1))
    nbytes = (k.numel() + v.numel() + 2 * q.numel()) * 2
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                          ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
        try:
            with sdpa_kernel(backend):
                fn = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                out = fn()
                err = ((out[:c].double() - ref).abs().max() / ref.abs().max()).item()
                ms = do_bench(fn, warmup=50, rep=300, return_mode="median")
            print(f"peer sdpa_decode backend={name} B={b} L={l} Hq={hq} Hkv={hkv} D={d} "
                  f"time_us={ms * 1e3:.1f} GB/s={nbytes / (ms * 1e-3) / 1e9:.0f} max_rel_err={err:.1e}")
        except Exception as e:  # a backend that refuses this shape is reported, not fatal
            print(f"peer sdpa_decode backend={name} unavailable: {str(e).splitlines()[0][:160]}")


if __name__ == "__main__":
    main()
