//! Head checkpoints: our safetensors files (head + AdamW state, for `--resume`) and,
//! read-only, the recipe's own `torch.save(model.state_dict(), f)` files.
//!
//! A torch.save file is a zip holding `<archive>/data.pkl`, a protocol-2 pickle of
//! the state dict whose tensors point at raw little-endian storages
//! `<archive>/data/<key>`. Unpickling in general runs arbitrary code, so instead of a
//! general unpickler this module has a small VM that knows only the opcodes and the
//! callables a state dict needs (`OrderedDict`, `_rebuild_tensor_v2`, the
//! `torch.*Storage` types), and refuses anything else.

use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Read};
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use safetensors::{Dtype, SafeTensors};

mod pickle;

use crate::head::LinearHead;
use crate::le_floats::{self, f32_bytes};
use crate::optim::AdamW;
use pickle::{unpickle_state_dict, StorageRef, TensorRef};

/// Prefix of the metadata keys that hold the optimiser's step count and settings.
const OPTIM_PREFIX: &str = "optim.";

/// Tensor name prefixes a head may come under: ours and the recipe's (`fc.`),
/// HF's `*ForSequenceClassification` (`classifier.`), and a bare `nn.Linear`.
const HEAD_PREFIXES: [&str; 3] = ["fc.", "classifier.", ""];

pub struct LoadedHead {
    pub head: LinearHead,
    /// The AdamW state saved with the head; none in a torch.save file.
    pub optim: Option<AdamW>,
    /// The caller's metadata as saved, without the `optim.*` keys.
    pub metadata: BTreeMap<String, String>,
}

/// Writes `head` (as `fc.weight` [L, C] and `fc.bias` [L], F32), the AdamW state
/// when given, and `metadata` to `path` as safetensors, atomically.
pub fn save_head(
    path: &Path,
    head: &LinearHead,
    optim: Option<&AdamW>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let (l, c) = (head.num_labels, head.hidden);
    assert_eq!(
        (head.weight.len(), head.bias.len()),
        (l * c, l),
        "head tensors do not match its shape"
    );
    if let Some(key) = metadata.keys().find(|k| k.starts_with(OPTIM_PREFIX)) {
        bail!(
            "cannot save {}: metadata key {key} is reserved for the optimiser state",
            path.display()
        );
    }
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = vec![
        ("fc.weight".into(), vec![l, c], f32_bytes(&head.weight)),
        ("fc.bias".into(), vec![l], f32_bytes(&head.bias)),
    ];
    let mut info: HashMap<String, String> = metadata.clone().into_iter().collect();
    if let Some(opt) = optim {
        assert_eq!(
            opt.m.len(),
            head.num_params(),
            "AdamW state does not match the head"
        );
        let (mw, mb) = opt.m.split_at(l * c);
        let (vw, vb) = opt.v.split_at(l * c);
        tensors.push(("optim.exp_avg.fc.weight".into(), vec![l, c], f32_bytes(mw)));
        tensors.push((
            "optim.exp_avg_sq.fc.weight".into(),
            vec![l, c],
            f32_bytes(vw),
        ));
        tensors.push(("optim.exp_avg.fc.bias".into(), vec![l], f32_bytes(mb)));
        tensors.push(("optim.exp_avg_sq.fc.bias".into(), vec![l], f32_bytes(vb)));
        // Rust prints the shortest decimal that parses back to the same f64.
        for (key, value) in [
            ("step", opt.step.to_string()),
            ("lr", opt.lr.to_string()),
            ("beta1", opt.beta1.to_string()),
            ("beta2", opt.beta2.to_string()),
            ("eps", opt.eps.to_string()),
            ("weight_decay", opt.weight_decay.to_string()),
        ] {
            info.insert(format!("{OPTIM_PREFIX}{key}"), value);
        }
    }
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            Ok((
                name.as_str(),
                safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| anyhow!("cannot serialise head for {}: {e}", path.display()))?;
    let bytes = crate::safetensors_out::serialize(views, Some(info))
        .map_err(|e| anyhow!("cannot serialise head for {}: {e}", path.display()))?;
    crate::fsio::atomic_write(path, &bytes)
}

/// Reads a head checkpoint: our safetensors, or a torch.save zip of a state dict, with
/// the AdamW state saved beside the head, which must be complete when any of it is
/// there (`train --resume` continues from it). With `expected_hidden`, a head made for
/// another encoder width is refused.
pub fn load_head(path: &Path, expected_hidden: Option<usize>) -> Result<LoadedHead> {
    read_head(path, expected_hidden, true)
}

/// Reads the head of a checkpoint as [`load_head`] does, leaving its optimiser state
/// unread (`optim` is `None`): running a head needs none, so a checkpoint whose state
/// is partial or damaged still serves `test`, `predict` and `encode`.
pub fn load_inference_head(path: &Path, expected_hidden: Option<usize>) -> Result<LoadedHead> {
    read_head(path, expected_hidden, false)
}

fn read_head(path: &Path, expected_hidden: Option<usize>, optimiser: bool) -> Result<LoadedHead> {
    let p = path.display();
    if path.is_dir() {
        bail!(
            "{p} is a folder, not a head checkpoint: pass --run {p} for a run folder, or --head with a head-*.safetensors file"
        );
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "head checkpoint {p} does not exist: pass a head-*.safetensors from a run folder \
             or a torch.save(model.state_dict()) file"
        ),
        Err(e) => bail!("cannot read head checkpoint {p}: {e}"),
    };
    let (tensors, metadata) = if bytes.starts_with(b"PK\x03\x04") {
        (
            read_torch_zip(&bytes).map_err(|e| anyhow!("{p}: {e}"))?,
            BTreeMap::new(),
        )
    } else if bytes.len() >= 9 && bytes[8] == b'{' {
        read_safetensors(&bytes, optimiser).map_err(|e| anyhow!("{p}: {e}"))?
    } else if bytes.first() == Some(&0x80) || bytes.get(257..262) == Some(b"ustar") {
        bail!(
            "{p} is a legacy (pre-1.6, non-zip) torch.save file: load it in PyTorch and \
             re-save with torch.save(state_dict, f, _use_new_zipfile_serialization=True)"
        )
    } else {
        bail!(
            "{p} is neither a safetensors file nor a torch.save zip (corrupt, truncated, or \
             another format): pass a head-*.safetensors or a torch.save(model.state_dict()) file"
        )
    };
    assemble(tensors, metadata, expected_hidden, optimiser).map_err(|e| anyhow!("{p}: {e}"))
}

