//! Loading the GGUF weights in the format the service asked for.
//!
//! candle's quantized llama takes its weights from a GGUF reader, so a format other
//! than the file's own is produced by converting every quantized matrix and handing the
//! model an in-memory GGUF. Norms and other vectors keep their f32 form.

use std::io::{Cursor, Read, Seek};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;
use candle_transformers::models::quantized_llama::ModelWeights;

use super::LlmError;
use crate::config::WeightFormat;

fn target_dtype(format: WeightFormat) -> Option<GgmlDType> {
    match format {
        WeightFormat::AsShipped => None,
        WeightFormat::Q8_0 => Some(GgmlDType::Q8_0),
        WeightFormat::F32 => Some(GgmlDType::F32),
    }
}

/// Builds the model from a GGUF header and its reader, converting matrices to `format`.
///
/// # Errors
/// When the GGUF is not a llama or a tensor cannot be read or converted.
pub fn into_model<R: Read + Seek>(
    content: gguf_file::Content,
    reader: &mut R,
    device: &Device,
    format: WeightFormat,
) -> Result<ModelWeights, LlmError> {
    let Some(target) = target_dtype(format) else {
        return Ok(ModelWeights::from_gguf(content, reader, device)?);
    };

    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let tensor = content.tensor(reader, name, &Device::Cpu)?;
        let is_matrix = tensor.shape().rank() == 2;
        let converted = if is_matrix && tensor.dtype() != target {
            QTensor::quantize(&tensor.dequantize(&Device::Cpu)?, target)?
        } else {
            tensor
        };
        tensors.push((name.as_str(), converted));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let mut buffer = Cursor::new(Vec::new());
    gguf_file::write(&mut buffer, &metadata, &tensor_refs)?;
    drop(tensors);

    buffer.set_position(0);
    let converted = gguf_file::Content::read(&mut buffer)?;
    Ok(ModelWeights::from_gguf(converted, &mut buffer, device)?)
}
