#!/usr/bin/env python3
"""`bertcls encode --device cuda` against HF transformers at full BERT-base size, on a GPU.

Random weights of bert-base-chinese's shape (config.json from the model folder, HF's own
initialisation, seed 0) are saved as safetensors beside the real tokenizer; real
ChnSentiCorp texts are encoded by HF `BertModel` (fp32, eager attention, TF32 off, batches
of 32 padded to their longest, `last_hidden_state[:, 0]`) and by bertcls. Token ids must
be identical, and every text's [CLS] within 2e-4 relative (max |diff| / max |HF|): fp32 on
both sides, differing only in summation order over 12 layers.

With --precisions bf16,fp16 it checks bertcls's half-precision encoder against its fp32
one on the same texts: every text's [CLS] within HALF_TOLERANCE (max |diff| / max |fp32|,
below), and a logistic-regression head trained on fp32 features of --train-data texts
scoring the test texts' half features within 0.3 accuracy points of their fp32 features or
of HF BertModel's cast to the same precision (whose [CLS] error is printed beside ours).

With --bench it also times PyTorch on the same GPU, for docs/BENCHMARKS.md: BertModel fp32
(SDPA attention, TF32 off) and fp16 (SDPA) at 1x128, 32x128 and 256x128, and the recipe's
way over the texts (batches of 32 padded to their longest).

    python3 tools/reference/check_encoder_gpu.py --bertcls .gpu/bin/bertcls \\
        --model-dir .gpu/shared/models/bert-base-chinese \\
        --data .gpu/shared/data/ChnSentiCorp-files/test.jsonl [--texts 1200] [--bench] \\
        [--precisions bf16,fp16 --train-data .gpu/shared/data/ChnSentiCorp-files/train.jsonl]

Exit status 0 when the check passes; one JSON object per line on stdout.
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import torch
from safetensors.numpy import load_file
from transformers import BertConfig, BertModel, BertTokenizerFast

TOLERANCE = 2e-4
MAX_LENGTH = 350
# Half precision against bertcls fp32, max |diff| / max |fp32| per text. With u the unit
# roundoff (fp16 2^-11, bf16 2^-8): each layer rounds its weights once and its activations
# about eight times (QKV, probabilities, context, attention output, LayerNorm, FFN
# intermediate, FFN output, LayerNorm); LayerNorm renormalises every sublayer, so errors
# add up over the 12 layers rather than compound: ~sqrt(12 * 9) u = 10u per element
# relative to the row's scale, and the largest of 768 elements 3-4 times that. 32u
# bounds it: fp16 1.6e-2, bf16 1.25e-1.
HALF_TOLERANCE = {"fp16": 32 / 2048, "bf16": 32 / 256}
# Test accuracy of a head trained on fp32 features, scored on half features: at most this
# many points from the fp32 score.
ACCURACY_POINTS = 0.3


def emit(obj):
    print(json.dumps(obj, ensure_ascii=False), flush=True)


def read_texts(path, n, labels=None):
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            # bertcls --file reads one text per line and skips blank ones: make the two sides
            # see the same texts.
            row = json.loads(line)
            text = " ".join(row["text"].split())
            if text:
                texts.append(text)
                if labels is not None:
                    labels.append(int(row["label"]))
            if len(texts) == n:
                break
    return texts


def make_model(model_dir, work):
    """A BERT-base folder: random weights (seed 0) + the real config and tokenizer."""
    torch.manual_seed(0)
    config = BertConfig.from_pretrained(model_dir)
    model = BertModel(config)
    out = work / "model"
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out, safe_serialization=True)
    for name in ["tokenizer.json", "vocab.txt", "tokenizer_config.json"]:
        if (model_dir / name).exists():
            shutil.copy(model_dir / name, out / name)
    return out


@torch.inference_mode()
def hf_cls(model, tokenizer, texts, batch=32):
    cls, ids = [], []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i : i + batch], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        ids.extend([row[row_mask.bool()].tolist() for row, row_mask in zip(enc["input_ids"], enc["attention_mask"])])
        enc = {k: v.cuda() for k, v in enc.items()}
        cls.append(model(**enc).last_hidden_state[:, 0].float().cpu().numpy())
    return np.concatenate(cls), ids


def run_bertcls(binary, model, texts_file, out, device, precision="fp32"):
    cmd = [binary, "encode", "--model", str(model), "--device", device, "--max-length", str(MAX_LENGTH),
           "--precision", precision, "--file", str(texts_file), "--out", str(out), "--ids"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"bertcls failed ({proc.returncode}): {' '.join(cmd)}")
    return load_file(str(out)), proc.stderr, wall


def compare(name, ours, want, ids_want):
    n = len(ids_want)
    for i in range(n):
        row = ours["input_ids"][i]
        got = row[ours["attention_mask"][i] == 1].tolist()
        if got != ids_want[i]:
            raise SystemExit(f"{name}: text {i}: token ids differ from HF's: {got[:20]}... vs {ids_want[i][:20]}...")
    diff = np.abs(ours["cls"] - want).max(axis=1)
    rel = diff / np.abs(want).max(axis=1)
    worst = int(rel.argmax())
    result = {"check": name, "texts": n, "max_abs_diff": float(diff.max()), "max_rel_diff": float(rel.max()),
              "worst_text": worst, "tolerance_rel": TOLERANCE, "pass": bool(rel.max() <= TOLERANCE)}
    emit(result)
    return result["pass"]


def compare_half(precision, ours, fp32, who="bertcls"):
    diff = np.abs(ours["cls"] - fp32["cls"]).max(axis=1)
    rel = diff / np.abs(fp32["cls"]).max(axis=1)
    a, b = ours["cls"].astype(np.float64), fp32["cls"].astype(np.float64)
    cos = (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    tol = HALF_TOLERANCE[precision]
    result = {"check": f"{who} {precision} vs bertcls fp32 [CLS]", "texts": len(rel), "max_rel_diff": float(rel.max()),
              "mean_rel_diff": float(rel.mean()), "min_cosine": float(cos.min()), "worst_text": int(rel.argmax()),
              "tolerance_rel": tol, "pass": bool(rel.max() <= tol)}
    emit(result)
    return result["pass"]


def train_head(x, y, steps=500):
    """Logistic regression (Linear(C, 2), AdamW, full batch) on standardised features."""
    torch.manual_seed(0)
    x = torch.tensor(x, device="cuda")
    y = torch.tensor(y, device="cuda")
    mean, std = x.mean(0), x.std(0) + 1e-6
    head = torch.nn.Linear(x.shape[1], 2).cuda()
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head((x - mean) / std), y).backward()
        opt.step()
    return lambda feats: head((torch.tensor(feats, device="cuda") - mean) / std).argmax(1).cpu().numpy()


def torch_half_cls(model_path, tokenizer, texts, precision):
    """HF BertModel cast to `precision` (eager attention): what a PyTorch user gets."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    model = BertModel.from_pretrained(model_path, attn_implementation="eager", dtype=dtype).cuda().eval()
    cls, _ = hf_cls(model, tokenizer, texts)
    del model
    torch.cuda.empty_cache()
    return cls


