#!/usr/bin/env python3
"""Peer measurements for flashport-bench-prefill, run on the same GPU in the same job.

torch.nn.functional.scaled_dot_product_attention, bf16, causal (--mask none: no mask), under
sdpa_kernel(SDPBackend.FLASH_ATTENTION) and sdpa_kernel(SDPBackend.CUDNN_ATTENTION), on the
cases of bench/bench_prefill.c (same names, same ragged lengths: the same splitmix64 draw from
--seed, same FLOP and byte counting):

  single:N        q/k/v [1, N, H, D] (token-major like flashport's, viewed as [1, H, N, D]),
                  is_causal=True. mode=batched.
  ragged:B:LO:HI  B prompts: mode=loop is one SDPA call per request (is_causal=True), the B
                  calls timed together; mode=padded is one call on [B, max_len, H, D] with
                  zero-padded tails at the end (causal rows of real tokens never see a padded
                  key, so the real rows are exact; not run with --mask none). Both count only
                  the real FLOPs, so padding's wasted work counts against it.
                  flashport-bench-prefill compares with the better of the two.
  spec:B:Q:L      B requests, Q query rows at positions L-Q .. L-1 against L keys (bottom-right
                  causal). mode=lower_right: attn_mask=causal_lower_right(Q, L) (CausalBias);
                  mode=bool_mask: an explicit [Q, L] boolean mask. Not is_causal=True: torch
                  aligns that mask top-left when Q != L.
                  --mask none: mode=nomask, no attn_mask. spec:64:512:4608 is the chunked-prefill
                  case (64 requests, 512 new tokens over 4096 cached).
  specdec:*       skipped (the C bench compares it with spec:*). A :paged / :ragged suffix is
                  ignored (torch reads contiguous K/V).

GQA: enable_gqa=True where the installed torch and the backend accept it (gqa=native), else
K/V expanded with repeat_interleave before timing (gqa=repeat; the expansion is not timed).
FLOPs = 4 * D * Hq * sum over query rows of kept keys (row i of a request keeps
kv_len - qo_len + i + 1 keys; every kv_len with --mask none). GB/s count K, V, Q and O bytes
once (the unexpanded K/V).
Every timed configuration is first checked against a float64 computation of --check-rows
sampled query rows x all heads (error per row max|out - ref| / max|ref|, tolerance 1.6e-2);
a wrong result is reported with status=WRONG and not timed.
Timing: CUDA events around batches of back-to-back calls; median of 5 batches sized by
--budget-ms and --max-iters, after a warm-up (as bench_prefill.c: 3 batches of one call when a
call takes over a fifth of the budget, 1 when it takes over the whole budget).

Output: "peer_prefill case=NAME mask=causal|none sdpa=flash|cudnn mode=... gqa=... ... tflops=X
... status=ok" per configuration (status=unavailable reason="..." when a backend refuses the
shape); with --gemm first "peer_ceiling gemm_tflops=X dtype=bf16 n=8192": torch.matmul of two
bf16 8192 x 8192 matrices (2 n^3 FLOPs), the matrix ceiling flashport-bench-prefill divides by.
usage: peer_torch_prefill.py [--cases LIST|default] [--seed S] [--budget-ms MS] [--max-iters N]
                             [--check-rows N] [--qo-heads H] [--kv-heads H] [--head-dim D]
                             [--mask causal|none] [--copy] [--gemm] [--dry-run] [--device cpu]
--device cpu only tests this script on a machine without a GPU (tiny cases; times mean nothing).
"""
import argparse
import math
import sys
import time

DEFAULT_CASES = ("single:1024,single:4096,single:8192,single:16384,ragged:16:256:4096,"
                 "spec:64:4:4096,specdec:64:4:4096")
MASK64 = (1 << 64) - 1
TOLERANCE = 1.6e-2


def splitmix64(state):
    """One step of splitmix64 (as bench_prefill.c): returns (new state, value)."""
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


