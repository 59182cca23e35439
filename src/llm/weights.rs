//! Loading the GGUF weights in the format the service asked for.
//!
//! The model takes its tensors one at a time, so a format other than the file's own is
//! produced by converting each matrix as it is read (never the whole file at once in
//! memory). Norms and other vectors keep their f32 form.

use std::io::{Read, Seek};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;

use super::model::Transformer;
use super::LlmError;
use crate::config::WeightFormat;

fn target_dtype(format: WeightFormat) -> Option<GgmlDType> {
    match format {
        WeightFormat::AsShipped => None,
        WeightFormat::Q8_0 => Some(GgmlDType::Q8_0),
        WeightFormat::F32 => Some(GgmlDType::F32),
    }
}

/// Builds the model from a GGUF header and its reader, converting matrices to `format`
/// one at a time as the model takes them, with rotary tables for `context` positions.
///
/// # Errors
/// When the GGUF's architecture is not supported or a tensor cannot be read or converted.
pub fn into_model<R: Read + Seek>(
    content: gguf_file::Content,
    reader: &mut R,
    device: &Device,
    format: WeightFormat,
    context: usize,
) -> Result<Transformer, LlmError> {
    Transformer::from_tensors(&content, device, context, |name| {
        let target = content
            .tensor_infos
            .get(name)
            .and_then(|info| conversion(format, info.shape.rank(), info.ggml_dtype));
        match target {
            Some(target) => {
                let tensor = content.tensor(reader, name, &Device::Cpu)?;
                Ok(reformat(&tensor, target, device)?)
            }
            None => Ok(content.tensor(reader, name, device)?),
        }
    })
}

/// The format a tensor of `rank` stored as `stored` is converted to for `format`:
/// matrices of another format only.
fn conversion(format: WeightFormat, rank: usize, stored: GgmlDType) -> Option<GgmlDType> {
    target_dtype(format).filter(|&target| rank == 2 && stored != target)
}

/// `tensor`'s values as `target` on `device`.
fn reformat(tensor: &QTensor, target: GgmlDType, device: &Device) -> candle_core::Result<QTensor> {
    QTensor::quantize_onto(&tensor.dequantize(&Device::Cpu)?, target, device)
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
        let tensor = match conversion(format, tensor.shape().rank(), tensor.dtype()) {
            Some(target) => reformat(&tensor, target, &Device::Cpu)?,
            None => tensor,
        };
        tensors.push((name.as_str(), tensor));
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
