//! The CPU backend's tensor: a plain f32 buffer, or a Linear weight packed at load.

use std::ops::{Deref, DerefMut};

use super::packed::PackedWeight;

/// Row-major f32 data, as every op but `linear` reads it. A weight matrix uploaded with
/// `upload_linear_weight` holds only its packed form (the plain copy is dropped so the
/// weights are not held twice): `linear` reads `packed`, nothing else reads weights.
pub struct CpuTensor {
    data: Vec<f32>,
    packed: Option<PackedWeight>,
}

impl CpuTensor {
    pub fn plain(data: Vec<f32>) -> Self {
        Self { data, packed: None }
    }

    pub fn packed(weight: PackedWeight) -> Self {
        Self {
            data: Vec::new(),
            packed: Some(weight),
        }
    }

    pub fn as_packed(&self) -> Option<&PackedWeight> {
        self.packed.as_ref()
    }
}

impl Deref for CpuTensor {
    type Target = Vec<f32>;
    fn deref(&self) -> &Vec<f32> {
        &self.data
    }
}

impl DerefMut for CpuTensor {
    fn deref_mut(&mut self) -> &mut Vec<f32> {
        &mut self.data
    }
}
