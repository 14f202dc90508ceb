"""A scale model: PROJECTIONS, NOT MEASUREMENTS. Step time of BERT-base DynaBERT training on 8 GPUs per node,
1/2/4/8 nodes, reference (tutorial: 4 gradient all-reduces per optimizer step, one per width, no overlap)
vs project (1 fused all-reduce per step, after the last width's backward, no overlap).

    python -m benchmarks.scale_model --step-time results/step_time_1proc.json \
        [--allreduce results/step_time_2proc.json] --out results/

Inputs that are MEASURED (on this CPU, MiniLM-L6-H384, 32 x 64 tokens, step_time_1proc.json):
  * the cost of each width's forward+backward and of the teacher forward(s), as fractions of the full-width
    student forward+backward (project: teacher once under no_grad; reference: teacher inside every width);
  * all-reduce bytes per optimizer step in units of the parameter bytes (step_time_2proc.json: 1 vs 4).

ASSUMPTIONS (all overridable on the command line):
  * compute scales with matmul FLOPs. Per token, forward, at width w (every encoder matmul is sliced by w):
        F(w) = L * w * (8 h^2 + 4 s h + 4 h f)      (QKV + output projections, attention scores and
                                                     context, FFN); forward+backward = 3 F(w).
    MiniLM (L=6, h=384, f=1536) and BERT-base (L=12, h=768, f=3072) both scale linearly in w, so the
    measured per-width fractions carry over unchanged; the absolute scale comes from FLOPs;
  * GPU compute: NVIDIA A100 SXM dense FP16/BF16 tensor-core peak 312 TFLOP/s (NVIDIA A100 datasheet)
    at an assumed 40% utilisation for BERT-base mixed-precision training = 124.8 TFLOP/s effective;
  * BERT-base: 110e6 parameters, gradients all-reduced in fp32 (440 MB); per-GPU batch 32 x 128 tokens
    (global batch 32 x GPUs, weak scaling);
  * hierarchical ring all-reduce (reduce-scatter and all-gather inside the node over NVLink, ring
    all-reduce of the shards between nodes, all GPUs of a node sharing its network bandwidth B_inter):
        T_ar(S) = 2 (g-1)/g * S / B_nvlink + 2 (n-1)/n * S / B_inter
    g = 8 GPUs per node, n nodes, S bytes. B_nvlink = 230 GB/s (NCCL all-reduce bus bandwidth typically
    reported for DGX A100 with nccl-tests; assumption). B_inter = 25, 100, 400 Gb/s per node at 100%
    efficiency (an ideal network: the comm times are lower bounds). Latency (alpha) terms are ignored:
    every message is hundreds of MB;
  * AdamW step: 28 bytes of HBM traffic per parameter at 1.555 TB/s (A100 40GB HBM2); the project also
    pays one concat + one split of the gradients (4 x S bytes of HBM traffic) for its fused buffer;
  * no overlap of communication with computation on either side (the reference's DataParallel could
    overlap its last bucketed all-reduce with backward; this model does not credit that), except in the
    project's opt-in variants:
  * ``compress.optim.allreduce_dtype: bf16`` (one column): the all-reduce moves S/2 bytes (NCCL: all-to-all
    + all-gather of bf16, the sum in fp32, launcher/gradient_sync.py), plus a cast down and up of the
    gradients (12 bytes of HBM traffic per parameter);
  * ``compress.optim.overlap_allreduce`` (one column, and one with both): widths narrowest first, buckets of
    --bucket-mb reduced while the full width's backward (2/3 of its forward+backward) runs; ideal
    pipelining: exposed communication = max(T_ar - that backward, T_ar x bucket/S), the last bucket (the
    embeddings, finished at the very end of backward) never overlapping.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

MINILM = {"layers": 6, "hidden": 384, "ffn": 1536, "params": 22.7e6}
BERT_BASE = {"layers": 12, "hidden": 768, "ffn": 3072, "params": 110e6}
NODES = (1, 2, 4, 8)
INTER_GBITS = (25, 100, 400)
BANNER = "PROJECTIONS, NOT MEASUREMENTS"


def flops_per_token_fwd(layers: int, hidden: int, ffn: int, seq: int, width: float = 1.0) -> float:
    """Matmul FLOPs of one token's forward pass through the encoder at width ``width``."""
    return layers * width * (8 * hidden ** 2 + 4 * seq * hidden + 4 * hidden * ffn)


