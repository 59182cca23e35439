//! Loading the GGUF weights in the format the service asked for.
//!
//! The model reads its weights from a GGUF reader, so a format other than the file's
//! own is produced by converting every quantized matrix and handing the model an
//! in-memory GGUF. Norms and other vectors keep their f32 form.

use std::io::{Cursor, Read, Seek};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;

use super::model::Llama;
use super::LlmError;
use crate::config::WeightFormat;

fn target_dtype(format: WeightFormat) -> Option<GgmlDType> {
    match format {
        WeightFormat::AsShipped => None,
        WeightFormat::Q8_0 => Some(GgmlDType::Q8_0),
        WeightFormat::F32 => Some(GgmlDType::F32),
    }
}

/// Builds the model from a GGUF header and its reader, converting matrices to `format`,
/// with rotary tables for `context` positions.
///
/// # Errors
/// When the GGUF is not a llama or a tensor cannot be read or converted.
pub fn into_model<R: Read + Seek>(
    content: gguf_file::Content,
    reader: &mut R,
    device: &Device,
    format: WeightFormat,
    context: usize,
) -> Result<Llama, LlmError> {
    if target_dtype(format).is_none() {
        return Llama::from_gguf(&content, reader, device, context);
    }
    let mut buffer = Cursor::new(Vec::new());
    convert(&content, reader, format, &mut buffer)?;
    buffer.set_position(0);
    let converted = gguf_file::Content::read(&mut buffer)?;
    Llama::from_gguf(&converted, &mut buffer, device, context)
}

/// Writes the GGUF at `from` with its matrices in `format` to `to` (so that another
/// engine, llama.cpp's bench, can run exactly the weights we run).
///
/// # Errors
/// When either file cannot be used or a tensor cannot be converted.
pub fn write_converted(
    from: &std::path::Path,
    format: WeightFormat,
    to: &std::path::Path,
) -> Result<(), LlmError> {
    let mut reader = std::fs::File::open(from)?;
    let content = gguf_file::Content::read(&mut reader)?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(to)?);
    convert(&content, &mut reader, format, &mut out)
}

/// Writes `content` as a GGUF with every matrix in `format`.
fn convert<R: Read + Seek, W: std::io::Write + Seek>(
    content: &gguf_file::Content,
    reader: &mut R,
    format: WeightFormat,
    out: &mut W,
) -> Result<(), LlmError> {
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let tensor = content.tensor(reader, name, &Device::Cpu)?;
        let is_matrix = tensor.shape().rank() == 2;
        let converted = match target_dtype(format) {
            Some(target) if is_matrix && tensor.dtype() != target => {
                QTensor::quantize(&tensor.dequantize(&Device::Cpu)?, target)?
            }
            _ => tensor,
        };
        tensors.push((name.as_str(), converted));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    gguf_file::write(out, &metadata, &tensor_refs)?;
    Ok(())
}
