#!/usr/bin/env python3
"""Mean-pooled references for `bertcls --pooling mean`, from the HF transformers dumps that
make_fixtures.py writes (run it first; this script needs only numpy and safetensors).

sentence-transformers' mean pooling (models/Pooling.py, pooling_mode_mean_tokens):
    sum(last_hidden_state * attention_mask[..., None], 1) / clamp(attention_mask.sum(1), min=1e-9)
computed here in float64 from the fp32 hidden states, then rounded to fp32 once.

    python tools/reference/mean_pool_reference.py      # writes tests/fixtures/{tiny,minilm,e5-small}/mean-pooled.safetensors

Each output holds `mean` F32 [texts, hidden]. The tiny model's last hidden state is
`hidden_states.2` of tiny/reference.safetensors; the real models' is `last_hidden_state`.
"""
import os

import numpy as np
from safetensors.numpy import load_file, save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
FIX = os.path.join(ROOT, 'tests', 'fixtures')


def mean_pool(hidden, mask):
    m = mask.astype(np.float64)[..., None]
    return ((hidden.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)).astype(np.float32)


def last_hidden(t):
    if 'last_hidden_state' in t:
        return t['last_hidden_state']
    layers = sorted(int(k.split('.')[1]) for k in t if k.startswith('hidden_states.'))
    return t[f'hidden_states.{layers[-1]}']


def main():
    for name in ['tiny', 'minilm', 'e5-small']:
        src = os.path.join(FIX, name, 'reference.safetensors')
        if not os.path.isfile(src):
            print(f'[mean_pool_reference] {os.path.relpath(src, ROOT)} is absent: skipped')
            continue
        t = load_file(src)
        mean = mean_pool(last_hidden(t), t['attention_mask'])
        out = os.path.join(FIX, name, 'mean-pooled.safetensors')
        save_file({'mean': mean}, out, metadata={'pooling': 'mean over attention_mask (sentence-transformers)',
                                                 'source': f'{name}/reference.safetensors'})
        print(f'[mean_pool_reference] wrote {os.path.relpath(out, ROOT)} {list(mean.shape)}')


if __name__ == '__main__':
    main()
