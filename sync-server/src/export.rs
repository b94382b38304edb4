//! Exports of the merged records, streamed from the projections (no Automerge document is
//! loaded): JSON as an array of record objects, CSV as UTF-8 with a BOM so Excel opens Chinese
//! text correctly.

use std::io::Write;

use fieldsync_proto::model::{FieldValue, Kind};
use fieldsync_proto::record::RecordView;

use crate::store::{ServerStore, StoreError};

/// Export formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
    #[error("writing CSV: {0}")]
    Csv(#[from] csv::Error),
}

/// The UTF-8 byte order mark that tells Excel the CSV is UTF-8.
pub const BOM: &str = "\u{feff}";

/// Writes the records of `kind`/`scope` to `out`; returns how many were written.
pub fn export(
    store: &ServerStore,
    kind: Option<Kind>,
    scope: Option<&str>,
    format: Format,
    out: &mut dyn Write,
) -> Result<usize, ExportError> {
    let mut count = 0;
    match format {
        Format::Json => {
            out.write_all(b"[")?;
            // A failed write (the client of a download went away) ends the scan at once.
            let mut failure = None;
            let scanned = store.for_each_record(kind, scope, |view| {
                let sep: &[u8] = if count == 0 { b"\n" } else { b",\n" };
                let json =
                    serde_json::to_vec(&view).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                out.write_all(sep)
                    .and_then(|()| out.write_all(&json))
                    .map_err(|e| stop_on(&mut failure, e))?;
                count += 1;
                Ok(())
            });
            if let Some(e) = failure {
                return Err(ExportError::Io(e));
            }
            scanned?;
            out.write_all(b"\n]\n")?;
        }
        Format::Csv => {
            out.write_all(BOM.as_bytes())?;
            let columns = columns(kind);
            let mut writer = csv::Writer::from_writer(out);
            let mut header = vec!["id".to_string(), "kind".to_string(), "scope".to_string()];
            header.extend(columns.iter().cloned());
            header.push("conflicts".to_string());
            writer.write_record(&header)?;
            let mut failure = None;
            let scanned = store.for_each_record(kind, scope, |view| {
                writer
                    .write_record(row(&view, &columns))
                    .map_err(|e| stop_on(&mut failure, e))?;
                count += 1;
                Ok(())
            });
            if let Some(e) = failure {
                return Err(ExportError::Csv(e));
            }
            scanned?;
            writer.flush()?;
        }
    }
    Ok(count)
}

/// Keeps a write failure to report and returns the error that ends the store's scan (never
/// reported itself: the kept failure is).
fn stop_on<E>(failure: &mut Option<E>, e: E) -> StoreError {
    *failure = Some(e);
    StoreError::Corrupt("the export stopped writing".into())
}

/// One column per field: the kind's schema fields in schema order, or the union of all kinds'.
fn columns(kind: Option<Kind>) -> Vec<String> {
    let kinds: Vec<Kind> = kind.map_or_else(|| Kind::ALL.to_vec(), |k| vec![k]);
    let mut cols: Vec<String> = Vec::new();
    for k in kinds {
        for f in k.schema().fields {
            if !cols.iter().any(|c| c == f.name) {
                cols.push(f.name.to_string());
            }
        }
    }
    cols
}

fn row(view: &RecordView, columns: &[String]) -> Vec<String> {
    let mut row = vec![
        view.id.clone(),
        view.kind.as_str().to_string(),
        view.scope.clone(),
    ];
    row.extend(columns.iter().map(|c| {
        view.fields
            .get(c)
            .map(FieldValue::to_cell)
            .unwrap_or_default()
    }));
    row.push(
        view.conflicts
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join("; "),
    );
    row
}
