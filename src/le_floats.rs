//! Little-endian float bytes (safetensors, torch storages, our device copies) widened
//! to f32. Exact: every f16 and bf16 value is an f32. And back: f32 values as the
//! little-endian bytes every file of ours stores and every feature hash is taken over.

use half::{bf16, f16};
use safetensors::Dtype;

pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn f16s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect()
}

pub fn bf16s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect()
}

/// A safetensors tensor's data as f32; none for a dtype other than F32, F16 and BF16.
pub fn safetensors_floats(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let mut out = Vec::with_capacity(bytes.len() / safetensors_width(dtype)?);
    extend_safetensors_floats(dtype, bytes, &mut out);
    Some(out)
}

/// The bytes per value of a dtype `safetensors_floats` reads; none for any other.
pub fn safetensors_width(dtype: Dtype) -> Option<usize> {
    match dtype {
        Dtype::F32 => Some(4),
        Dtype::F16 | Dtype::BF16 => Some(2),
        _ => None,
    }
}

/// `safetensors_floats` into `out`, whose room the caller reserved (the model's load does,
/// fallibly); nothing for a dtype `safetensors_width` refuses.
pub fn extend_safetensors_floats(dtype: Dtype, bytes: &[u8], out: &mut Vec<f32>) {
    match dtype {
        Dtype::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        Dtype::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        Dtype::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_width_reads_little_endian() {
        assert_eq!(f32s(&1.5f32.to_le_bytes()), [1.5]);
        assert_eq!(f16s(&f16::from_f32(-2.25).to_le_bytes()), [-2.25]);
        assert_eq!(bf16s(&bf16::from_f32(3.0).to_le_bytes()), [3.0]);
        assert_eq!(f32s(&[0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0]), [1.0, -2.0]);
        assert!(safetensors_floats(Dtype::I64, &[0; 8]).is_none());
    }
}
