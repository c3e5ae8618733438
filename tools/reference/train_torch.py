#!/usr/bin/env python3
"""The recipe in PyTorch, for comparison with `bertcls train` (same model, features, batching, optimiser, epochs).

1. Encode each split once with the frozen BertModel (eval, no grad): [CLS] = last_hidden_state[:, 0], texts
   truncated at --max-length (350), sorted by length into batches (--encode-batch) padded to their longest, the
   features put back in data order. With --features FILE they are saved (safetensors) and re-used by later runs
   with the same model, data and max_length.
2. Train Linear(hidden, num_labels) on the cached features: --epochs (100), batch 32 shuffled every epoch with a
   seeded generator, the last incomplete batch dropped, AdamW lr 1e-5, weight decay 0.01 (PyTorch defaults
   otherwise), cross-entropy on logits (not the recipe's double softmax). A log line every --log-every (5) steps
   with loss and batch accuracy; validation loss and accuracy after every epoch.
3. Test accuracy over every row of the test split (the recipe drops the last partial batch; we do not).

Prints timings and, last, one JSON line {"encode_s", "train_s", "test_accuracy", "val_accuracy", ...}.

    python tools/reference/train_torch.py --model models/multilingual-e5-small --data ../shared/data/ChnSentiCorp \\
        [--features runs/e5-chnsenticorp.safetensors] [--epochs 100] [--threads 2]
"""
import argparse
import hashlib
import json
import os
import sys
import time

import torch
from safetensors.torch import load_file, save_file

os.environ.setdefault('TRANSFORMERS_VERBOSITY', 'error')   # no report of the unused pooler weights
os.environ.setdefault('HF_DATASETS_DISABLE_PROGRESS_BARS', '1')


def log(*a):
    print(*a, flush=True)


def load_splits(path, text_col, label_col):
    from datasets import ClassLabel, Dataset, load_from_disk
    d = load_from_disk(path)
    if isinstance(d, Dataset):
        d = {'train': d}
    splits, names = {}, None
    for name in d:
        ds = d[name]
        feat = ds.features.get(label_col)
        if isinstance(feat, ClassLabel) and names is None:
            names = list(feat.names)
        splits[name] = (list(ds[text_col]), [int(x) for x in ds[label_col]])
    return splits, names


def data_digest(splits, model, max_length):
    h = hashlib.sha256()
    h.update(f'{os.path.abspath(model)}\0{max_length}\0'.encode())
    for name in sorted(splits):
        texts, labels = splits[name]
        h.update(name.encode() + b'\0')
        for t, l in zip(texts, labels):
            h.update(t.encode() + b'\0' + str(l).encode() + b'\n')
    return h.hexdigest()


def encode(model, tok, texts, max_length, batch):
    enc = tok(texts, truncation=True, max_length=max_length)
    ids = enc['input_ids']
    tts = enc.get('token_type_ids') or [[0] * len(x) for x in ids]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.empty(len(ids), model.config.hidden_size)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    with torch.inference_mode():
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            L = max(len(ids[i]) for i in idx)
            x = torch.full((len(idx), L), pad, dtype=torch.long)
            m = torch.zeros((len(idx), L), dtype=torch.long)
            t = torch.zeros((len(idx), L), dtype=torch.long)
            for r, i in enumerate(idx):
                n = len(ids[i])
                x[r, :n] = torch.tensor(ids[i])
                m[r, :n] = 1
                t[r, :n] = torch.tensor(tts[i])
            h = model(input_ids=x, attention_mask=m, token_type_ids=t).last_hidden_state[:, 0]
            out[idx] = h.float()
    return out, sum(len(x) for x in ids)


