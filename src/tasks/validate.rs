//! The rules of a write and of a retrieval: sizes, ids, labels, `k`, strategies.

use std::collections::HashSet;

use sha2::{Digest, Sha256};

use super::spec::TaskSpec;
use super::views::ItemInput;
use super::TaskError;
use crate::retrieve::Strategy;
use crate::store::ItemKind;

/// The most rows one write may carry.
pub const MAX_BATCH: usize = 1000;
/// The longest text (and text pair) accepted, in bytes.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;
/// The longest caller id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// The most demonstrations one prompt or retrieval may ask for (`k`, `fixed` ids, a
/// task's default): the one cap the API, the defaults and the tune grid share.
pub const MAX_K: usize = 64;
/// The id of a row that came without one: a hash of its content, so that a retried
/// batch names its rows as the first try did and stores none of them twice.
fn content_id(item: &ItemInput) -> String {
    let content = serde_json::json!([item.text, item.text_pair, item.label]).to_string();
    hex::encode(&Sha256::digest(content.as_bytes())[..16])
}

fn check_text(row: usize, field: &str, text: &str) -> Result<(), TaskError> {
    if text.trim().is_empty() {
        return Err(TaskError::InvalidRow {
            row,
            message: format!("`{field}` is empty"),
        });
    }
    if text.len() > MAX_TEXT_BYTES {
        return Err(TaskError::InvalidRow {
            row,
            message: format!(
                "`{field}` has {} bytes; at most {MAX_TEXT_BYTES}",
                text.len()
            ),
        });
    }
    Ok(())
}

fn check_id(row: usize, id: &str) -> Result<(), TaskError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && !id.contains('/')
        && !id.chars().any(char::is_control);
    if valid {
        Ok(())
    } else {
        Err(TaskError::InvalidRow {
            row,
            message: format!(
                "id `{id}` is invalid: give 1 to {MAX_ID_BYTES} bytes without `/` or control characters"
            ),
        })
    }
}

/// Checks a batch against the task and gives every row an id (its content's hash
/// where the caller gave none).
pub(super) fn validate_rows(
    spec: &TaskSpec,
    kind: ItemKind,
    rows: Vec<ItemInput>,
) -> Result<Vec<ItemInput>, TaskError> {
    if rows.is_empty() {
        return Err(TaskError::InvalidBatch("the batch is empty".into()));
    }
    if rows.len() > MAX_BATCH {
        let field = match kind {
            ItemKind::Example => "examples",
            ItemKind::PoolItem => "items",
        };
        return Err(TaskError::InvalidBatch(format!(
            "`{field}`: {} rows given; at most {MAX_BATCH} per request",
            rows.len()
        )));
    }
    let mut given = HashSet::new();
    rows.into_iter()
        .enumerate()
        .map(|(row, mut item)| {
            check_text(row, "text", &item.text)?;
            if let Some(pair) = &item.text_pair {
                check_text(row, "text_pair", pair)?;
            }
            // Rows without ids and the same content share their id: one is stored.
            let id = match item.id.take() {
                Some(id) => {
                    check_id(row, &id)?;
                    if !given.insert(id.clone()) {
                        return Err(TaskError::InvalidRow {
                            row,
                            message: format!("id `{id}` appears twice in the batch"),
                        });
                    }
                    id
                }
                None => content_id(&item),
            };
            item.id = Some(id);
            match (kind, &item.label) {
                (ItemKind::Example, None) => Err(TaskError::InvalidRow {
                    row,
                    message: "`label` is missing".into(),
                }),
                (ItemKind::Example, Some(label)) if label.trim().is_empty() => {
                    Err(TaskError::InvalidRow {
                        row,
                        message: "`label` is empty".into(),
                    })
                }
                (ItemKind::Example, Some(label))
                    if spec.is_classification() && !spec.labels.contains(label) =>
                {
                    Err(TaskError::InvalidRow {
                        row,
                        message: format!(
                            "label `{label}` is not one of the task's labels ({})",
                            spec.labels.join(", ")
                        ),
                    })
                }
                (ItemKind::PoolItem, Some(_)) => Err(TaskError::InvalidRow {
                    row,
                    message: "pool items are unlabeled: post labelled rows as examples".into(),
                }),
                _ => Ok(item),
            }
        })
        .collect()
}

/// Checks that `k` lies in `min..=MAX_K`.
///
/// # Errors
/// When it does not.
pub fn check_k(k: usize, min: usize) -> Result<(), TaskError> {
    if (min..=MAX_K).contains(&k) {
        Ok(())
    } else {
        Err(TaskError::InvalidParameter {
            field: "k",
            message: format!("{k} is out of range: give {min} to {MAX_K}"),
        })
    }
}

/// Checks a strategy's parameters.
///
/// # Errors
/// When MMR's `lambda` lies outside 0 to 1.
pub fn check_strategy(strategy: Strategy) -> Result<(), TaskError> {
    match strategy {
        Strategy::Mmr { lambda } if !(0.0..=1.0).contains(&lambda) => {
            Err(TaskError::InvalidParameter {
                field: "lambda",
                message: format!("{lambda} is out of range: give 0 to 1"),
            })
        }
        _ => Ok(()),
    }
}
