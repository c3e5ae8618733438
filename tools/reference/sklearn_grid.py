#!/usr/bin/env python3
"""The scikit-learn yardstick for `bertcls train --search`: LogisticRegression over a grid of C
on the very features bertcls cached, C chosen on the validation split, scored on test.

    .venv-ref/bin/pip install scikit-learn
    .venv-ref/bin/python tools/reference/sklearn_grid.py --cache-dir C [--pooling cls|mean|cls+mean|mean-last4|...] [--json]

C is the folder that holds the entries: what `bertcls --cache-dir` was given, or
`features/` in $BERTCLS_CACHE (not $BERTCLS_CACHE itself).

The features are read from bertcls's feature cache (what `train` and `test` wrote, so the
search and this grid see the same floats): each entry is `<digest>.safetensors` with a
`cls` tensor [rows, hidden] and its key as metadata; the split it belongs to is found by
its `data_hash`, the split hash bertcls computes (src/data/mod.rs content_hash: per row,
the text's UTF-8 length as u64 LE, the text, the label as u64 LE, all through sha256),
computed here over ../shared/data/ChnSentiCorp-files/<split>.jsonl, the same rows as the
save_to_disk copy. Prints one line per C and the chosen one; --json prints one object.
"""
import argparse
import glob
import hashlib
import json
import os
import struct
import time

import numpy as np
from safetensors import safe_open
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
SPLITS = ['train', 'validation', 'test']
GRID = [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0]


def content_hash(texts, labels):
    h = hashlib.sha256()
    for t, y in zip(texts, labels):
        b = t.encode('utf-8')
        h.update(struct.pack('<Q', len(b)))
        h.update(b)
        h.update(struct.pack('<Q', y))
    return h.hexdigest()


def load_split(data_dir, split):
    rows = [json.loads(line) for line in open(os.path.join(data_dir, f'{split}.jsonl'), encoding='utf-8')]
    return [r['text'] for r in rows], [int(r['label']) for r in rows]


def cached_features(cache_dir, data_hash, pooling):
    for path in glob.glob(os.path.join(cache_dir, '*.safetensors')):
        with safe_open(path, 'np') as f:
            meta = f.metadata() or {}
            if meta.get('data_hash') == data_hash and meta.get('pooling', 'cls') == pooling:
                return f.get_tensor('cls')
    raise SystemExit(f'no {pooling} features for data hash {data_hash[:16]} in {cache_dir}: '
                     f'run bertcls train and test with --cache-dir {cache_dir} first')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--cache-dir', required=True)
    ap.add_argument('--data', default=os.path.join(ROOT, '..', 'shared', 'data', 'ChnSentiCorp-files'))
    ap.add_argument('--pooling', default='cls', help='the pooling bertcls cached: cls, mean, cls+mean, mean-last4, ...')
    ap.add_argument('--json', action='store_true')
    args = ap.parse_args()

    x, y = {}, {}
    for s in SPLITS:
        texts, labels = load_split(args.data, s)
        x[s] = cached_features(args.cache_dir, content_hash(texts, labels), args.pooling)
        y[s] = np.array(labels)
    started = time.perf_counter()
    trials = []
    for c in GRID:
        m = LogisticRegression(C=c, max_iter=5000).fit(x['train'], y['train'])
        trials.append({'C': c, 'val_acc': m.score(x['validation'], y['validation']), 'model': m})
    best = max(trials, key=lambda t: t['val_acc'])  # the first of equals: the smallest C
    seconds = time.perf_counter() - started
    pred = best['model'].predict(x['test'])
    result = {'pooling': args.pooling, 'grid': GRID, 'best_C': best['C'], 'val_acc': best['val_acc'],
              'test_acc': float((pred == y['test']).mean()),
              'test_macro_f1': float(f1_score(y['test'], pred, average='macro')),
              'search_seconds': seconds,
              'trials': [{'C': t['C'], 'val_acc': t['val_acc']} for t in trials]}
    if args.json:
        print(json.dumps(result))
        return
    for t in trials:
        print(f"C {t['C']:<8g} val acc {t['val_acc']:.4f}")
    print(f"best C {result['best_C']:g}: test accuracy {result['test_acc']:.4f}, macro-F1 {result['test_macro_f1']:.4f}; "
          f"grid of {len(GRID)} fits in {seconds:.1f}s")


if __name__ == '__main__':
    main()
