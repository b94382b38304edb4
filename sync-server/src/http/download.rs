//! `GET /export`: the merged records as a streamed CSV or JSON download.
//!
//! The export runs on its own blocking thread and hands the response body chunks as it reads
//! the projections, so the first bytes go out at once and memory stays at a few chunks however
//! many records there are: an export never times out waiting for the whole file. When the
//! client goes away the response body (the chunks' receiver) is dropped, the next chunk cannot
//! be handed over, and the scan stops there.

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
/// Chunks waiting for the response at most.
const EXPORT_QUEUE: usize = 4;

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
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(EXPORT_QUEUE);
    let store = state.shared.store.clone();
    // The export runs on its own blocking thread, writing chunks as the projections are read;
    // the first bytes go out at once and memory stays at a few chunks, whatever the size.
    tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter::new(tx, EXPORT_CHUNK);
        if let Err(e) = export_into(&store, kind, scope.as_deref(), format, &mut out) {
            tracing::warn!(error = %e, written_bytes = out.written, "export stopped");
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

/// Runs an export into `out`; a failure (the client gone, or the store) also ends the body
/// with an error, so the client sees a broken download, not a short one.
fn export_into(
    store: &crate::store::ServerStore,
    kind: Option<Kind>,
    scope: Option<&str>,
    format: Format,
    out: &mut ChannelWriter,
) -> std::io::Result<()> {
    let result = export::export(store, kind, scope, format, out)
        .map_err(std::io::Error::other)
        .and_then(|_| std::io::Write::flush(out));
    if let Err(e) = &result {
        let _ = out
            .tx
            .blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
    }
    result
}

/// A `Write` that sends full chunks to the response body; fails once the client has gone.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    chunk: usize,
    buf: Vec<u8>,
    /// Bytes the export has written so far (handed over or not): how far its scan got.
    written: u64,
}

impl ChannelWriter {
    fn new(tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>, chunk: usize) -> Self {
        ChannelWriter {
            tx,
            chunk,
            buf: Vec::with_capacity(chunk),
            written: 0,
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(self.chunk),
        ));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        self.written += data.len() as u64;
        if self.buf.len() >= self.chunk {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use automerge::ActorId;
    use fieldsync_proto::Role;
    use fieldsync_proto::model::FieldValue;
    use fieldsync_proto::protocol::{Limits, PushDoc};
    use fieldsync_proto::record::Record;

    use super::*;
    use crate::store::{PreparedRound, ServerStore, User};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A store holding `n` village visits with long notes.
    fn store_with_visits(n: usize) -> Result<ServerStore, Box<dyn std::error::Error>> {
        let store = ServerStore::open_backend(redb::backends::InMemoryBackend::new())?;
        let user = User {
            id: "w1".into(),
            name: "王五".into(),
            role: Role::Village,
            scopes: vec!["village:1".parse()?],
        };
        store.create_code(&user, "code", i64::MAX)?;
        store.enroll("code", "0101", 1)?;
        let ctx = store.device_ctx("0101")?.ok_or("no device")?;
        let mut pushes = Vec::new();
        for i in 0..n {
            let fields = [
                ("village", FieldValue::Text("大坪村".into())),
                ("household", FieldValue::Text(format!("农户{i}"))),
                (
                    "visited_at",
                    FieldValue::Text("2026-11-28T08:00:00+08:00".into()),
                ),
                ("findings", FieldValue::Text("道路硬化，".repeat(40))),
            ]
            .map(|(k, v)| (k.to_string(), v));
            let mut record = Record::create(
                Kind::VillageVisit,
                "village:1",
                ActorId::from(ctx.actor.clone()),
                &fields,
                1,
            )?;
            pushes.push(PushDoc {
                id: *record.id().as_bytes(),
                kind: record.kind(),
                scope: record.scope().to_string(),
                changes: record.changes_since(&[]),
            });
        }
        let limits = Limits::default();
        let push = store.prepare(&ctx, pushes, &limits)?;
        let round = PreparedRound {
            ctx,
            batch: None,
            push,
        };
        store.commit_rounds(vec![round], &limits, 1)?;
        Ok(store)
    }

    /// Runs an export through a channel like the download's; the receiver takes `take` chunks
    /// (all of them if None) and is then dropped. Returns the export's result and the bytes it
    /// wrote, which grow with every record it scans.
    fn run(store: &ServerStore, format: Format, take: Option<usize>) -> (bool, u64) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(EXPORT_QUEUE);
        let store = store.clone();
        let export = std::thread::spawn(move || {
            let mut out = ChannelWriter::new(tx, 4096);
            let ok = export_into(&store, None, None, format, &mut out).is_ok();
            (ok, out.written)
        });
        let mut taken = 0;
        while take.is_none_or(|n| taken < n) {
            match rx.blocking_recv() {
                Some(_) => taken += 1,
                None => break,
            }
        }
        drop(rx);
        export.join().unwrap_or((false, 0))
    }

    #[test]
    fn an_export_stops_scanning_once_the_client_is_gone() -> TestResult {
        let store = store_with_visits(300)?;
        for format in [Format::Csv, Format::Json] {
            let (ok, whole) = run(&store, format, None);
            assert!(ok, "{format:?}: a read to the end succeeds");
            assert!(
                whole > 40 * 4096,
                "{format:?}: a large export ({whole} bytes)"
            );
            let (ok, written) = run(&store, format, Some(1));
            assert!(!ok, "{format:?}: the export fails once the client is gone");
            // One chunk taken, the queue full behind it, the one that found no receiver, and
            // what the CSV writer buffers (8 KiB).
            let bound = (1 + EXPORT_QUEUE as u64 + 1) * 4096 + 2 * 8192;
            assert!(
                written <= bound,
                "{format:?}: scanned on to {written} of {whole} bytes after the client left"
            );
        }
        Ok(())
    }
}