class Case:
    """A case of bench_prefill.c: per request qo_len and kv_len."""

    def __init__(self, spec, seed, causal):
        fields = spec.split(":")
        if len(fields) > 1 and fields[-1] in ("paged", "ragged"):
            fields = fields[:-1]
        self.name = ":".join(fields)
        self.kind = fields[0]
        try:
            v = [int(x) for x in fields[1:]]
        except ValueError:
            raise SystemExit(f"peer_torch_prefill.py: bad case '{spec}'")
        if any(x <= 0 for x in v):
            raise SystemExit(f"peer_torch_prefill.py: bad case '{spec}'")
        if self.kind == "single" and len(v) == 1:
            self.qo = [v[0]]
            self.kv = [v[0]]
        elif self.kind == "ragged" and len(v) == 3 and v[1] <= v[2]:
            state, self.qo = seed, []
            for _ in range(v[0]):
                state, z = splitmix64(state)
                self.qo.append(v[1] + z % (v[2] - v[1] + 1))
            self.kv = list(self.qo)
        elif self.kind in ("spec", "specdec") and len(v) == 3 and v[1] <= v[2]:
            self.qo = [v[1]] * v[0]
            self.kv = [v[2]] * v[0]
        else:
            raise SystemExit(f"peer_torch_prefill.py: bad case '{spec}'")
        self.batch = len(self.qo)
        self.rows = sum(self.qo)
        self.kv_tokens = sum(self.kv)
        self.causal = causal
        self.kept_keys = sum(self.keys(b, i) for b, q in enumerate(self.qo) for i in range(q))

    def keys(self, b, i):
        """Keys that row i of request b keeps (causal: positions up to its own)."""
        return self.kv[b] - self.qo[b] + i + 1 if self.causal else self.kv[b]

    def flop(self, hq, d):
        return 4.0 * d * hq * self.kept_keys

    def nbytes(self, hq, hkv, d):
        return self.kv_tokens * hkv * d * 2 * 2 + 2 * self.rows * hq * d * 2


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="default")
    p.add_argument("--seed", type=lambda s: int(s, 0), default=1234)
    p.add_argument("--budget-ms", type=float, default=300.0)
    p.add_argument("--max-iters", type=int, default=100)
    p.add_argument("--check-rows", type=int, default=32)
    p.add_argument("--qo-heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--mask", default="causal", choices=("causal", "none"),
                   help="none: every row keeps every key of its request")
    p.add_argument("--copy", action="store_true", help="also measure the device copy GB/s")
    p.add_argument("--gemm", action="store_true",
                   help="also measure the bf16 matmul ceiling (8192^3), for the C bench's "
                        "fraction of the ceiling")
    p.add_argument("--dry-run", action="store_true", help="print the cases; needs no torch")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cpu: test the script itself without a GPU")
    a = p.parse_args()
    # "default" may also be one item of a list (default,single:32768)
    a.cases = ",".join(DEFAULT_CASES if c == "default" else c for c in a.cases.split(","))
    if a.qo_heads <= 0 or a.kv_heads <= 0 or a.qo_heads % a.kv_heads:
        raise SystemExit("peer_torch_prefill.py: --kv-heads must divide --qo-heads")
    return a


def print_dry_run(c, a):
    lengths = ",".join(f"{q}/{l}" for q, l in list(zip(c.qo, c.kv))[:64])
    print(f"case={c.name} B={c.batch} rows={c.rows} kv_tokens={c.kv_tokens} "
          f"kept_keys={c.kept_keys} gflop={c.flop(a.qo_heads, a.head_dim) * 1e-9:.3f} "
          f"gbytes={c.nbytes(a.qo_heads, a.kv_heads, a.head_dim) * 1e-9:.4f} "
          f"lengths={lengths}{',...' if c.batch > 64 else ''}")


def import_torch(need_cuda):
    """torch (with a CUDA device when need_cuda), or a clear message and exit status 2."""
    try:
        import torch
    except ImportError as e:
        print(f"peer_torch_prefill.py: torch is not installed ({e}); the peer needs torch with "
              "CUDA on the GPU machine", file=sys.stderr)
        sys.exit(2)
    if need_cuda and not torch.cuda.is_available():
        print(f"peer_torch_prefill.py: torch {torch.__version__} sees no CUDA device",
              file=sys.stderr)
        sys.exit(2)
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: F401  (torch >= 2.3)
    except ImportError:
        print(f"peer_torch_prefill.py: torch {torch.__version__} has no torch.nn.attention."
              "sdpa_kernel (needs torch >= 2.3)", file=sys.stderr)
        sys.exit(2)
    return torch


