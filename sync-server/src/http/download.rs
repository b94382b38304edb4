//! `GET /export`: the merged records as a streamed CSV or JSON download.
//!
//! The export runs on its own blocking thread and hands the response body chunks as it reads
//! the projections, so the first bytes go out at once and memory stays at a few chunks however
//! many records there are: an export never times out waiting for the whole file.

use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use fieldsync_proto::model::Kind;
use serde::Deserialize;

use super::{ApiError, AppState, Staff};
use crate::export::{self, Format};

/// Query of `GET /export`.
#[derive(Debug, Default, Deserialize)]
pub struct ExportQuery {
    pub kind: Option<String>,
    pub scope: Option<String>,
    pub format: Option<String>,
}

/// Bytes handed from the export thread to the response at a time.
const EXPORT_CHUNK: usize = 64 * 1024;

pub(super) async fn export_records(
    State(state): State<AppState>,
    _staff: Staff,
    Query(query): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let kind = query
        .kind
        .as_deref()
        .filter(|k| !k.is_empty())
        .map(str::parse::<Kind>)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let format = match query.format.as_deref().unwrap_or("csv") {
        "csv" => Format::Csv,
        "json" => Format::Json,
        other => {
            return Err(ApiError::bad_request(format!(
                "format must be csv or json, not `{other}`"
            )));
        }
    };
    let scope = query.scope.filter(|s| !s.is_empty());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let store = state.shared.store.clone();
    // The export runs on its own blocking thread, writing chunks as the projections are read;
    // the first bytes go out at once and memory stays at a few chunks, whatever the size.
    tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(EXPORT_CHUNK),
        };
        let result = export::export(&store, kind, scope.as_deref(), format, &mut out)
            .map_err(std::io::Error::other)
            .and_then(|_| std::io::Write::flush(&mut out));
        if let Err(e) = result {
            tracing::warn!(error = %e, "export stopped");
            // Ends the body with an error, so the client sees a broken download, not a short one.
            let _ = tx.blocking_send(Err(e));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let (content_type, ext) = match format {
        Format::Csv => ("text/csv; charset=utf-8", "csv"),
        Format::Json => ("application/json", "json"),
    };
    let name = format!(
        "fieldsync-{}-{}.{ext}",
        kind.map_or("records", Kind::as_str),
        chrono::Utc::now().format("%Y%m%d-%H%M%S")
    );
    let mut response = axum::body::Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// A `Write` that sends full chunks to the response body; fails once the client has gone.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(EXPORT_CHUNK),
        ));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= EXPORT_CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}
