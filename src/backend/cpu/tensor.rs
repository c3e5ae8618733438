//! The CPU backend's tensor: a plain f32 buffer, a weight read in place from the
//! checkpoint's memory map, or a Linear weight packed at load.

use std::ops::{Deref, DerefMut};

use super::packed::PackedWeight;
use crate::model::weights::MappedF32;

/// Row-major f32 data, as every op but `linear` reads it. A weight matrix uploaded with
/// `upload_linear_weight` holds only its packed form (the plain copy is dropped so the
/// weights are not held twice): `linear` reads `packed`, nothing else reads weights.
pub struct CpuTensor {
    data: Vec<f32>,
    /// When set, the tensor's data instead of `data`: an F32 checkpoint tensor in place
    /// (the word embeddings are 384 MB for e5-small), read only. A write first copies it
    /// into `data` (`DerefMut`); no op writes a weight.
    mapped: Option<MappedF32>,
    packed: Option<PackedWeight>,
}

impl CpuTensor {
    pub fn plain(data: Vec<f32>) -> Self {
        Self {
            data,
            mapped: None,
            packed: None,
        }
    }

    pub fn mapped(data: MappedF32) -> Self {
        Self {
            data: Vec::new(),
            mapped: Some(data),
            packed: None,
        }
    }

    pub fn packed(weight: PackedWeight) -> Self {
        Self {
            data: Vec::new(),
            mapped: None,
            packed: Some(weight),
        }
    }

    pub fn as_packed(&self) -> Option<&PackedWeight> {
        self.packed.as_ref()
    }
}

impl Deref for CpuTensor {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match &self.mapped {
            Some(m) => m.as_slice(),
            None => &self.data,
        }
    }
}

impl DerefMut for CpuTensor {
    fn deref_mut(&mut self) -> &mut [f32] {
        if let Some(m) = self.mapped.take() {
            self.data = m.as_slice().to_vec();
        }
        &mut self.data
    }
}