def ring_allreduce_seconds(nbytes: float, n: int, bandwidth: float) -> float:
    """Ring all-reduce among n participants: 2 (n-1)/n * bytes / bandwidth (bytes/s)."""
    return 0.0 if n <= 1 else 2.0 * (n - 1) / n * nbytes / bandwidth


def hierarchical_allreduce_seconds(nbytes: float, gpus_per_node: int, nodes: int, intra_bw: float,
                                   inter_bw: float) -> float:
    """Intra-node reduce-scatter + all-gather (2 (g-1)/g S / B_intra) plus the inter-node ring all-reduce
    of the shards with the node's aggregate bandwidth (2 (n-1)/n S / B_inter). Bandwidths in bytes/s."""
    return (ring_allreduce_seconds(nbytes, gpus_per_node, intra_bw)
            + ring_allreduce_seconds(nbytes, nodes, inter_bw))


def compute_fractions(step: dict) -> dict:
    """Per-step compute in units of one full-width student forward+backward, from step_time_*.json."""
    p, r = step["project"], step["reference"]
    unit = p["median_width_seconds"]["1.0"]
    widths = list(p["median_width_seconds"])
    ref_teacher_per_width = r["median_teacher_seconds"] / len(widths)
    proj = {"teacher": p["median_teacher_seconds"] / unit,
            "widths": {w: p["median_width_seconds"][w] / unit for w in widths}}
    ref = {"teacher": r["median_teacher_seconds"] / unit,
           "widths": {w: (r["median_width_seconds"][w] - ref_teacher_per_width) / unit for w in widths}}
    for side in (proj, ref):
        side["total"] = side["teacher"] + sum(side["widths"].values())
    return {"unit_seconds_measured": unit, "project": proj, "reference": ref,
            "measured_ratio_compute": proj["total"] / ref["total"]}