def evaluate(fc, x, y):
    with torch.no_grad():
        logits = fc(x)
        loss = torch.nn.functional.cross_entropy(logits, y).item()
        acc = (logits.argmax(-1) == y).float().mean().item()
    return loss, acc


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--model', required=True, help='HF model folder (config.json, model.safetensors, tokenizer)')
    ap.add_argument('--data', required=True, help='datasets save_to_disk folder (DatasetDict: train, validation, test)')
    ap.add_argument('--text-column', default='text')
    ap.add_argument('--label-column', default='label')
    ap.add_argument('--max-length', type=int, default=350)
    ap.add_argument('--encode-batch', type=int, default=32)
    ap.add_argument('--features', help='safetensors file of encoded features: loaded when it matches, else written')
    ap.add_argument('--epochs', type=int, default=100)
    ap.add_argument('--batch-size', type=int, default=32)
    ap.add_argument('--lr', type=float, default=1e-5)
    ap.add_argument('--weight-decay', type=float, default=0.01)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--log-every', type=int, default=5, help='log a line every N steps (0: never)')
    ap.add_argument('--threads', type=int, help='torch.set_num_threads (default: torch default)')
    ap.add_argument('--attn', default='sdpa', choices=['sdpa', 'eager'], help='attention implementation')
    a = ap.parse_args()

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    splits, label_names = load_splits(a.data, a.text_column, a.label_column)
    for req in ('train', 'test'):
        if req not in splits:
            sys.exit(f'error: {a.data} has no {req!r} split (it has: {", ".join(splits)})')
    num_labels = len(label_names) if label_names else max(max(l) for _, l in splits.values()) + 1
    log(f'data {a.data}: ' + ', '.join(f'{k} {len(v[0])}' for k, v in splits.items()) +
        f'; labels {label_names or list(range(num_labels))}; torch threads {torch.get_num_threads()}')

    digest = data_digest(splits, a.model, a.max_length)
    feats, encode_s, tokens = None, 0.0, 0
    if a.features and os.path.exists(a.features):
        from safetensors import safe_open
        with safe_open(a.features, 'pt') as f:
            meta = f.metadata() or {}
        if meta.get('digest') == digest:
            feats = load_file(a.features)
            log(f'features loaded from {a.features} (no encoding)')
        else:
            log(f'{a.features} is for other model/data/max_length: encoding afresh')
    if feats is None:
        from transformers import AutoTokenizer, BertModel
        tok = AutoTokenizer.from_pretrained(a.model)
        model = BertModel.from_pretrained(a.model, attn_implementation=a.attn, add_pooling_layer=False).eval()
        feats = {}
        t0 = time.perf_counter()
        for name, (texts, labels) in splits.items():
            t1 = time.perf_counter()
            x, n = encode(model, tok, texts, a.max_length, a.encode_batch)
            tokens += n
            feats[f'{name}.x'] = x
            feats[f'{name}.y'] = torch.tensor(labels, dtype=torch.int64)
            dt = time.perf_counter() - t1
            log(f'encoded {name}: {len(texts)} texts, {n} tokens in {dt:.1f} s ({n / max(dt, 1e-9):.0f} tokens/s)')
        encode_s = time.perf_counter() - t0
        if a.features:
            os.makedirs(os.path.dirname(os.path.abspath(a.features)), exist_ok=True)
            tmp = a.features + '.tmp'
            save_file({k: v.contiguous() for k, v in feats.items()}, tmp,
                      metadata={'digest': digest, 'model': os.path.abspath(a.model), 'max_length': str(a.max_length)})
            os.replace(tmp, a.features)
            log(f'features saved to {a.features}')

    x_tr, y_tr = feats['train.x'], feats['train.y']
    has_val = 'validation.x' in feats
    hidden = x_tr.shape[1]
    torch.manual_seed(a.seed)
    fc = torch.nn.Linear(hidden, num_labels)
    opt = torch.optim.AdamW(fc.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    g = torch.Generator().manual_seed(a.seed)
    n, bs = x_tr.shape[0], a.batch_size
    steps_per_epoch = n // bs
    if steps_per_epoch == 0:
        sys.exit(f'error: train split has {n} rows, fewer than one batch of {bs}')
    log(f'training Linear({hidden}, {num_labels}): {a.epochs} epochs x {steps_per_epoch} steps, batch {bs}, '
        f'AdamW lr {a.lr} wd {a.weight_decay}, seed {a.seed}')
    val_acc = None
    t0 = time.perf_counter()
    for epoch in range(1, a.epochs + 1):
        perm = torch.randperm(n, generator=g)
        for step in range(steps_per_epoch):
            idx = perm[step * bs:(step + 1) * bs]
            xb, yb = x_tr[idx], y_tr[idx]
            logits = fc(xb)
            loss = torch.nn.functional.cross_entropy(logits, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if a.log_every and step % a.log_every == 0:
                acc = (logits.argmax(-1) == yb).float().mean().item()
                log(f'epoch {epoch} step {step} loss {loss.item():.4f} acc {acc:.4f}')
        if has_val:
            vl, val_acc = evaluate(fc, feats['validation.x'], feats['validation.y'])
            log(f'epoch {epoch} validation loss {vl:.4f} accuracy {val_acc:.4f}')
    train_s = time.perf_counter() - t0
    test_loss, test_acc = evaluate(fc, feats['test.x'], feats['test.y'])
    log(f'test: {feats["test.x"].shape[0]} rows, loss {test_loss:.4f}, accuracy {test_acc:.4f}')
    log(f'encode {encode_s:.1f} s ({tokens} tokens), train {train_s:.1f} s ({a.epochs * steps_per_epoch} steps)')
    print(json.dumps({'encode_s': round(encode_s, 3), 'train_s': round(train_s, 3), 'test_accuracy': test_acc,
                      'val_accuracy': val_acc, 'test_loss': test_loss, 'epochs': a.epochs,
                      'steps': a.epochs * steps_per_epoch, 'encode_tokens': tokens, 'torch': torch.__version__,
                      'threads': torch.get_num_threads()}), flush=True)


if __name__ == '__main__':
    main()