/// A tensor as read from either format, converted to f32.
struct RawTensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

type Tensors = BTreeMap<String, RawTensor>;

/// Builds the head, and with `optimiser` the optimiser, from named tensors, checking
/// every shape.
fn assemble(
    mut tensors: Tensors,
    mut metadata: BTreeMap<String, String>,
    expected_hidden: Option<usize>,
    optimiser: bool,
) -> Result<LoadedHead, String> {
    let Some(prefix) = HEAD_PREFIXES
        .iter()
        .find(|pre| tensors.contains_key(&format!("{pre}weight")))
    else {
        let found: Vec<&str> = tensors.keys().map(|k| k.as_str()).take(8).collect();
        return Err(format!(
            "no fc.weight tensor (found: {}); a head checkpoint holds fc.weight [num_labels, hidden] and fc.bias [num_labels]",
            if found.is_empty() { "none".to_string() } else { found.join(", ") }
        ));
    };
    let weight = tensors
        .remove(&format!("{prefix}weight"))
        .expect("found above");
    let bias = tensors.remove(&format!("{prefix}bias")).ok_or_else(|| {
        format!("{prefix}weight has no {prefix}bias beside it: the checkpoint is incomplete")
    })?;
    let &[l, c] = weight.shape.as_slice() else {
        return Err(format!(
            "{prefix}weight has shape {:?}, expected [num_labels, hidden]",
            weight.shape
        ));
    };
    if let Some(h) = expected_hidden.filter(|&h| h != c) {
        return Err(format!(
            "{prefix}weight has shape [{l}, {c}], expected [{l}, {h}]: the head was trained on an encoder \
             with hidden size {c}, not this model's {h}; use the model it was trained with"
        ));
    }
    if l == 0 || c == 0 {
        return Err(format!(
            "{prefix}weight has shape [{l}, {c}]: a head needs labels and inputs"
        ));
    }
    if bias.shape != [l] {
        return Err(format!(
            "{prefix}bias has shape {:?}, expected [{l}] (one per row of {prefix}weight)",
            bias.shape
        ));
    }
    // A head with NaN or Inf would answer every text with NaN: never serve one.
    for (name, t) in [("weight", &weight), ("bias", &bias)] {
        if let Some(v) = t.data.iter().find(|v| !v.is_finite()) {
            return Err(format!(
                "{prefix}{name} holds a non-finite value ({v}): the head is corrupt; use another checkpoint of the run"
            ));
        }
    }
    let head = LinearHead {
        weight: weight.data,
        bias: bias.data,
        num_labels: l,
        hidden: c,
    };

    let optim_keys: Vec<String> = metadata
        .keys()
        .filter(|k| k.starts_with(OPTIM_PREFIX))
        .cloned()
        .collect();
    let optim_meta: BTreeMap<String, String> = optim_keys
        .iter()
        .map(|k| {
            (
                k[OPTIM_PREFIX.len()..].to_string(),
                metadata.remove(k).expect("listed"),
            )
        })
        .collect();
    let has_state = tensors.keys().any(|k| k.starts_with(OPTIM_PREFIX));
    if !optimiser || (optim_meta.is_empty() && !has_state) {
        return Ok(LoadedHead {
            head,
            optim: None,
            metadata,
        });
    }
    let mut moment = |name: &str, shape: &[usize]| -> Result<Vec<f32>, String> {
        let key = format!("{OPTIM_PREFIX}{name}");
        let t = tensors.remove(&key).ok_or_else(|| {
            format!("optimiser state is incomplete (no {key}): resume from another checkpoint or train without --resume")
        })?;
        if t.shape != shape {
            return Err(format!(
                "{key} has shape {:?}, expected {shape:?} like the head",
                t.shape
            ));
        }
        Ok(t.data)
    };
    let mut m = moment("exp_avg.fc.weight", &[l, c])?;
    let mut v = moment("exp_avg_sq.fc.weight", &[l, c])?;
    m.extend(moment("exp_avg.fc.bias", &[l])?);
    v.extend(moment("exp_avg_sq.fc.bias", &[l])?);
    let field = |name: &str| -> Result<&str, String> {
        optim_meta.get(name).map(|s| s.as_str()).ok_or_else(|| {
            format!("optimiser state has no {OPTIM_PREFIX}{name} metadata: resume from another checkpoint or train without --resume")
        })
    };
    let float = |name: &str| -> Result<f64, String> {
        let s = field(name)?;
        s.parse()
            .map_err(|_| format!("{OPTIM_PREFIX}{name} = {s:?} is not a number"))
    };
    let step = field("step")?;
    let opt = AdamW {
        lr: float("lr")?,
        beta1: float("beta1")?,
        beta2: float("beta2")?,
        eps: float("eps")?,
        weight_decay: float("weight_decay")?,
        step: step
            .parse()
            .map_err(|_| format!("{OPTIM_PREFIX}step = {step:?} is not a step count"))?,
        m,
        v,
    };
    opt.validate()
        .map_err(|e| format!("optimiser state: {e}"))?;
    Ok(LoadedHead {
        head,
        optim: Some(opt),
        metadata,
    })
}