def accuracy_check(precision, predict, test_half, test_fp32, torch_half, labels):
    """A head trained on fp32 features scores half features: pass when the accuracy is within
    ACCURACY_POINTS of the fp32 features' or of PyTorch's at the same precision. A random
    BERT's [CLS] rows differ from one another by little more than half precision's rounding,
    so half features can cost points in PyTorch too: the peer's own loss is the reference."""
    labels = np.asarray(labels)
    acc32 = float((predict(test_fp32["cls"]) == labels).mean() * 100)
    acc = float((predict(test_half["cls"]) == labels).mean() * 100)
    acc_torch = float((predict(torch_half) == labels).mean() * 100)
    result = {"check": f"head trained on fp32 features, test accuracy on {precision} features",
              "accuracy_fp32": round(acc32, 2), f"accuracy_{precision}": round(acc, 2),
              f"accuracy_torch_{precision}": round(acc_torch, 2),
              "points": round(acc - acc32, 2), "tolerance_points": ACCURACY_POINTS,
              "pass": bool(acc >= min(acc32, acc_torch) - ACCURACY_POINTS)}
    emit(result)
    return result["pass"]


@torch.inference_mode()
def bench_torch(model_path, texts, tokenizer):
    model = BertModel.from_pretrained(model_path, attn_implementation="sdpa", dtype=torch.float32).cuda().eval()
    config = model.config

    def timed(fn, reps):
        fn()
        torch.cuda.synchronize()
        runs = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            runs.append(time.perf_counter() - t)
        return sorted(runs)[len(runs) // 2]

    for b, l in [(1, 128), (32, 128), (256, 128)]:
        ids = torch.randint(1000, config.vocab_size, (b, l), device="cuda")
        mask = torch.ones_like(ids)
        secs = timed(lambda: model(input_ids=ids, attention_mask=mask), 20)
        emit({"case": f"torch sdpa fp32 {b}x{l}", "ms": round(secs * 1e3, 2), "tokens_per_s": round(b * l / secs)})
    half = BertModel.from_pretrained(model_path, attn_implementation="sdpa", dtype=torch.float16).cuda().eval()
    for b, l in [(1, 128), (32, 128), (256, 128)]:
        ids = torch.randint(1000, config.vocab_size, (b, l), device="cuda")
        mask = torch.ones_like(ids)
        secs = timed(lambda: half(input_ids=ids, attention_mask=mask), 20)
        emit({"case": f"torch sdpa fp16 {b}x{l}", "ms": round(secs * 1e3, 2), "tokens_per_s": round(b * l / secs)})
    del half

    def recipe():
        for i in range(0, len(texts), 32):
            enc = tokenizer(texts[i : i + 32], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
            model(**{k: v.cuda(non_blocking=True) for k, v in enc.items()}).last_hidden_state[:, 0].cpu()

    real = sum(len(x) for x in tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"])
    secs = timed(recipe, 3)
    emit({"case": f"torch sdpa fp32 recipe batches of 32 padded, {len(texts)} texts", "tokens": real,
          "seconds": round(secs, 3), "tokens_per_s": round(real / secs)})


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bertcls", required=True)
    p.add_argument("--model-dir", required=True, type=pathlib.Path)
    p.add_argument("--data", required=True, help="ChnSentiCorp split as JSON lines ({text, label})")
    p.add_argument("--texts", type=int, default=1200)
    p.add_argument("--work", type=pathlib.Path, default=pathlib.Path("/tmp/bertcls-gpu-check"))
    p.add_argument("--cpu", action="store_true", help="also check bertcls --device cpu (slow)")
    p.add_argument("--bench", action="store_true")
    p.add_argument("--precisions", default="", help="comma-separated half precisions to check: bf16,fp16")
    p.add_argument("--train-data", help="JSON lines to train the accuracy check's head on (fp32 features)")
    p.add_argument("--train-texts", type=int, default=3000)
    p.add_argument("--skip-hf", action="store_true",
                   help="reuse the model of an earlier run in --work and skip the HF reference: bertcls fp32 is the baseline")
    p.add_argument("--bench-only", action="store_true", help="only the PyTorch timings, on the model of an earlier run")
    args = p.parse_args()

    if not torch.cuda.is_available():
        print("SKIPPED: torch finds no GPU")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    args.work.mkdir(parents=True, exist_ok=True)

    labels = []
    texts = read_texts(args.data, args.texts, labels)
    texts_file = args.work / "texts.txt"
    texts_file.write_text("\n".join(texts) + "\n", encoding="utf-8")
    reuse = args.skip_hf or args.bench_only
    model_path = args.work / "model" if reuse else make_model(args.model_dir, args.work)
    if not (model_path / "model.safetensors").is_file():
        raise SystemExit(f"{model_path}: no model of an earlier run; run without --skip-hf / --bench-only first")
    tokenizer = BertTokenizerFast.from_pretrained(model_path)
    if args.bench_only:
        bench_torch(model_path, texts, tokenizer)
        return 0
    ok = True
    if args.skip_hf:
        fp32, _, wall = run_bertcls(args.bertcls, model_path, texts_file, args.work / "cls-cuda.safetensors", "cuda")
        emit({"case": "bertcls encode --device cuda (fp32 baseline)", "wall_seconds": round(wall, 2)})
    else:
        model = BertModel.from_pretrained(model_path, attn_implementation="eager", dtype=torch.float32).cuda().eval()
        started = time.perf_counter()
        want, ids_want = hf_cls(model, tokenizer, texts)
        torch.cuda.synchronize()
        emit({"case": "hf eager fp32 reference", "texts": len(texts), "seconds": round(time.perf_counter() - started, 3)})
        del model
        torch.cuda.empty_cache()

    devices = [] if args.skip_hf else ["cuda"] + (["cpu"] if args.cpu else [])
    for device in devices:
        ours, log, wall = run_bertcls(args.bertcls, model_path, texts_file, args.work / f"cls-{device}.safetensors", device)
        if device == "cuda" and " on cuda:" not in log:
            emit({"check": "bertcls ran on the GPU", "pass": False,
                  "why": "bertcls did not report 'loaded ... on cuda:N': --device cuda fell back or is not wired"})
            ok = False
        emit({"case": f"bertcls encode --device {device}", "wall_seconds": round(wall, 2),
              "log": [l for l in log.splitlines() if l.startswith(("loaded", "encoded"))]})
        ok &= compare(f"bertcls {device} vs HF eager fp32 [CLS]", ours, want, ids_want)
        if device == "cuda":
            fp32 = ours

    precisions = [p for p in args.precisions.split(",") if p]
    predict = None
    if precisions and args.train_data:
        train_labels = []
        train_texts = read_texts(args.train_data, args.train_texts, train_labels)
        train_file = args.work / "train-texts.txt"
        train_file.write_text("\n".join(train_texts) + "\n", encoding="utf-8")
        train32, _, wall = run_bertcls(args.bertcls, model_path, train_file, args.work / "train-fp32.safetensors", "cuda")
        emit({"case": f"bertcls encode fp32 {len(train_texts)} train texts", "wall_seconds": round(wall, 2)})
        predict = train_head(train32["cls"], train_labels)
    for precision in precisions:
        ours, log, wall = run_bertcls(args.bertcls, model_path, texts_file, args.work / f"cls-{precision}.safetensors",
                                      "cuda", precision)
        emit({"case": f"bertcls encode --device cuda --precision {precision}", "wall_seconds": round(wall, 2),
              "log": [l for l in log.splitlines() if l.startswith(("loaded", "encoded"))]})
        ok &= compare_half(precision, ours, fp32)
        torch_half = torch_half_cls(model_path, tokenizer, texts, precision)
        compare_half(precision, {"cls": torch_half}, fp32, who="torch")
        if predict is not None:
            ok &= accuracy_check(precision, predict, ours, fp32, torch_half, labels)

    if args.bench:
        bench_torch(model_path, texts, tokenizer)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
