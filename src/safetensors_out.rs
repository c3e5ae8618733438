//! safetensors files whose bytes depend only on their content.
//!
//! The crate writes the `__metadata__` map in its `HashMap`'s iteration order, which is
//! random per process (safetensors issue 584), so two runs over the same inputs wrote
//! different bytes: a feature file's or a head's checksum could not say "unchanged".
//! The header is re-emitted here with every JSON object's keys sorted: the same keys and
//! values, so the same length, and the data offsets it holds are unchanged.

use std::collections::HashMap;
use std::fmt::Display;

use safetensors::tensor::View;
use safetensors::SafeTensorError;

/// `safetensors::serialize`, with a canonical header.
pub fn serialize<S, V, I>(
    tensors: I,
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>, SafeTensorError>
where
    S: AsRef<str> + Ord + Display,
    V: View,
    I: IntoIterator<Item = (S, V)>,
{
    let mut bytes = safetensors::serialize(tensors, metadata)?;
    canonicalise_header(&mut bytes);
    Ok(bytes)
}

/// Rewrites the header of a file the crate just wrote with sorted keys (serde_json's
/// `Value` keeps its maps sorted), padded with spaces to its old length as the crate pads.
fn canonicalise_header(bytes: &mut [u8]) {
    let Some(n) = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
    else {
        return;
    };
    let Some(header) = bytes.get_mut(8..8 + n) else {
        return;
    };
    let sorted = serde_json::from_slice::<serde_json::Value>(header)
        .ok()
        .and_then(|v| serde_json::to_vec(&v).ok());
    if let Some(sorted) = sorted.filter(|s| s.len() <= n) {
        header[..sorted.len()].copy_from_slice(&sorted);
        header[sorted.len()..].fill(b' ');
    }
}

#[cfg(test)]
mod tests {
    use safetensors::tensor::TensorView;
    use safetensors::{Dtype, SafeTensors};

    use super::*;

    #[test]
    fn the_same_content_gives_the_same_bytes() {
        let data: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let file = |order: &[usize]| {
            let pairs: Vec<(String, String)> = (0..16)
                .map(|i| (format!("key{i}"), format!("value {i}")))
                .collect();
            // Maps built in different orders and with different hash seeds.
            let meta: HashMap<String, String> = order.iter().map(|&i| pairs[i].clone()).collect();
            let views = [
                ("b", TensorView::new(Dtype::F32, vec![2], &data).unwrap()),
                ("a", TensorView::new(Dtype::F32, vec![1, 2], &data).unwrap()),
            ];
            serialize(views, Some(meta)).unwrap()
        };
        let forward: Vec<usize> = (0..16).collect();
        let backward: Vec<usize> = (0..16).rev().collect();
        let one = file(&forward);
        assert_eq!(one, file(&backward));
        let n = u64::from_le_bytes(one[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&one[8..8 + n]).unwrap();
        assert!(
            header.starts_with(r#"{"__metadata__":{"key0":"value 0","key1":"value 1","key10""#),
            "{header}"
        );
        // Still a file the crate reads, with the same tensors and metadata.
        let st = SafeTensors::deserialize(&one).unwrap();
        assert_eq!(st.tensor("a").unwrap().shape(), [1, 2]);
        assert_eq!(st.tensor("b").unwrap().data(), &data[..]);
        let (_, meta) = SafeTensors::read_metadata(&one).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["key7"], "value 7");
    }
}
