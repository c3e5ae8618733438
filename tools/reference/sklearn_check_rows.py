#!/usr/bin/env python3
"""scikit-learn's C grid against the designs of `train --search`, on the same held-out
train rows: a paired comparison that the 1,200-row test split is too small to make.

    cargo run --release --example search_designs -- CACHE DATA cls 24 rows.json
    .venv-ref/bin/python tools/reference/sklearn_check_rows.py --cache-dir CACHE --rows rows.json [--json]

For each seed in rows.json (written by examples/search_designs.rs), the grid of
sklearn_grid.py is fitted on train without that seed's check rows, C is chosen on the
validation split (as there), and the chosen model is scored on the check rows. Each
design's check accuracy on the same rows is then compared seed by seed: the mean of the
differences and its standard error (the check sets of two seeds differ more than two
designs on one, so the paired error is far below that of either mean).
"""
import argparse
import json
import math
import os
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sklearn_grid  # noqa: E402


def paired(diffs):
    mean = sum(diffs) / len(diffs)
    if len(diffs) < 2:
        return mean, float('nan')
    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean, math.sqrt(var / len(diffs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--cache-dir', required=True)
    ap.add_argument('--rows', required=True, help='the ROWS_JSON of examples/search_designs.rs')
    ap.add_argument('--data', default=os.path.join(sklearn_grid.ROOT, '..', 'shared', 'data', 'ChnSentiCorp-files'))
    ap.add_argument('--pooling', default='cls', choices=['cls', 'mean'])
    ap.add_argument('--json', action='store_true')
    args = ap.parse_args()

    seeds = json.load(open(args.rows))
    x, y = {}, {}
    for s in ['train', 'validation']:
        texts, labels = sklearn_grid.load_split(args.data, s)
        x[s] = sklearn_grid.cached_features(args.cache_dir, sklearn_grid.content_hash(texts, labels), args.pooling)
        y[s] = np.array(labels)

    sklearn_acc = []
    for entry in seeds:
        check = np.array(entry['check_rows'])
        fit = np.ones(len(y['train']), bool)
        fit[check] = False
        best = None
        for c in sklearn_grid.GRID:
            m = LogisticRegression(C=c, max_iter=5000).fit(x['train'][fit], y['train'][fit])
            val = m.score(x['validation'], y['validation'])
            if best is None or val > best[0]:  # the first of equals: the smallest C
                best = (val, c, m)
        acc = best[2].score(x['train'][check], y['train'][check])
        sklearn_acc.append(acc)
        if not args.json:
            print(f"seed {entry['seed']}: C {best[1]:g} (val {best[0]:.4f}), check acc {acc:.4f}", flush=True)

    designs = [name for name, _ in seeds[0]['check_acc']]
    result = {'pooling': args.pooling, 'seeds': len(seeds),
              'sklearn_check_acc': sum(sklearn_acc) / len(sklearn_acc), 'designs': []}
    for i, name in enumerate(designs):
        accs = [entry['check_acc'][i][1] for entry in seeds]
        diff, se = paired([a - b for a, b in zip(accs, sklearn_acc)])
        result['designs'].append({'design': name, 'check_acc': sum(accs) / len(accs),
                                  'minus_sklearn': diff, 'standard_error': se})
    if args.json:
        print(json.dumps(result))
        return
    print(f"scikit-learn C grid: check acc {result['sklearn_check_acc']:.4f} over {len(seeds)} seeds")
    for d in result['designs']:
        print(f"{d['design']}: check acc {d['check_acc']:.4f}, minus scikit-learn "
              f"{100 * d['minus_sklearn']:+.2f} points (standard error {100 * d['standard_error']:.2f})")


if __name__ == '__main__':
    main()
