#!/usr/bin/env python3
"""`--long chunk` reference: the windows HF tokenizers cuts long texts into, for the tiny
fixture model, written to tests/fixtures/tiny/chunk-windows.json (needs only `tokenizers`).

    python tools/reference/chunk_reference.py

Each case is tokenizer(text, truncation=True, max_length=L, stride=S,
return_overflowing_tokens=True) as the `tokenizers` library does it (Tokenizer.from_file,
enable_truncation(max_length=L, stride=S), encode(text), then the encoding and its
`overflowing` windows in order): every window has its own [CLS] and [SEP] and shares S
tokens with the one before. bertcls must produce the same ids, window for window.
"""
import json
import os

from tokenizers import Tokenizer

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
TINY = os.path.join(ROOT, 'tests', 'fixtures', 'tiny')

TEXTS = [
    '这本书写得非常精彩，读完让人回味无穷，强烈推荐！',
    '酒店位置很好，离地铁站很近，房间干净整洁，服务也很周到。早餐种类丰富，味道不错，前台的服务员态度特别热情。',
    '好',
    'ThinkPad的键盘手感很好,散热也不错,性价比很高。电池很耐用，出差一整天都不用充电，太棒了。',
]
SETTINGS = [(8, 2), (12, 0), (16, 5), (350, 64)]


def main():
    cases = []
    for max_length, stride in SETTINGS:
        tok = Tokenizer.from_file(os.path.join(TINY, 'model', 'tokenizer.json'))
        tok.no_padding()
        tok.enable_truncation(max_length=max_length, stride=stride)
        for text in TEXTS:
            enc = tok.encode(text)
            windows = [enc.ids] + [o.ids for o in enc.overflowing]
            cases.append({'text': text, 'max_length': max_length, 'stride': stride, 'windows': windows})
    out = os.path.join(TINY, 'chunk-windows.json')
    with open(out, 'w', encoding='utf-8') as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)
        f.write('\n')
    print(f'[chunk_reference] wrote {os.path.relpath(out, ROOT)}: {len(cases)} cases')


if __name__ == '__main__':
    main()
