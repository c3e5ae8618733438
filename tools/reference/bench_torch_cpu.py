#!/usr/bin/env python3
"""PyTorch CPU encoder throughput at BERT-base size: the peer figures for bertcls's CPU benchmark.

BertModel with random weights (seeded) of the shape in ../shared/models/bert-base-chinese/config.json, eval mode,
torch.inference_mode, fp32, transformers' default attention (SDPA), `torch.set_num_threads(--threads)`.

Cases:
  fixed-1x128, fixed-8x128, fixed-32x128   random ids, no padding (every token is real)
  chnsenticorp-train-N                     the first N ChnSentiCorp train texts, tokenized with bert-base-chinese's
                                           tokenizer (max_length 350), batches of 32 in data order, each padded to its
                                           longest text (the recipe's way); `tokens` counts real tokens only

Each case: warm-up, then timed repeats (at least one, more while under --budget seconds, at most --repeats).
Prints one JSON line per case (case, tokens, seconds, tokens_per_s, ...) and then a table.

    python tools/reference/bench_torch_cpu.py [--threads 2] [--texts 512] [--cases fixed-8x128,real]
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
SHARED = os.path.abspath(os.path.join(ROOT, '..', 'shared'))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--threads', type=int, default=2, help='torch.set_num_threads (default 2)')
    ap.add_argument('--texts', type=int, default=512, help='first N ChnSentiCorp train texts (default 512)')
    ap.add_argument('--model-dir', default=os.path.join(SHARED, 'models', 'bert-base-chinese'),
                    help='folder with config.json and the tokenizer (default ../shared/models/bert-base-chinese)')
    ap.add_argument('--data', default=os.path.join(SHARED, 'data', 'ChnSentiCorp'), help='save_to_disk folder')
    ap.add_argument('--max-length', type=int, default=350)
    ap.add_argument('--batch', type=int, default=32, help='batch size of the real-text case')
    ap.add_argument('--cases', default='fixed-1x128,fixed-8x128,fixed-32x128,real',
                    help='comma-separated: fixed-BxL ... and/or real')
    ap.add_argument('--repeats', type=int, default=5, help='at most this many timed repeats per case')
    ap.add_argument('--budget', type=float, default=20.0, help='seconds of timed repeats per case, after the first')
    ap.add_argument('--warmup', type=int, default=1, help='warm-up passes (real case: the first batch only)')
    a = ap.parse_args()

    from transformers import BertConfig, BertModel
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = BertConfig.from_json_file(os.path.join(a.model_dir, 'config.json'))
    model = BertModel(cfg, add_pooling_layer=False).eval()
    attn = getattr(model.config, '_attn_implementation', '?')
    info = {'torch': torch.__version__, 'threads': torch.get_num_threads(), 'attn': attn,
            'machine': platform.processor() or platform.machine(), 'cpus': os.cpu_count()}
    print('#', json.dumps(info), flush=True)

    def forward(ids, mask, tt):
        with torch.inference_mode():
            return model(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state[:, 0]

    def timed(run_once, warm):
        for _ in range(warm):
            run_once()
        times = []
        t_start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            run_once()
            times.append(time.perf_counter() - t0)
            if len(times) >= a.repeats or time.perf_counter() - t_start + times[-1] > a.budget:
                break
        return times

    results = []
    for case in a.cases.split(','):
        case = case.strip()
        if case.startswith('fixed-'):
            b, l = map(int, case[len('fixed-'):].split('x'))
            g = torch.Generator().manual_seed(b * 1000 + l)
            ids = torch.randint(1000, cfg.vocab_size, (b, l), generator=g)
            ids[:, 0], ids[:, -1] = 101, 102
            mask = torch.ones_like(ids)
            tt = torch.zeros_like(ids)
            times = timed(lambda: forward(ids, mask, tt), a.warmup)
            real, slots = b * l, b * l
        elif case == 'real':
            if not os.path.isdir(a.data):
                print(f'# skip real: {a.data} absent', file=sys.stderr)
                continue
            from datasets import load_from_disk
            from transformers import BertTokenizer
            tok = BertTokenizer.from_pretrained(a.model_dir)
            texts = list(load_from_disk(a.data)['train'][:a.texts]['text'])
            batches = []
            for i in range(0, len(texts), a.batch):
                enc = tok(texts[i:i + a.batch], padding=True, truncation=True, max_length=a.max_length,
                          return_tensors='pt')
                batches.append((enc['input_ids'], enc['attention_mask'], enc['token_type_ids']))
            real = sum(int(m.sum()) for _, m, _ in batches)
            slots = sum(m.numel() for _, m, _ in batches)

            def run_all():
                for ids, mask, tt in batches:
                    forward(ids, mask, tt)
            if a.warmup:
                forward(*batches[0])
            times = timed(run_all, 0)
            case = f'chnsenticorp-train-{len(texts)}'
        else:
            ap.error(f'unknown case {case!r}')
        sec = statistics.median(times)
        r = {'case': case, 'tokens': real, 'padded_tokens': slots, 'seconds': round(sec, 4),
             'tokens_per_s': round(real / sec, 1), 'repeats': len(times), 'min_seconds': round(min(times), 4),
             'threads': torch.get_num_threads(), 'engine': f'pytorch {torch.__version__} cpu fp32 {attn}'}
        results.append(r)
        print(json.dumps(r), flush=True)

    print()
    print(f'{"case":<26} {"tokens":>9} {"padded":>9} {"seconds":>9} {"tokens/s":>10} {"reps":>5}')
    for r in results:
        print(f'{r["case"]:<26} {r["tokens"]:>9} {r["padded_tokens"]:>9} {r["seconds"]:>9.3f} '
              f'{r["tokens_per_s"]:>10.1f} {r["repeats"]:>5}')


if __name__ == '__main__':
    main()