def main():
    a = parse_args()
    causal = a.mask == "causal"
    cases = [Case(s, a.seed, causal) for s in a.cases.split(",") if s]
    if a.dry_run:
        for c in cases:
            print_dry_run(c, a)
        return
    torch = import_torch(a.device == "cuda")
    from torch.nn.attention import SDPBackend, sdpa_kernel
    F = torch.nn.functional
    try:
        from torch.nn.attention.bias import causal_lower_right
    except ImportError:
        causal_lower_right = None
    hq, hkv, d = a.qo_heads, a.kv_heads, a.head_dim
    group = hq // hkv
    dev = a.device
    torch.manual_seed(a.seed)
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu (script test only)"
    print(f"peer device=\"{name}\" torch={torch.__version__} "
          f"cuda={torch.version.cuda} cudnn={torch.backends.cudnn.version()}")

    def time_fn(fn):
        """Median seconds per call: CUDA events around batches of back-to-back calls."""
        start = torch.cuda.Event(enable_timing=True) if dev == "cuda" else None
        end = torch.cuda.Event(enable_timing=True) if dev == "cuda" else None

        def batch(n):
            if dev == "cpu":
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                return time.perf_counter() - t0
            start.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e-3

        budget = a.budget_ms * 1e-3
        est = batch(1)
        warm = est
        while warm < 0.05 and warm < budget / 4:
            n = int(min(20, max(1, 0.01 / max(est, 1e-6))))
            t = batch(n)
            warm += t
            est = t / n
        samples = 1 if est > budget else 3 if est * 5 > budget else 5
        iters = int(min(a.max_iters, max(1, budget / (samples * max(est, 1e-7)))))
        times = sorted(batch(iters) / iters for _ in range(samples))
        return times[len(times) // 2], samples, iters

    if a.copy:
        src = torch.randn(1 << 30, device=dev, dtype=torch.bfloat16)  # 2 GiB
        dst = torch.empty_like(src)
        t, _, _ = time_fn(lambda: dst.copy_(src))
        print(f"peer copy GB/s={2 * src.numel() * 2 / t / 1e9:.0f}")
        del src, dst

    if a.gemm:
        n = 8192 if dev == "cuda" else 256
        x = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        y = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        t, _, _ = time_fn(lambda: x @ y)
        print(f"peer_ceiling gemm_tflops={2.0 * n ** 3 / t * 1e-12:.1f} dtype=bf16 n={n}")
        del x, y

    native_gqa = True
    try:  # enable_gqa arrived in torch 2.5
        x = torch.zeros(1, 2, 1, 8, device=dev, dtype=torch.bfloat16)
        F.scaled_dot_product_attention(x, x[:, :1], x[:, :1], enable_gqa=True)
    except Exception:  # TypeError on torch < 2.5; anything else: do not rely on it
        native_gqa = False
    print(f"peer gqa: enable_gqa {'supported' if native_gqa else 'absent: K/V repeat_interleave'}")

    def sdpa(q, k, v, gqa, **kw):
        if gqa == "native":
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)
        return F.scaled_dot_product_attention(q, k, v, **kw)

    for c in cases:
        if c.kind == "specdec":
            continue
        flop, nbytes = c.flop(hq, d), c.nbytes(hq, hkv, d)
        gen = torch.Generator(device=dev).manual_seed(a.seed)

        def rand(*shape):  # uniform [-1, 1) like the C bench, token-major [B, L, H, D]
            return (torch.rand(*shape, device=dev, generator=gen) * 2 - 1).to(torch.bfloat16)

        # Requests as [1, H, L, D] views of token-major storage.
        reqs = [(rand(1, qo, hq, d).transpose(1, 2), rand(1, kv, hkv, d).transpose(1, 2),
                 rand(1, kv, hkv, d).transpose(1, 2)) for qo, kv in zip(c.qo, c.kv)]

        # Sampled rows (request, row): the first, the last, the last of request 0, the rest random.
        rng = torch.Generator().manual_seed(a.seed)
        picks = {0, c.rows - 1, c.qo[0] - 1}
        if c.rows <= a.check_rows:
            picks = set(range(c.rows))
        while len(picks) < min(a.check_rows, c.rows):
            picks.add(int(torch.randint(c.rows, (1,), generator=rng)))
        starts = [0]
        for q in c.qo:
            starts.append(starts[-1] + q)
        sampled = []
        for r in sorted(picks):
            b = max(i for i in range(c.batch) if starts[i] <= r)
            sampled.append((b, r - starts[b]))
        refs = []
        for b, i in sampled:
            q, k, v = reqs[b]
            keys = c.keys(b, i)
            qg = q[0, :, i].double().view(hkv, group, d)  # query head h reads KV head h // group
            logits = torch.einsum("gjd,gkd->gjk", qg, k[0, :, :keys].double()) / d ** 0.5
            refs.append(torch.einsum("gjk,gkd->gjd", logits.softmax(-1),
                                     v[0, :, :keys].double()).reshape(hq, d))

        def check(outs):
            """outs[b]: [1, Hq, qo_len, D] per request; max per-row relative error."""
            worst = 0.0
            for (b, i), ref in zip(sampled, refs):
                got = outs[b][0, :, i].double()
                err = ((got - ref).abs().max() / ref.abs().max()).item()
                if not err <= worst and not math.isnan(worst):  # a NaN stays the worst
                    worst = err
            return worst

        def configs(gqa):
            """(mode, fn, to_list): fn is what is timed, to_list(fn()) the per-request outputs."""
            rep = []
            for q, k, v in reqs:
                if gqa == "repeat":
                    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
                rep.append((q, k, v))
            out = []
            if c.kind == "single":
                q1, k1, v1 = rep[0]
                out.append(("batched", lambda: sdpa(q1, k1, v1, gqa, is_causal=causal),
                            lambda o: [o]))
            elif c.kind == "ragged":
                out.append(("loop", lambda: [sdpa(q, k, v, gqa, is_causal=causal)
                                             for q, k, v in rep], lambda o: o))
                if not causal:  # padded keys would be attended to: no padded mode
                    return out
                lmax = max(c.qo)

                def pad(t):  # [1, H, L, D] -> [1, lmax, H, D], zeros after the real tokens
                    return F.pad(t.transpose(1, 2), (0, 0, 0, 0, 0, lmax - t.shape[2]))

                pq = torch.cat([pad(q) for q, _, _ in rep]).transpose(1, 2)
                pk = torch.cat([pad(k) for _, k, _ in rep]).transpose(1, 2)
                pv = torch.cat([pad(v) for _, _, v in rep]).transpose(1, 2)
                out.append(("padded", lambda: sdpa(pq, pk, pv, gqa, is_causal=True),
                            lambda o: list(o.split(1, 0))))
            else:  # spec: every request has the same shape: one batched call
                sq = torch.cat([q for q, _, _ in rep])
                sk = torch.cat([k for _, k, _ in rep])
                sv = torch.cat([v for _, _, v in rep])
                qo, kv = c.qo[0], c.kv[0]
                if not causal:
                    out.append(("nomask", lambda: sdpa(sq, sk, sv, gqa),
                                lambda o: list(o.split(1, 0))))
                    return out
                if causal_lower_right is not None:
                    bias = causal_lower_right(qo, kv)
                    out.append(("lower_right", lambda: sdpa(sq, sk, sv, gqa, attn_mask=bias),
                                lambda o: list(o.split(1, 0))))
                keep = torch.ones(qo, kv, device=dev, dtype=torch.bool).tril(kv - qo)
                out.append(("bool_mask", lambda: sdpa(sq, sk, sv, gqa, attn_mask=keep),
                            lambda o: list(o.split(1, 0))))
            return out

        for sdpa_name, backend in (("flash", SDPBackend.FLASH_ATTENTION),
                                   ("cudnn", SDPBackend.CUDNN_ATTENTION)):
            modes = {}
            for gqa in (["native"] if native_gqa else []) + ["repeat"]:
                if modes and all(st == "ok" for st, _ in modes.values()):
                    break  # everything ran with native GQA: no need to expand K/V
                for mode, fn, to_list in configs(gqa):
                    if modes.get(mode, (None,))[0] == "ok":
                        continue  # already measured with native GQA
                    head = (f"peer_prefill case={c.name} mask={a.mask} sdpa={sdpa_name} "
                            f"mode={mode} gqa={gqa} "
                            f"B={c.batch} rows={c.rows} Hq={hq} Hkv={hkv} D={d} "
                            f"gflop={flop * 1e-9:.3f}")
                    try:
                        with sdpa_kernel(backend):
                            err = check(to_list(fn()))
                            if not err <= TOLERANCE:
                                modes[mode] = ("WRONG", f"{head} max_row_err={err:.1e} "
                                                        f"status=WRONG")
                                continue
                            t, samples, iters = time_fn(fn)
                    except Exception as e:  # a backend that refuses the shape is reported
                        reason = str(e).splitlines()[0][:160].replace('"', "'") if str(e) else \
                            type(e).__name__
                        if mode not in modes:
                            modes[mode] = ("unavailable",
                                           f"{head} status=unavailable reason=\"{reason}\"")
                        continue
                    modes[mode] = ("ok", f"{head} iters={samples}x{iters} time_us={t * 1e6:.1f} "
                                         f"tflops={flop / t * 1e-12:.4g} "
                                         f"gbps={nbytes / t * 1e-9:.4g} max_row_err={err:.1e} "
                                         f"status=ok")
                    torch.cuda.empty_cache()
            for _, line in modes.values():
                print(line, flush=True)
        del reqs
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
