//! Input files of the clients: JSON lines, or CSV with a header row (a name ending in
//! `.csv`), each row kept with its line number so that errors can point at it.
//!
//! Fields: `text` (required, not blank), `text_pair`, `label`, `id`; other fields are
//! ignored, so a data set's extra columns do not stop a run.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

/// One input row.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Row {
    /// The 1-based line of the file it came from.
    #[serde(skip)]
    pub line: usize,
    /// The caller's id, if the file gives one.
    #[serde(default)]
    pub id: Option<String>,
    /// The input text.
    pub text: String,
    /// The second text of pair tasks.
    #[serde(default)]
    pub text_pair: Option<String>,
    /// The gold label, if the file gives one.
    #[serde(default)]
    pub label: Option<String>,
}

impl Row {
    /// The row as a predict input: `text` and `text_pair`.
    pub fn input(&self) -> Value {
        match &self.text_pair {
            Some(pair) => json!({ "text": self.text, "text_pair": pair }),
            None => json!({ "text": self.text }),
        }
    }
}

/// Why a file could not be read into rows.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    /// The file could not be opened or read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not a valid row.
    #[error("line {line}: {reason}")]
    Bad {
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// Every row of the file, in order; stops at the first bad line.
///
/// # Errors
/// When the file cannot be read or a line is not a row with a non-blank `text`.
pub fn read(path: &Path) -> Result<Vec<Row>, RowError> {
    let is_csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let content = std::fs::read_to_string(path).map_err(|source| RowError::Read {
        path: path.to_owned(),
        source,
    })?;
    let rows = if is_csv {
        read_csv(&content)?
    } else {
        read_json_lines(&content)?
    };
    for row in &rows {
        if row.text.trim().is_empty() {
            return Err(RowError::Bad {
                line: row.line,
                reason: "`text` is empty".into(),
            });
        }
    }
    Ok(rows)
}

fn read_json_lines(content: &str) -> Result<Vec<Row>, RowError> {
    content
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            let mut row: Row = serde_json::from_str(line).map_err(|e| RowError::Bad {
                line: index + 1,
                reason: e.to_string(),
            })?;
            row.line = index + 1;
            Ok(row)
        })
        .collect()
}

fn read_csv(content: &str) -> Result<Vec<Row>, RowError> {
    let mut reader = csv::Reader::from_reader(content.as_bytes());
    let bad = |line: usize, reason: String| RowError::Bad { line, reason };
    let headers = reader.headers().map_err(|e| bad(1, e.to_string()))?.clone();
    if !headers.iter().any(|h| h == "text") {
        return Err(bad(1, "the header names no `text` column".into()));
    }
    reader
        .records()
        .map(|record| {
            let record = record.map_err(|e| {
                let line = e.position().map_or(0, |p| p.line() as usize);
                bad(line, e.to_string())
            })?;
            let line = record.position().map_or(0, |p| p.line() as usize);
            let mut row: Row = record
                .deserialize(Some(&headers))
                .map_err(|e| bad(line, e.to_string()))?;
            row.line = line;
            Ok(row)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, content: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        (dir, path)
    }

    #[test]
    fn json_lines_keep_their_line_numbers_past_blank_lines() {
        let (_dir, path) = file(
            "in.jsonl",
            "{\"text\":\"a\",\"label\":\"x\",\"extra\":1}\n\n{\"text\":\"b\",\"id\":\"7\"}\n",
        );
        let rows = read(&path).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].line, rows[0].label.as_deref()), (1, Some("x")));
        assert_eq!((rows[1].line, rows[1].id.as_deref()), (3, Some("7")));
    }

    #[test]
    fn a_bad_json_line_is_named() {
        let (_dir, path) = file("in.jsonl", "{\"text\":\"a\"}\n{\"label\":\"x\"}\n");
        let err = read(&path).unwrap_err().to_string();
        assert!(err.starts_with("line 2:"), "{err}");
        let (_dir, path) = file("in.jsonl", "{\"text\":\"a\"}\n{\"text\":\"  \"}\n");
        assert_eq!(
            read(&path).unwrap_err().to_string(),
            "line 2: `text` is empty"
        );
    }

    #[test]
    fn csv_with_a_header_reads_quoted_commas_and_counts_lines() {
        let (_dir, path) = file(
            "in.csv",
            "label,text\npositive,\"warm, funny\"\nnegative,dull\n",
        );
        let rows = read(&path).unwrap();
        assert_eq!(rows[0].text, "warm, funny");
        assert_eq!(
            (rows[1].line, rows[1].label.as_deref()),
            (3, Some("negative"))
        );
        let (_dir, path) = file("in.csv", "sentence,label\nx,y\n");
        assert!(read(&path).unwrap_err().to_string().contains("`text`"));
    }
}
