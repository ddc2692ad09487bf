//! Multi-document YAML manifests, as `kubectl apply -f` reads them.
//!
//! Each document is parsed on its own, so one broken document (bad YAML, a wrong field type)
//! is reported with its index and does not hide the others. `kind: List` documents are unpacked.

use serde_json::Value;

use crate::objects::{Object, ObjectError};

/// What became of one document of a manifest file.
#[derive(Debug)]
pub struct Document {
    /// 0-based index of the document within its file (as `---` separates them).
    pub index: usize,
    /// 1-based line where the document starts, for error messages.
    pub line: usize,
    pub result: Result<Vec<Object>, DocumentError>,
}

/// Why a document produced no object.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DocumentError {
    #[error("invalid YAML: {0}")]
    Yaml(String),
    #[error(transparent)]
    Object(#[from] ObjectError),
}

impl DocumentError {
    /// Documents of kinds the mesh does not read (Deployments, ConfigMaps…) are expected in a
    /// directory of manifests and are not errors a user must fix.
    pub fn is_unsupported_kind(&self) -> bool {
        matches!(
            self,
            DocumentError::Object(ObjectError::UnsupportedKind { .. })
        )
    }
}

/// Splits `text` into YAML documents and types each one. Empty documents are skipped.
pub fn parse(text: &str) -> Vec<Document> {
    split_documents(text)
        .into_iter()
        .enumerate()
        .filter(|(_, (_, body))| !is_blank(body))
        .map(|(index, (line, body))| Document {
            index,
            line,
            result: parse_document(body),
        })
        .collect()
}

fn parse_document(body: &str) -> Result<Vec<Object>, DocumentError> {
    let value: Value =
        serde_saphyr::from_str(body).map_err(|e| DocumentError::Yaml(e.to_string()))?;
    if value.get("kind").and_then(Value::as_str) == Some("List") {
        let items = match value.get("items") {
            Some(Value::Array(items)) => items.clone(),
            _ => return Err(ObjectError::NotAnObject("a List without an `items` array").into()),
        };
        return items
            .into_iter()
            .map(|v| Object::from_value(v).map_err(Into::into))
            .collect();
    }
    Ok(vec![Object::from_value(value)?])
}

/// Splits at `---` lines (a document start marker at column 0) and `...` end markers.
/// Returns each document's first line number (1-based) and its text.
pub(crate) fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        let is_marker = trimmed == "---" || trimmed.starts_with("--- ") || trimmed == "...";
        if is_marker {
            docs.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = n + 2;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start..]));
    docs
}

fn is_blank(body: &str) -> bool {
    body.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bad_document_does_not_hide_the_others() {
        let text = "\
# leading comment
apiVersion: v1
kind: Namespace
metadata: {name: a}
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: a
---
---
apiVersion: v1
kind: Pod
metadata: {name: q, namespace: a}
spec: {hostNetwork: maybe}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d, namespace: a}
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: ServiceAccount, metadata: {name: s, namespace: a}}
";
        ambit_testkit::corpus::save("manifest", "documents", text.as_bytes());
        let docs = parse(text);
        let summary: Vec<_> = docs
            .iter()
            .map(|d| {
                (
                    d.index,
                    d.line,
                    d.result.as_ref().map(Vec::len).map_err(ToString::to_string),
                )
            })
            .collect();
        assert_eq!(summary.len(), 5, "{summary:?}");
        assert_eq!(summary[0], (0, 1, Ok(1)));
        assert_eq!((summary[1].0, summary[1].1), (1, 6));
        assert!(
            summary[1].2.as_ref().unwrap_err().contains("invalid YAML"),
            "{summary:?}"
        );
        // Document 2 is empty (two markers in a row) and skipped; indices stay as in the file.
        assert_eq!(summary[2].0, 3);
        assert!(
            summary[2]
                .2
                .as_ref()
                .unwrap_err()
                .contains("spec.hostNetwork"),
            "{summary:?}"
        );
        assert!(docs[3].result.as_ref().unwrap_err().is_unsupported_kind());
        assert_eq!(summary[4], (5, 20, Ok(1)));
    }
}
