//! The CPU backend's tensor: a plain f32 buffer, a weight read in place from the
//! checkpoint's memory map, or a Linear weight packed at load.

use std::ops::{Deref, DerefMut};

use super::packed::PackedWeight;
use crate::model::weights::MappedF32;

/// Row-major f32 data, as every op but `linear` reads it. A weight matrix uploaded with
/// `upload_linear_weight` holds only its packed form (the plain copy is dropped so the
/// weights are not held twice): `linear` reads `packed`, nothing else reads weights, and
/// as plain data it is empty.
pub struct CpuTensor(Storage);

enum Storage {
    Plain(Vec<f32>),
    /// An F32 checkpoint tensor in place (the word embeddings are 384 MB for e5-small),
    /// read only. A write first copies it into `Plain` (`DerefMut`); no op writes a weight.
    Mapped(MappedF32),
    Packed(PackedWeight),
}

impl CpuTensor {
    pub fn plain(data: Vec<f32>) -> Self {
        Self(Storage::Plain(data))
    }

    pub fn mapped(data: MappedF32) -> Self {
        Self(Storage::Mapped(data))
    }

    pub fn packed(weight: PackedWeight) -> Self {
        Self(Storage::Packed(weight))
    }

    pub fn as_packed(&self) -> Option<&PackedWeight> {
        match &self.0 {
            Storage::Packed(w) => Some(w),
            _ => None,
        }
    }
}

impl Deref for CpuTensor {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match &self.0 {
            Storage::Plain(v) => v,
            Storage::Mapped(m) => m.as_slice(),
            Storage::Packed(_) => &[],
        }
    }
}

impl DerefMut for CpuTensor {
    fn deref_mut(&mut self) -> &mut [f32] {
        if let Storage::Mapped(m) = &self.0 {
            self.0 = Storage::Plain(m.as_slice().to_vec());
        }
        match &mut self.0 {
            Storage::Plain(v) => v,
            _ => &mut [],
        }
    }
}
