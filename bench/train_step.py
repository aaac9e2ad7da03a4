"""Whole-model training throughput on one GPU: dnamamba against mamba_ssm's own model, in one process.

    PYTHONPATH=. python3 bench/train_step.py --anchors .anchors --out bench/results      # on the GPU machine
    python3 bench/train_step.py --render bench/results/train_step_h200.json             # table + plot, anywhere

Both models are 8 layers at d_model 256, d_state 16, expand 2, byte vocabulary, with fp32 parameters, bf16
autocast and fused AdamW. mamba_ssm 2.3.2's MambaLMHeadModel runs on its fast path (causal_conv1d built, so
its blocks take mamba_inner_fn, with fused add + norm), built from the sdists in the anchors folder by
`load_fast_path()`. Each step is `--tokens` tokens (batch = tokens / L) and its loss is the next-byte
cross-entropy: dnamamba's through `MambaLM.next_token_nll` (as training runs it), mamba_ssm's through
F.cross_entropy of its fp32-cast logits (as its users write it). tokens/s is from the median step; peak GB is
torch.cuda.max_memory_allocated over the configuration's steps, model and optimizer state included.

`--longest` then doubles L at batch 1 from 2^21 until a step runs out of memory, for each model.
`--profile` writes a torch.profiler table of one dnamamba fused step at B=1, L=2^20 without checkpointing.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

IMPLS = ("dnamamba_fused", "dnamamba_fused_ckpt", "dnamamba_reference_ckpt", "mamba_ssm")
LABELS = {"dnamamba_fused": "dnamamba fused", "dnamamba_fused_ckpt": "dnamamba fused, block checkpointing",
          "dnamamba_reference_ckpt": "dnamamba modules (reference path), block checkpointing",
          "mamba_ssm": "mamba_ssm MambaLMHeadModel (fast path)"}
D_MODEL, N_LAYER = 256, 8


def build(impl: str, device):
    """(model, loss_fn) for one implementation; loss_fn(model, tokens (B, L)) -> scalar."""
    torch.manual_seed(0)
    if impl == "mamba_ssm":
        from mamba_ssm.models.config_mamba import MambaConfig as SsmConfig
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

        cfg = SsmConfig(d_model=D_MODEL, n_layer=N_LAYER, vocab_size=256, ssm_cfg={"layer": "Mamba1"},
                        rms_norm=True, residual_in_fp32=True, fused_add_norm=True, pad_vocab_size_multiple=8)
        model = MambaLMHeadModel(cfg, device=device)

        def loss_fn(m, tokens):
            logits = m(tokens).logits  # (B, L, V)
            return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), tokens[:, 1:].flatten())
        return model, loss_fn
    from dnamamba.model import MambaConfig, MambaLM

    cfg = MambaConfig(d_model=D_MODEL, n_layer=N_LAYER, d_state=16, expand=2, fused=impl != "dnamamba_reference_ckpt",
                      checkpoint_blocks=impl.endswith("_ckpt"))
    model = MambaLM(cfg).to(device)

    def loss_fn(m, tokens):
        return m.next_token_nll(tokens).mean()
    return model, loss_fn


def train_step(model, loss_fn, opt, tokens) -> torch.Tensor:
    """One optimizer step under bf16 autocast, finished on the device; returns the loss."""
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = loss_fn(model, tokens)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return loss


def time_steps(impl: str, batch: int, seqlen: int, steps: int, device) -> dict:
    """Median step time of `steps` training steps after one warm-up step, and the peak memory."""
    row = {"impl": impl, "seqlen": seqlen, "batch": batch}
    model = opt = None
    try:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        model, loss_fn = build(impl, device)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        tokens = torch.randint(1, 256, (batch, seqlen), device=device)
        times = []
        for i in range(steps + 1):  # the first step compiles the kernels
            torch.cuda.synchronize()
            t = time.perf_counter()
            loss = train_step(model, loss_fn, opt, tokens)
            if i:
                times.append(time.perf_counter() - t)
        step_s = statistics.median(times)
        row.update(step_s=step_s, tokens_per_s=batch * seqlen / step_s,
                   peak_gb=torch.cuda.max_memory_allocated() / 1e9, loss=float(loss), timed_steps=steps,
                   parameters=sum(p.numel() for p in model.parameters()))
    except torch.cuda.OutOfMemoryError:
        row.update(oom=True, peak_gb=torch.cuda.max_memory_allocated() / 1e9)
    finally:
        del model, opt
        gc.collect()
        torch.cuda.empty_cache()
    return row


def profile_step(device, out: Path) -> str:
    """Kernel-time table of one fused training step at B=1, L=2^20, no checkpointing."""
    from torch.profiler import ProfilerActivity, profile

    model, loss_fn = build("dnamamba_fused", device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    tokens = torch.randint(1, 256, (1, 2**20), device=device)
    train_step(model, loss_fn, opt, tokens)  # compiles the kernels outside the profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        train_step(model, loss_fn, opt, tokens)
    text = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30)
    (out / "train_step_profile_h200.txt").write_text(text)
    return text


def render(data: dict, out: Path) -> None:
    """bench/results/train_step_h200.md and .png from the JSON."""
    rows = [r for r in data["rows"] if r.get("section") == "throughput"]
    seqlens = sorted({r["seqlen"] for r in rows})
    by = {(r["impl"], r["seqlen"]): r for r in rows}
    impls = [i for i in IMPLS if any((i, L) in by for L in seqlens)]
    cell = lambda r: "OOM" if r.get("oom") else f"{r['tokens_per_s'] / 1e6:.2f}M ({r['peak_gb']:.1f} GB)"
    lines = ["# Whole-model training throughput on the H200", "",
             "8 layers, d_model 256, d_state 16, expand 2, bytes; bf16 autocast, fp32 parameters, fused AdamW, "
             f"{data['tokens']} tokens a step (batch = tokens / L). All models timed in one process; tokens/s from "
             "the median step, peak memory from torch.cuda.max_memory_allocated. Generated by bench/train_step.py "
             "from train_step_h200.json.", "",
             "| L | " + " | ".join(LABELS[i] for i in impls) + " | fused / mamba_ssm |",
             "|---" * (len(impls) + 2) + "|"]
    for L in seqlens:
        cells = [cell(by[(i, L)]) if (i, L) in by else "" for i in impls]
        f, m = by.get(("dnamamba_fused", L)), by.get(("mamba_ssm", L))
        ratio = f"{f['tokens_per_s'] / m['tokens_per_s']:.2f}x" if f and m and not f.get("oom") and not m.get("oom") else ""
        lines.append(f"| {L} | " + " | ".join(cells) + f" | {ratio} |")
    longest = [r for r in data["rows"] if r.get("section") == "longest"]
    if longest:
        lines += ["", "Longest context at batch 1 (one step each; L doubles from 2^21 until out of memory):", "",
                  "| implementation | L | tokens/s | peak GB |", "|---|---|---|---|"]
        for r in longest:
            tps = "OOM" if r.get("oom") else f"{r['tokens_per_s'] / 1e6:.2f}M"
            lines.append(f"| {LABELS[r['impl']]} | 2^{r['seqlen'].bit_length() - 1} | {tps} | {r['peak_gb']:.1f} |")
    lines += ["", f"Device: {data['device']}, torch {data['torch']}, triton {data['triton']}."]
    (out / "train_step_h200.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for i in impls:
        pts = [(L, by[(i, L)]["tokens_per_s"] / 1e6) for L in seqlens if (i, L) in by and not by[(i, L)].get("oom")]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=LABELS[i])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length L (tokens a step fixed)")
    ax.set_ylabel("training tokens/s (millions)")
    ax.set_title("8 x 256 Mamba, one H200")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "train_step_h200.png", dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--anchors", help="folder with mamba_ssm_anchor.py and the sdists (omit: no mamba_ssm rows)")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--seqlens", default="4096,32768,131072,1048576")
    ap.add_argument("--tokens", type=int, default=2**20)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--longest", action="store_true")
    ap.add_argument("--longest-impls", default="dnamamba_fused_ckpt,mamba_ssm")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--render", metavar="JSON", help="only write the table and plot from an existing JSON")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.render:
        render(json.loads(Path(args.render).read_text()), Path(args.render).parent)
        return
    import triton

    impls = [i for i in args.impls.split(",") if i]
    if args.anchors:
        sys.path.insert(0, str(Path(args.anchors).resolve()))
        from mamba_ssm_anchor import load_fast_path

        load_fast_path()
    else:
        impls = [i for i in impls if i != "mamba_ssm"]
    device = torch.device("cuda")
    data = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "tokens": args.tokens, "rows": []}

    def save():
        (out / "train_step_h200.json").write_text(json.dumps(data, indent=2))
        render(data, out)

    for seqlen in (int(s) for s in args.seqlens.split(",")):
        for impl in impls:
            row = time_steps(impl, max(1, args.tokens // seqlen), seqlen, args.steps, device)
            row["section"] = "throughput"
            print(row, flush=True)
            data["rows"].append(row)
            save()
    if args.longest:
        for impl in (i for i in args.longest_impls.split(",") if i in impls):
            seqlen = 2**21
            while True:
                row = time_steps(impl, 1, seqlen, 1, device)
                row["section"] = "longest"
                print(row, flush=True)
                data["rows"].append(row)
                save()
                if row.get("oom") or seqlen >= 2**25:
                    break
                seqlen *= 2
    if args.profile:
        print(profile_step(device, out), flush=True)
    save()
    print((out / "train_step_h200.md").read_text())


if __name__ == "__main__":
    main()