fn read_safetensors(
    bytes: &[u8],
    optimiser: bool,
) -> Result<(Tensors, BTreeMap<String, String>), String> {
    let bad = |e: safetensors::SafeTensorError| {
        format!("corrupt or truncated safetensors file ({e}); re-save it")
    };
    let st = SafeTensors::deserialize(bytes).map_err(bad)?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(bad)?;
    let metadata = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut tensors = BTreeMap::new();
    for (name, view) in st.iter() {
        // Only the head's tensors are converted: a whole-model file may hold others
        // in dtypes we have no use for.
        let wanted = (optimiser && name.starts_with(OPTIM_PREFIX))
            || HEAD_PREFIXES
                .iter()
                .any(|pre| name == format!("{pre}weight") || name == format!("{pre}bias"));
        if !wanted {
            tensors.insert(
                name.to_string(),
                RawTensor {
                    shape: view.shape().to_vec(),
                    data: Vec::new(),
                },
            );
            continue;
        }
        let Some(data) = le_floats::safetensors_floats(view.dtype(), view.data()) else {
            return Err(format!(
                "tensor {name} is {:?}; a head must be F32, F16 or BF16",
                view.dtype()
            ));
        };
        tensors.insert(
            name.to_string(),
            RawTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok((tensors, metadata))
}

// ---------------------------------------------------------------------------
// torch.save zip files

fn read_torch_zip(bytes: &[u8]) -> Result<Tensors, String> {
    let bad =
        |e: zip::result::ZipError| format!("corrupt or truncated torch.save zip ({e}); re-save it");
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(bad)?;
    let pkl_name = zip
        .file_names()
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .map(str::to_string)
        .ok_or("zip without <archive>/data.pkl: not a torch.save file")?;
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    // Every entry is read against a limit known before inflating it (16 bytes for
    // byteorder, MAX_PICKLE_BYTES for the pickle, what the pickle says a storage holds):
    // a declared size beyond it is refused unread, and inflation stops one byte past it,
    // so a small file that inflates hugely (or lies about its size) costs no memory.
    let mut read_entry = |name: &str, limit: u64| -> Result<Option<Vec<u8>>, String> {
        let file = match zip.by_name(name) {
            Ok(f) => f,
            Err(zip::result::ZipError::FileNotFound) => return Ok(None),
            Err(e) => return Err(bad(e)),
        };
        read_bounded(file, name, limit).map(Some)
    };
    if let Some(order) = read_entry(&format!("{prefix}byteorder"), 16)? {
        if order != b"little" {
            return Err("saved on a big-endian machine: re-save it on a little-endian one".into());
        }
    }
    let pickle = read_entry(&pkl_name, MAX_PICKLE_BYTES)?
        .ok_or_else(|| format!("{pkl_name} is listed but cannot be found in the zip"))?;
    let state = unpickle_state_dict(&pickle).map_err(|e| format!("{pkl_name}: {e}"))?;

    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut tensors = BTreeMap::new();
    for (name, t) in state {
        let wanted = HEAD_PREFIXES
            .iter()
            .any(|pre| name == format!("{pre}weight") || name == format!("{pre}bias"));
        if !wanted {
            tensors.insert(
                name,
                RawTensor {
                    shape: t.size,
                    data: Vec::new(),
                },
            );
            continue;
        }
        if !storages.contains_key(&t.storage.key) {
            let entry = format!("{prefix}data/{}", t.storage.key);
            let bytes = storage_bytes(&t.storage).map_err(|e| format!("tensor {name}: {e}"))?;
            let data = read_entry(&entry, bytes)?
                .ok_or_else(|| format!("storage {entry} of {name} is missing from the zip"))?;
            storages.insert(t.storage.key.clone(), data);
        }
        let data =
            gather(&t, &storages[&t.storage.key]).map_err(|e| format!("tensor {name}: {e}"))?;
        tensors.insert(
            name,
            RawTensor {
                shape: t.size,
                data,
            },
        );
    }
    Ok(tensors)
}

/// A state dict's pickle is a few kilobytes per tensor; 64 MiB is far beyond any model's.
const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// Reads one zip entry whose content may be at most `limit` bytes: refused unread when
/// its declared size is larger, and refused after `limit + 1` inflated bytes when it
/// inflates beyond what it declared.
fn read_bounded(file: impl Read + ZipEntrySize, name: &str, limit: u64) -> Result<Vec<u8>, String> {
    let declared = file.declared_size();
    if declared > limit {
        return Err(format!(
            "{name} declares {declared} bytes, more than the {limit} it can hold: corrupt or crafted; re-save it"
        ));
    }
    let mut out = Vec::new();
    out.try_reserve_exact(declared as usize)
        .map_err(|_| format!("cannot allocate {declared} bytes for {name}"))?;
    file.take(declared + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("cannot read {name} from the zip ({e}); re-save it"))?;
    if out.len() as u64 != declared {
        let than = if out.len() as u64 > declared {
            "more"
        } else {
            "fewer"
        };
        return Err(format!(
            "{name} inflates to {than} bytes than the {declared} it declares: corrupt or crafted; re-save it"
        ));
    }
    Ok(out)
}

/// The uncompressed size a zip entry declares (a trait so tests can give any reader).
trait ZipEntrySize {
    fn declared_size(&self) -> u64;
}

impl<R: Read> ZipEntrySize for zip::read::ZipFile<'_, R> {
    fn declared_size(&self) -> u64 {
        self.size()
    }
}

/// Bytes of the element width the storage type has, times its element count.
fn storage_bytes(s: &StorageRef) -> Result<u64, String> {
    let width = storage_width(&s.dtype)?;
    (s.numel as u64)
        .checked_mul(width as u64)
        .ok_or_else(|| format!("storage {} of {} elements overflows", s.key, s.numel))
}

fn storage_width(dtype: &str) -> Result<usize, String> {
    match dtype {
        "FloatStorage" => Ok(4),
        "HalfStorage" | "BFloat16Storage" => Ok(2),
        "DoubleStorage" => Ok(8),
        other => Err(format!(
            "stored as {other}; a head must be float, half or bfloat16"
        )),
    }
}

/// Reads the tensor's elements in row-major order from its storage, so any strides
/// and storage offset torch saved (a transposed view, a slice of a shared storage)
/// come out as the plain tensor.
fn gather(t: &TensorRef, storage: &[u8]) -> Result<Vec<f32>, String> {
    let s = &t.storage;
    let width = storage_width(&s.dtype)?;
    // The pickle's numbers are untrusted: bound everything by the storage's real
    // size before indexing or allocating.
    if storage.len() as u128 != s.numel as u128 * width as u128 {
        return Err(format!(
            "storage {} has {} bytes, expected {} elements of {width} bytes",
            s.key,
            storage.len(),
            s.numel
        ));
    }
    if t.size.len() != t.stride.len() {
        return Err(format!(
            "size {:?} and stride {:?} differ in rank",
            t.size, t.stride
        ));
    }
    let numel = t.size.iter().map(|&n| n as u128).product::<u128>();
    if numel > s.numel as u128 {
        return Err(format!(
            "size {:?} is larger than its storage of {} (an expanded view): save .contiguous() tensors",
            t.size, s.numel
        ));
    }
    let numel = numel as usize;
    if numel > 0 {
        let last = t.offset as u128
            + t.size
                .iter()
                .zip(&t.stride)
                .map(|(&n, &st)| (n as u128 - 1) * st as u128)
                .sum::<u128>();
        if last >= s.numel as u128 {
            return Err(format!(
                "reaches element {last} of a storage of {}",
                s.numel
            ));
        }
    }
    let element = |i: usize| -> f32 {
        let b = &storage[i * width..(i + 1) * width];
        match width {
            4 => f32::from_le_bytes(b.try_into().unwrap()),
            8 => f64::from_le_bytes(b.try_into().unwrap()) as f32,
            _ if s.dtype == "HalfStorage" => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            _ => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        }
    };
    let mut out = Vec::with_capacity(numel);
    let mut index = vec![0usize; t.size.len()];
    for _ in 0..numel {
        out.push(element(
            t.offset
                + index
                    .iter()
                    .zip(&t.stride)
                    .map(|(i, st)| i * st)
                    .sum::<usize>(),
        ));
        // Odometer over the indices, last dimension fastest.
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < t.size[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::pickle::StorageRef;
    use super::*;
    use crate::head::HeadScratch;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::io::Write;

    fn temp_dir(name: &str) -> crate::testdir::TestDir {
        crate::testdir::TestDir::new(&format!("ckpt-{name}"))
    }

    fn err(path: &Path, hidden: Option<usize>) -> String {
        let e = load_head(path, hidden).err().expect("load should fail");
        let msg = format!("{e:#}");
        assert!(!msg.contains('\n'), "error is not one line: {msg}");
        assert!(
            msg.contains(&path.display().to_string()),
            "error does not name the file: {msg}"
        );
        msg
    }

    /// `(name, storage key, offset, size, stride, storage numel)` of a pickled tensor.
    type FakeTensor<'a> = (&'a str, &'a str, u8, &'a [u8], &'a [u8], u8);

    /// A pickle laid out as torch.save writes a state dict (protocol 2).
    fn torch_pickle(tensors: &[FakeTensor], storage: &str) -> Vec<u8> {
        let mut p = vec![0x80, 2];
        let mut memo = 0u8;
        let mut put = |p: &mut Vec<u8>| {
            p.extend([b'q', memo]);
            memo += 1;
        };
        let unicode = |p: &mut Vec<u8>, s: &str| {
            p.push(b'X');
            p.extend((s.len() as u32).to_le_bytes());
            p.extend(s.as_bytes());
        };
        p.extend(b"ccollections\nOrderedDict\n");
        put(&mut p); // memo 0: OrderedDict
        p.extend([b')', b'R']);
        put(&mut p);
        p.push(b'(');
        for &(name, key, offset, size, stride, numel) in tensors {
            unicode(&mut p, name);
            put(&mut p);
            p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n");
            put(&mut p);
            p.extend([b'(', b'(']);
            unicode(&mut p, "storage");
            put(&mut p);
            p.extend(format!("ctorch\n{storage}\n").as_bytes());
            put(&mut p);
            unicode(&mut p, key);
            put(&mut p);
            unicode(&mut p, "cpu");
            put(&mut p);
            p.extend([b'K', numel, b't']);
            put(&mut p);
            p.extend([b'Q', b'K', offset]);
            for dims in [size, stride] {
                for &d in dims {
                    p.extend([b'K', d]);
                }
                p.push(0x84 + dims.len() as u8);
                put(&mut p);
            }
            p.extend([0x89, b'h', 0, b')', b'R']); // requires_grad, OrderedDict()
            put(&mut p);
            p.extend([b't', b'R']);
            put(&mut p);
        }
        p.push(b'u');
        // state: {'_metadata': OrderedDict({'': {'version': 1}})}
        p.push(b'}');
        put(&mut p);
        unicode(&mut p, "_metadata");
        p.extend([b'h', 0, b')', b'R']);
        put(&mut p);
        unicode(&mut p, "");
        p.push(b'}');
        unicode(&mut p, "version");
        p.extend([b'K', 1, b's', b's', b's', b'b', b'.']);
        p
    }

    fn torch_zip(path: &Path, pickle: &[u8], storages: &[(&str, Vec<u8>)]) {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zip.start_file("recipe-head/data.pkl", opts).unwrap();
        zip.write_all(pickle).unwrap();
        zip.start_file("recipe-head/byteorder", opts).unwrap();
        zip.write_all(b"little").unwrap();
        for (key, bytes) in storages {
            zip.start_file(format!("recipe-head/data/{key}"), opts)
                .unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.start_file("recipe-head/version", opts).unwrap();
        zip.write_all(b"3\n").unwrap();
        zip.finish().unwrap();
    }

    #[test]
    fn round_trip_keeps_head_optimiser_and_metadata_and_resumes_exactly() {
        let dir = temp_dir("round");
        let mut rng = StdRng::seed_from_u64(11);
        let mut head = LinearHead::new_init(3, 16, &mut rng);
        let x: Vec<f32> = (0..8 * 16).map(|_| rng.random_range(-1.0..1.0)).collect();
        let labels = [0, 1, 2, 0, 1, 2, 0, 1];
        let mut opt = AdamW {
            lr: 1e-2,
            ..AdamW::for_head(&head)
        };
        let mut s = HeadScratch::new(3, 16);
        for _ in 0..3 {
            head.forward_backward(&x, &labels, &mut s);
            opt.update_head(&mut head, &s.grads);
        }
        let meta = BTreeMap::from([("epoch".to_string(), "3".to_string())]);
        let path = dir.join("head.safetensors");
        save_head(&path, &head, Some(&opt), &meta).unwrap();
        let mut loaded = load_head(&path, Some(16)).unwrap();
        assert_eq!(
            (&loaded.head.weight, &loaded.head.bias),
            (&head.weight, &head.bias)
        );
        assert_eq!(loaded.optim.as_ref(), Some(&opt));
        assert_eq!(loaded.metadata, meta);

        let mut resumed = loaded.optim.take().unwrap();
        head.forward_backward(&x, &labels, &mut s);
        opt.update_head(&mut head, &s.grads);
        loaded.head.forward_backward(&x, &labels, &mut s);
        resumed.update_head(&mut loaded.head, &s.grads);
        assert_eq!(
            (loaded.head.weight, loaded.head.bias, resumed),
            (head.weight.clone(), head.bias.clone(), opt)
        );

        save_head(&path, &head, None, &BTreeMap::new()).unwrap();
        assert!(load_head(&path, None).unwrap().optim.is_none());
    }

    /// A checkpoint with the `optim.*` metadata but without the moments: resuming from
    /// it is refused, running its head is not.
    #[test]
    fn only_a_resume_needs_the_optimiser_state() {
        let dir = temp_dir("partial-optim");
        let head = LinearHead {
            weight: vec![0.5; 2 * 4],
            bias: vec![0.1, 0.2],
            num_labels: 2,
            hidden: 4,
        };
        let meta = BTreeMap::from([("epoch".to_string(), "1".to_string())]);
        let full = dir.join("full.safetensors");
        save_head(&full, &head, Some(&AdamW::for_head(&head)), &meta).unwrap();
        let bytes = std::fs::read(&full).unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let tensors = SafeTensors::deserialize(&bytes).unwrap().tensors();
        let kept = tensors.into_iter().filter(|(n, _)| n.starts_with("fc."));
        let partial = dir.join("partial.safetensors");
        let stripped = crate::safetensors_out::serialize(kept, header.metadata().clone()).unwrap();
        std::fs::write(&partial, stripped).unwrap();

        let msg = err(&partial, Some(4));
        assert!(
            msg.contains("optimiser state is incomplete (no optim.exp_avg.fc.weight)"),
            "{msg}"
        );
        for path in [&partial, &full] {
            let loaded = load_inference_head(path, Some(4)).unwrap();
            assert_eq!(
                (&loaded.head.weight, &loaded.head.bias),
                (&head.weight, &head.bias)
            );
            assert!(loaded.optim.is_none());
            assert_eq!(loaded.metadata, meta);
        }
    }

    #[test]
    fn bad_files_give_one_line_errors_naming_the_problem() {
        let dir = temp_dir("bad");
        let missing = dir.join("nope.safetensors");
        assert!(err(&missing, None).contains("does not exist"));

        let head = LinearHead {
            weight: vec![0.5; 2 * 4],
            bias: vec![0.1, 0.2],
            num_labels: 2,
            hidden: 4,
        };
        let good = dir.join("good.safetensors");
        save_head(
            &good,
            &head,
            Some(&AdamW::for_head(&head)),
            &BTreeMap::new(),
        )
        .unwrap();
        let bytes = std::fs::read(&good).unwrap();

        let truncated = dir.join("truncated.safetensors");
        std::fs::write(&truncated, &bytes[..bytes.len() - 5]).unwrap();
        assert!(err(&truncated, None).contains("corrupt or truncated safetensors"));

        let garbage = dir.join("garbage.bin");
        std::fs::write(&garbage, b"hello, this is not a checkpoint").unwrap();
        assert!(err(&garbage, None).contains("neither a safetensors file nor a torch.save zip"));

        let legacy = dir.join("legacy.pth");
        std::fs::write(&legacy, [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc]).unwrap();
        assert!(err(&legacy, None).contains("_use_new_zipfile_serialization=True"));

        let msg = err(&good, Some(768));
        assert!(msg.contains("shape [2, 4], expected [2, 768]"), "{msg}");

        let no_head = dir.join("no-head.safetensors");
        let t = safetensors::tensor::TensorView::new(Dtype::F32, vec![1], &[0, 0, 0, 0]).unwrap();
        std::fs::write(
            &no_head,
            safetensors::serialize([("cls", t)], None).unwrap(),
        )
        .unwrap();
        assert!(err(&no_head, None).contains("no fc.weight tensor (found: cls)"));

        let pth = dir.join("bad.pth");
        let storage: Vec<u8> = [0.0f32; 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        let beyond = torch_pickle(
            &[
                ("fc.weight", "0", 6, &[2, 3], &[3, 1], 7),
                ("fc.bias", "0", 0, &[2], &[1], 7),
            ],
            "FloatStorage",
        );
        torch_zip(&pth, &beyond, &[("0", storage.clone())]);
        assert!(err(&pth, None).contains("tensor fc.weight: reaches element 11 of a storage of 7"));
        let as_long = torch_pickle(
            &[
                ("fc.weight", "0", 0, &[1, 1], &[1, 1], 1),
                ("fc.bias", "0", 0, &[1], &[1], 1),
            ],
            "LongStorage",
        );
        torch_zip(&pth, &as_long, &[("0", vec![0; 8])]);
        assert!(err(&pth, None).contains("stored as LongStorage"));
        let no_storage = torch_pickle(
            &[
                ("fc.weight", "0", 0, &[2, 3], &[3, 1], 7),
                ("fc.bias", "1", 0, &[2], &[1], 2),
            ],
            "FloatStorage",
        );
        torch_zip(&pth, &no_storage, &[("0", storage)]);
        assert!(err(&pth, None).contains("storage recipe-head/data/1 of fc.bias is missing"));
        let bytes = std::fs::read(&pth).unwrap();
        std::fs::write(&pth, &bytes[..bytes.len() / 2]).unwrap();
        assert!(err(&pth, None).contains("corrupt or truncated torch.save zip"));
    }

    #[test]
    fn pickle_vm_reads_a_torch_style_state_dict() {
        // fc.weight (2, 3) is a transposed view of a (3, 2) storage at offset 1
        // inside 7 elements; fc.bias is a plain (2,) tensor in its own storage.
        let pickle = torch_pickle(
            &[
                ("fc.weight", "0", 1, &[2, 3], &[1, 2], 7),
                ("fc.bias", "1", 0, &[2], &[1], 2),
            ],
            "FloatStorage",
        );
        let state = unpickle_state_dict(&pickle).unwrap();
        let names: Vec<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["fc.weight", "fc.bias"]);
        assert_eq!(
            state[0].1,
            TensorRef {
                storage: StorageRef {
                    dtype: "FloatStorage".into(),
                    key: "0".into(),
                    numel: 7
                },
                offset: 1,
                size: vec![2, 3],
                stride: vec![1, 2],
            }
        );

        let dir = temp_dir("pickle");
        let path = dir.join("recipe-head.pth");
        let storage0: Vec<u8> = (0..7).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let storage1: Vec<u8> = [-1.0f32, 2.5]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        torch_zip(&path, &pickle, &[("0", storage0), ("1", storage1)]);
        let loaded = load_head(&path, Some(3)).unwrap();
        // Row r, column c reads storage[1 + r + 2c].
        assert_eq!(loaded.head.weight, vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
        assert_eq!(loaded.head.bias, vec![-1.0, 2.5]);
        assert!(loaded.optim.is_none() && loaded.metadata.is_empty());

        let half = torch_pickle(
            &[
                ("weight", "0", 0, &[1, 2], &[2, 1], 2),
                ("bias", "1", 0, &[1], &[1], 1),
            ],
            "HalfStorage",
        );
        let f16 = |v: f32| half::f16::from_f32(v).to_le_bytes().to_vec();
        torch_zip(
            &path,
            &half,
            &[("0", [f16(0.5), f16(-2.0)].concat()), ("1", f16(1.0))],
        );
        let loaded = load_head(&path, None).unwrap();
        assert_eq!(
            (loaded.head.weight, loaded.head.bias),
            (vec![0.5, -2.0], vec![1.0])
        );
    }
}