def project_table(fractions: dict, allreduces: dict, a: argparse.Namespace) -> dict:
    base = BERT_BASE
    tokens = a.per_gpu_batch * a.seq
    flops_full = 3 * flops_per_token_fwd(base["layers"], base["hidden"], base["ffn"], a.seq) * tokens
    effective = a.gpu_peak_tflops * 1e12 * a.gpu_utilisation
    unit_gpu = flops_full / effective  # one full-width student forward+backward on one GPU
    grad_bytes = a.params * a.grad_bytes_per_param
    optimizer_s = a.params * 28 / (a.hbm_TBps * 1e12)
    fusion_s = 4 * grad_bytes / (a.hbm_TBps * 1e12)
    compute = {"project": fractions["project"]["total"] * unit_gpu,
               "reference": fractions["reference"]["total"] * unit_gpu}
    bucket = min(1.0, a.bucket_mb * 2 ** 20 / grad_bytes)  # the last bucket's share of the bytes
    cast_s = a.params * 12 / (a.hbm_TBps * 1e12)
    window = 2.0 / 3.0 * unit_gpu  # the full width's backward, the step's last

    def exposed(t_ar: float) -> float:
        return max(t_ar - window, t_ar * bucket)

    rows = []
    for nodes in NODES:
        for gbits in (INTER_GBITS if nodes > 1 else (None,)):
            inter = (gbits or INTER_GBITS[0]) * 1e9 / 8
            t_ar = hierarchical_allreduce_seconds(grad_bytes, a.gpus_per_node, nodes, a.nvlink_GBps * 1e9, inter)
            gpus = nodes * a.gpus_per_node
            proj = compute["project"] + optimizer_s + fusion_s + allreduces["project"] * t_ar
            ref = compute["reference"] + optimizer_s + allreduces["reference"] * t_ar
            t_half = hierarchical_allreduce_seconds(grad_bytes / 2, a.gpus_per_node, nodes, a.nvlink_GBps * 1e9,
                                                    inter)
            base = compute["project"] + optimizer_s + fusion_s
            variants = {"bf16": base + cast_s + allreduces["project"] * t_half,
                        "overlap": base + allreduces["project"] * exposed(t_ar),
                        "bf16_overlap": base + cast_s + allreduces["project"] * exposed(t_half)}
            rows.append({"nodes": nodes, "gpus": gpus, "inter_node_Gbps": gbits,
                         "allreduce_seconds": t_ar,
                         "project_step_seconds": proj, "reference_step_seconds": ref,
                         "ratio_project_over_reference": proj / ref,
                         "project_samples_per_s": a.per_gpu_batch * gpus / proj,
                         "reference_samples_per_s": a.per_gpu_batch * gpus / ref,
                         "project_comm_share": allreduces["project"] * t_ar / proj,
                         "reference_comm_share": allreduces["reference"] * t_ar / ref,
                         "project_variants_step_seconds": variants})
    return {"unit_gpu_seconds": unit_gpu, "flops_full_width_fwd_bwd_per_gpu_batch": flops_full,
            "effective_flops_per_s": effective, "grad_bytes": grad_bytes, "optimizer_seconds": optimizer_s,
            "fusion_copy_seconds": fusion_s, "compute_seconds": compute, "cast_seconds": cast_s,
            "overlap_window_seconds": window, "last_bucket_share": bucket, "rows": rows}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks.scale_model", description=BANNER)
    p.add_argument("--step-time", required=True, help="step_time_1proc.json (per-width compute)")
    p.add_argument("--allreduce", default=None, help="step_time_2proc.json (all-reduces per step); "
                   "default: 1 (project) and 4 (reference), as the code is written")
    p.add_argument("--out", required=True)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--nvlink-GBps", type=float, default=230.0)
    p.add_argument("--gpu-peak-tflops", type=float, default=312.0)
    p.add_argument("--gpu-utilisation", type=float, default=0.40)
    p.add_argument("--hbm-TBps", type=float, default=1.555)
    p.add_argument("--params", type=float, default=BERT_BASE["params"])
    p.add_argument("--grad-bytes-per-param", type=int, default=4)
    p.add_argument("--per-gpu-batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--bucket-mb", type=float, default=25.0, help="compress.optim.allreduce_bucket_mb")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    with open(a.step_time) as f:
        step = json.load(f)
    fractions = compute_fractions(step)
    allreduces = {"project": 1, "reference": 4, "source": "as the code is written (no measurement given)"}
    if a.allreduce and os.path.exists(a.allreduce):
        with open(a.allreduce) as f:
            dist = json.load(f)["allreduce"]
        allreduces = {"project": dist["project_bytes_over_param_bytes"][0],
                      "reference": dist["reference_bytes_over_param_bytes"][0],
                      "source": f"measured all-reduce bytes per step / parameter bytes in {a.allreduce}"}
    table = project_table(fractions, allreduces, a)
    seq_measured = step["fixed_batch"]["seq_len"]
    flops_ratio = (flops_per_token_fwd(BERT_BASE["layers"], BERT_BASE["hidden"], BERT_BASE["ffn"], a.seq)
                   / flops_per_token_fwd(MINILM["layers"], MINILM["hidden"], MINILM["ffn"], seq_measured))
    result = {
        "benchmark": "scale_model",
        "banner": BANNER,
        "measured_inputs": {"step_time": a.step_time, "fractions": fractions, "allreduces_per_step": allreduces},
        "assumptions": {
            "model": "BERT-base: 12 layers, hidden 768, FFN 3072, %.0fM parameters, fp32 gradients" % (a.params / 1e6),
            "flops_per_token_fwd": "L * w * (8 h^2 + 4 s h + 4 h f); fwd+bwd = 3x",
            "flops_ratio_bert_base_s%d_over_minilm_s%d_per_token" % (a.seq, seq_measured): flops_ratio,
            "gpu": f"A100: {a.gpu_peak_tflops} TFLOP/s dense FP16/BF16 peak (NVIDIA A100 datasheet) x "
                   f"{a.gpu_utilisation:.0%} assumed utilisation = {table['effective_flops_per_s'] / 1e12:.1f} TFLOP/s",
            "per_gpu_batch": f"{a.per_gpu_batch} x {a.seq} tokens; global batch {a.per_gpu_batch} x GPUs",
            "nvlink_bus_bandwidth_GBps": a.nvlink_GBps,
            "inter_node": "25/100/400 Gb/s per node, ideal (100% efficiency)",
            "allreduce_formula": "T_ar = 2(g-1)/g * S/B_nvlink + 2(n-1)/n * S/B_inter",
            "optimizer": f"28 B/param HBM traffic at {a.hbm_TBps} TB/s",
            "overlap": "none (communication after backward on both sides), except the project's opt-in overlap "
                       "columns: exposed = max(T_ar - full-width backward, T_ar x last bucket share)",
            "bf16_allreduce": "S/2 bytes through the same formula, + 12 B/param of HBM traffic for the casts",
            "gpus_per_node": a.gpus_per_node,
        },
        "projection": table,
        "machine": common.machine_info(),
    }
    rows = [[r["nodes"], r["gpus"], "NVLink only" if r["inter_node_Gbps"] is None else r["inter_node_Gbps"],
             r["allreduce_seconds"] * 1000, r["project_step_seconds"] * 1000, r["reference_step_seconds"] * 1000,
             r["ratio_project_over_reference"], r["project_samples_per_s"], r["reference_samples_per_s"],
             f"{r['project_comm_share']:.0%} / {r['reference_comm_share']:.0%}",
             *(r["project_variants_step_seconds"][k] * 1000 for k in ("bf16", "overlap", "bf16_overlap"))]
            for r in table["rows"]]
    fp, fr = fractions["project"], fractions["reference"]
    md = "\n".join([
        f"# Scale model, BERT-base on {a.gpus_per_node} GPUs per node: **{BANNER}**",
        "",
        "Every number below is computed from a formula, a few CPU measurements and stated assumptions; "
        "nothing was run on a GPU.",
        "",
        "Measured on this CPU (%s; %d x %d tokens), per optimizer step, in units of one full-width student "
        "forward+backward (%.3f s here):" % (step["model"], step["fixed_batch"]["global_batch"], seq_measured,
                                             fractions["unit_seconds_measured"]),
        f"project {fp['total']:.2f} (teacher once, no_grad: {fp['teacher']:.2f}; widths "
        + ", ".join(f"{w}: {v:.2f}" for w, v in fp["widths"].items()) + f"); reference {fr['total']:.2f} "
        f"(teacher in every width: {fr['teacher']:.2f}; widths "
        + ", ".join(f"{w}: {v:.2f}" for w, v in fr["widths"].items())
        + ").",
        f"All-reduce bytes per step in parameter-bytes: project {allreduces['project']:g}, reference "
        f"{allreduces['reference']:g} ({allreduces['source']}).",
        "",
        "Assumptions: " + "; ".join(f"{k}: {v}" for k, v in result["assumptions"].items()) + ".",
        "",
        f"GPU compute per step: project {table['compute_seconds']['project'] * 1000:.1f} ms, reference "
        f"{table['compute_seconds']['reference'] * 1000:.1f} ms "
        f"(one full-width fwd+bwd of {a.per_gpu_batch} x {a.seq}: "
        f"{table['unit_gpu_seconds'] * 1000:.1f} ms); AdamW {table['optimizer_seconds'] * 1000:.1f} ms; project's "
        f"gradient fusion copies {table['fusion_copy_seconds'] * 1000:.1f} ms; "
        f"gradients {common.fmt_bytes(table['grad_bytes'])}.",
        "",
        "Step time = compute + optimizer (+ fusion copies, project) + (all-reduces per step) x T_ar, with",
        "T_ar = 2(g-1)/g * S / B_nvlink + 2(n-1)/n * S / B_inter  (hierarchical ring; g GPUs/node, n nodes, S bytes).",
        "",
        common.md_table(["nodes", "GPUs", "inter-node Gb/s", "one all-reduce ms", "project step ms",
                         "reference step ms", "project/reference", "project samples/s", "reference samples/s",
                         "comm share project / reference", "project bf16 all-reduce ms", "project overlap ms",
                         "project bf16 + overlap ms"], rows),
        "",
        f"Opt-in columns: `compress.optim.allreduce_dtype: bf16` (casts {table['cast_seconds'] * 1000:.2f} ms), "
        f"`compress.optim.overlap_allreduce` (window: the full width's backward, "
        f"{table['overlap_window_seconds'] * 1000:.1f} ms; last bucket {table['last_bucket_share']:.0%} of the "
        "bytes, never overlapped), and both.",
        "",
        f"**{BANNER}.**",
    ])
    common.write_result(a.out, "scale_model", result, md)
    print(md, flush=True)
    return result


if __name__ == "__main__":
    main()
