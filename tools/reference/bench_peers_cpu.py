#!/usr/bin/env python3
"""PyTorch and ONNX Runtime timed the way bertcls's CPU benchmarks time themselves: the peers of
benches/encoder_cpu.rs (fixed shapes) and benches/latency_cpu.rs (one 60-token text, batch 1).

Models:
  bert-base   BertModel with random weights (seed 0) of ../shared/models/bert-base-chinese/config.json's shape
  e5-small    models/multilingual-e5-small, its real weights

ONNX Runtime runs the model exported by torch.onnx.export (opset 17, dynamic batch and sequence axes) and then
optimised by onnxruntime.transformers.optimizer (model_type='bert': fused Attention, SkipLayerNormalization,
BiasGelu, EmbedLayerNormalization), in a session with intra_op_num_threads=--threads, graph optimisation ALL.

Cases (same inputs and timing as the Rust benches):
  fixed-BxL    B texts of L tokens, no padding: 1 warm-up, then runs until --budget seconds and at least 2; median
  latency-60   one text of 60 tokens: 5 warm-ups, then the median of 50
Prints one JSON line per case.

    python tools/reference/bench_peers_cpu.py export --model bert-base      # once: writes --onnx-dir
    python tools/reference/bench_peers_cpu.py run --engine ort --model bert-base --cases fixed-1x128,latency-60
    python tools/reference/bench_peers_cpu.py run --engine torch --model e5-small --cases latency-60
"""
import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
SHARED = os.path.abspath(os.path.join(ROOT, '..', 'shared'))
MODELS = {
    'bert-base': os.path.join(SHARED, 'models', 'bert-base-chinese'),
    'e5-small': os.path.join(ROOT, 'models', 'multilingual-e5-small'),
}
INPUTS = ['input_ids', 'attention_mask', 'token_type_ids']


def load_torch(name, attn='sdpa'):
    """PyTorch's default SDPA attention to time; the eager one to export (the attention fusion of
    onnxruntime.transformers.optimizer recognises the eager graph, not the SDPA one)."""
    from transformers import BertConfig, BertModel
    if name == 'bert-base':
        torch.manual_seed(0)
        cfg = BertConfig.from_json_file(os.path.join(MODELS[name], 'config.json'))
        cfg._attn_implementation = attn
        model = BertModel(cfg, add_pooling_layer=False)
    else:
        model = BertModel.from_pretrained(MODELS[name], add_pooling_layer=False, attn_implementation=attn)
    return model.eval()


def batch(vocab, b, l):
    """The ids of benches/common fixed_batch: spread over the vocabulary, the same for every engine."""
    ids = np.array([[(i * 7919 + j * 104729) % (vocab - 1000) + 1000 for j in range(l)] for i in range(b)],
                   dtype=np.int64)
    return {'input_ids': ids, 'attention_mask': np.ones_like(ids), 'token_type_ids': np.zeros_like(ids)}


def export(a):
    model = load_torch(a.model, attn='eager')
    cfg = model.config
    os.makedirs(a.onnx_dir, exist_ok=True)
    raw = os.path.join(a.onnx_dir, f'{a.model}.onnx')
    opt = os.path.join(a.onnx_dir, f'{a.model}-opt.onnx')
    feeds = {k: torch.from_numpy(v) for k, v in batch(cfg.vocab_size, 2, 16).items()}
    axes = {k: {0: 'batch', 1: 'seq'} for k in INPUTS}
    axes['last_hidden_state'] = {0: 'batch', 1: 'seq'}
    class ByName(torch.nn.Module):
        """Positional inputs in INPUTS order, passed to BertModel by name."""
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    with torch.inference_mode():
        torch.onnx.export(ByName(model), tuple(feeds[k] for k in INPUTS), raw,
                          input_names=INPUTS, output_names=['last_hidden_state'], dynamic_axes=axes,
                          opset_version=17, dynamo=False)
    from onnxruntime.transformers import optimizer
    m = optimizer.optimize_model(raw, model_type='bert', num_heads=cfg.num_attention_heads,
                                 hidden_size=cfg.hidden_size)
    m.save_model_to_file(opt)
    print(json.dumps({'exported': opt, 'fused': m.get_fused_operator_statistics()}))
    # The optimised graph must still compute the model: compare with PyTorch on one batch.
    import onnxruntime as ort
    feeds = batch(cfg.vocab_size, 3, 37)
    model = load_torch(a.model)  # afresh: the export leaves the traced model altered
    with torch.inference_mode():
        want = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()
    for path in (raw, opt):
        got = ort.InferenceSession(path, providers=['CPUExecutionProvider']).run(None, feeds)[0]
        print(json.dumps({'graph': path, 'max_abs_diff_vs_torch': float(np.abs(got - want).max())}))


