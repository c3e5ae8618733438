//! Weight files beyond the single F32 file: shards, BF16, and the `encode` command's outputs.

mod common;

use std::collections::HashMap;
use std::process::Command;

use bertcls::backend::cpu::CpuBackend;
use bertcls::backend::Backend;
use bertcls::model::weights::HostTensor;
use bertcls::model::{Checkpoint, HostWeights, ModelDir};
use common::*;
use half::bf16;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

fn temp_copy(name: &str) -> TempDir {
    let dir = TempDir::new(&format!("weights-{name}"));
    for f in [
        "config.json",
        "tokenizer.json",
        "vocab.txt",
        "tokenizer_config.json",
    ] {
        std::fs::copy(fixtures().join("tiny/model").join(f), dir.join(f)).unwrap();
    }
    dir
}

fn tiny_tensors() -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(fixtures().join("tiny/model/model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn write(path: &std::path::Path, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: HashMap<String, TensorView> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(&views, None).unwrap()).unwrap();
}

fn flat(w: &HostWeights) -> Vec<f32> {
    let mut out = Vec::new();
    w.try_map(|t| {
        out.extend_from_slice(t);
        Ok(())
    })
    .unwrap();
    out
}

fn load(dir: &std::path::Path) -> HostWeights {
    let config = ModelDir::open(dir).unwrap().config().unwrap();
    HostWeights::load(&Checkpoint::open(dir).unwrap(), &config).unwrap()
}

/// An F32 tensor is read in place from the map, an F16 one decoded; both give the file's
/// values. On the CPU a mapped tensor serves reads from the file's pages, and a write
/// (which no op makes to a weight) goes to a copy, never to the file.
#[test]
fn f32_tensors_are_read_in_place_and_written_only_as_copies() {
    let dir = temp_copy("in-place");
    let values = [1.5f32, -2.25, 3.0, 0.125, -0.5, 8.0];
    let f32_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let f16_bytes: Vec<u8> = values
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    let path = dir.join("model.safetensors");
    write(
        &path,
        &[
            ("full".into(), Dtype::F32, vec![2, 3], f32_bytes.clone()),
            ("half".into(), Dtype::F16, vec![2, 3], f16_bytes),
        ],
    );
    let ckpt = Checkpoint::open(&dir).unwrap();
    let full = ckpt.tensor(&["full".into()], &[2, 3]).unwrap();
    let half = ckpt.tensor(&["half".into()], &[2, 3]).unwrap();
    assert!(matches!(full, HostTensor::Mapped(_)));
    assert!(matches!(half, HostTensor::Decoded(_)));
    assert_eq!(
        (full.as_slice(), half.as_slice()),
        (&values[..], &values[..])
    );

    let backend = CpuBackend::new(1).unwrap();
    let mut t = backend.upload_host(full).unwrap();
    assert_eq!(&t[..], &values[..]);
    t[0] = 99.0;
    assert_eq!((t[0], t[1]), (99.0, -2.25));
    let again = ckpt.tensor(&["full".into()], &[2, 3]).unwrap();
    assert_eq!(again.as_slice(), &values[..]);
    drop((ckpt, again));
    let on_disk = SafeTensors::deserialize(&std::fs::read(&path).unwrap())
        .unwrap()
        .tensor("full")
        .unwrap()
        .data()
        .to_vec();
    assert_eq!(on_disk, f32_bytes);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A checkpoint split into shards with an index loads to exactly the same weights.
#[test]
fn sharded_checkpoint_equals_single_file() {
    let dir = temp_copy("sharded");
    let tensors = tiny_tensors();
    let (a, b) = tensors.split_at(tensors.len() / 2);
    write(&dir.join("model-00001-of-00002.safetensors"), a);
    write(&dir.join("model-00002-of-00002.safetensors"), b);
    let map: serde_json::Map<String, serde_json::Value> = a
        .iter()
        .map(|t| (t.0.clone(), "model-00001-of-00002.safetensors".into()))
        .chain(
            b.iter()
                .map(|t| (t.0.clone(), "model-00002-of-00002.safetensors".into())),
        )
        .collect();
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    assert_eq!(
        flat(&load(&dir)),
        flat(&load(&fixtures().join("tiny/model")))
    );
}

/// Writes the two shards of the tiny model (its tensors split in half, plus `extra` in
/// the second) and an index mapping each half to its shard, `edit` applied to the map.
fn write_shards(
    dir: &std::path::Path,
    extra: &[(String, Dtype, Vec<usize>, Vec<u8>)],
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) {
    let tensors = tiny_tensors();
    let (a, b) = tensors.split_at(tensors.len() / 2);
    let (first, second) = (
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    );
    write(&dir.join(first), a);
    write(&dir.join(second), &[b, extra].concat());
    let mut map: serde_json::Map<String, serde_json::Value> = a
        .iter()
        .map(|t| (t.0.clone(), first.into()))
        .chain(b.iter().map(|t| (t.0.clone(), second.into())))
        .collect();
    edit(&mut map);
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
}

/// A tensor that two shards hold is read from the one the index maps it to, here the
/// first, though the second (read later) holds a zeroed copy of it.
#[test]
fn a_tensor_in_two_shards_comes_from_the_mapped_one() {
    let dir = temp_copy("sharded-duplicate");
    let mut stray = tiny_tensors().remove(0);
    stray.3.fill(0);
    write_shards(&dir, &[stray], |_| {});
    assert!(
        flat(&load(&dir)) == flat(&load(&fixtures().join("tiny/model"))),
        "the sharded weights are not the single file's: the stray copy was read"
    );
}

/// An index naming a shard outside the model folder, or a shard that lacks the tensor it
/// is mapped to, is refused in one line naming the index.
#[test]
fn an_index_pointing_outside_the_folder_or_at_the_wrong_shard_is_refused() {
    let dir = temp_copy("sharded-escape");
    let index = dir.join("model.safetensors.index.json");
    let outside = temp_copy("sharded-escape-other");
    let name = tiny_tensors().remove(0).0;
    std::fs::copy(
        fixtures().join("tiny/model/model.safetensors"),
        outside.join("model.safetensors"),
    )
    .unwrap();
    let escape = format!(
        "../{}/model.safetensors",
        outside.file_name().unwrap().to_str().unwrap()
    );
    write_shards(&dir, &[], |map| {
        map.insert(name.clone(), escape.clone().into());
    });
    let err = format!("{:#}", Checkpoint::open(&dir).err().unwrap());
    assert!(
        err.starts_with(&format!(
            "{}: tensor {name} is mapped to \"{escape}\"",
            index.display()
        )) && err.contains("not the name of a file beside the index"),
        "{err}"
    );
    let line = refusal(&["encode", "--model", dir.to_str().unwrap(), "好"]);
    assert!(line.contains(&err), "{line}");

    write_shards(&dir, &[], |map| {
        map.insert(name.clone(), "model-00002-of-00002.safetensors".into());
    });
    let err = format!("{:#}", Checkpoint::open(&dir).err().unwrap());
    assert!(
        err.contains(&format!(
            "{} maps tensor {name} to model-00002-of-00002.safetensors, which does not hold it",
            index.display()
        )),
        "{err}"
    );
}

/// BF16 weights widen to f32 exactly: every value equals the original rounded to bf16.
#[test]
fn bf16_checkpoint_widens_exactly() {
    let dir = temp_copy("bf16");
    let tensors: Vec<_> = tiny_tensors()
        .into_iter()
        .map(|(n, d, s, b)| {
            assert_eq!(d, Dtype::F32);
            let halves: Vec<u8> = b
                .chunks_exact(4)
                .flat_map(|c| {
                    bf16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes()
                })
                .collect();
            (n, Dtype::BF16, s, halves)
        })
        .collect();
    write(&dir.join("model.safetensors"), &tensors);
    let want: Vec<f32> = flat(&load(&fixtures().join("tiny/model")))
        .into_iter()
        .map(|v| bf16::from_f32(v).to_f32())
        .collect();
    assert_eq!(flat(&load(&dir)), want);
}

/// `encode --out` writes `cls` [N, C] and the ids with --ids, equal to the JSON output; the
/// ids are HF's for the fixture texts (the vectors' parity is encoder_parity's job).
#[test]
fn encode_command_writes_safetensors_and_json() {
    let cases: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny/texts-ids.json")).unwrap(),
    )
    .unwrap();
    let texts: Vec<&str> = cases
        .iter()
        .take(3)
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    let out_dir = TempDir::new("encode");
    let out_file = out_dir.join("features.safetensors");
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_bertcls"))
            .args(["encode", "--device", "cpu", "--model"])
            .arg(fixtures().join("tiny/model"))
            .args(extra)
            .args(&texts)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["--ids", "--out", out_file.to_str().unwrap()]);
    let json = run(&["--ids"]);
    let t = read_tensors(&out_file);
    assert_eq!(t["cls"].shape, vec![3, 32]);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for (i, line) in lines.iter().enumerate() {
        let cls: Vec<f32> = line["cls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(cls, t["cls"].f32[i * 32..(i + 1) * 32], "text {i}");
        let ids: Vec<i64> = line["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(
            ids,
            cases[i]["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect::<Vec<_>>()
        );
        let l = t["input_ids"].shape[1];
        assert_eq!(&t["input_ids"].i64[i * l..i * l + ids.len()], &ids[..]);
    }
    std::fs::remove_file(&out_file).unwrap();
}