def run(a):
    torch.set_num_threads(a.threads)
    if a.engine == 'ort':
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = os.path.join(a.onnx_dir, f'{a.model}-opt.onnx')
        sess = ort.InferenceSession(path, so, providers=['CPUExecutionProvider'])
        from transformers import BertConfig
        vocab = BertConfig.from_json_file(os.path.join(MODELS[a.model], 'config.json')).vocab_size
        engine = f'onnxruntime {ort.__version__} cpu fp32, optimised graph'

        def forward(feeds):
            return sess.run(None, feeds)[0][:, 0]
    else:
        model = load_torch(a.model)
        vocab = model.config.vocab_size
        engine = f'pytorch {torch.__version__} cpu fp32 {model.config._attn_implementation}'

        def forward(feeds):
            with torch.inference_mode():
                return model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state[:, 0]

    for case in a.cases.split(','):
        if case.startswith('fixed-'):
            b, l = map(int, case[len('fixed-'):].split('x'))
            feeds = batch(vocab, b, l)
            forward(feeds)
            times, started = [], time.perf_counter()
            while len(times) < 2 or time.perf_counter() - started < a.budget:
                t0 = time.perf_counter()
                forward(feeds)
                times.append(time.perf_counter() - t0)
            sec = statistics.median(times)
            r = {'case': f'{b}x{l}', 'tokens': b * l, 'ms': round(sec * 1e3, 2),
                 'tokens_per_s': round(b * l / sec, 1), 'runs': len(times)}
        elif case == 'latency-60':
            feeds = batch(vocab, 1, 60)
            for _ in range(5):
                forward(feeds)
            times = []
            for _ in range(50):
                t0 = time.perf_counter()
                forward(feeds)
                times.append(time.perf_counter() - t0)
            r = {'case': f'latency-{a.model}-1x60', 'median_ms': round(statistics.median(times) * 1e3, 2),
                 'runs': 50}
        else:
            raise SystemExit(f'bench_peers_cpu.py: unknown case {case!r} (fixed-BxL or latency-60)')
        r.update({'model': a.model, 'engine': engine, 'threads': a.threads})
        print(json.dumps(r), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = ap.add_subparsers(dest='cmd', required=True)
    for cmd in ('export', 'run'):
        p = sub.add_parser(cmd)
        p.add_argument('--model', choices=sorted(MODELS), default='bert-base')
        p.add_argument('--onnx-dir', default=os.path.join(ROOT, 'target', 'onnx'),
                       help='where export writes and run reads the .onnx files (default target/onnx)')
    r = sub.choices['run']
    r.add_argument('--engine', choices=['ort', 'torch'], required=True)
    r.add_argument('--threads', type=int, default=2)
    r.add_argument('--cases', default='fixed-1x128,fixed-8x128,fixed-32x128,latency-60')
    r.add_argument('--budget', type=float, default=10.0, help='seconds of timed runs per fixed case (default 10)')
    a = ap.parse_args()
    export(a) if a.cmd == 'export' else run(a)


if __name__ == '__main__':
    main()
