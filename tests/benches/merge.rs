//! What the server spends merging one new check-in, step by step (µs per document).
//!
//! `cargo bench -p fieldsync-tests --bench merge -- [--docs N]`

use std::time::Instant;

use fieldsync_proto::access::{DeviceCtx, Role};
use fieldsync_proto::model::{FieldValue, Kind};
use fieldsync_proto::protocol::{Limits, PushDoc, split_changes};
use fieldsync_proto::record::Record;
use fieldsync_proto::sync::merge_push;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let docs: u32 = args
        .iter()
        .position(|a| a == "--docs")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(5000);
    let actor = automerge::ActorId::from([3u8; 16]);
    let ctx = DeviceCtx {
        device_id: "bench".into(),
        actor: vec![3u8; 16],
        user_id: "u1".into(),
        role: Role::Volunteer,
        scopes: vec!["team:1".parse().expect("scope")],
    };
    let fields: Vec<(String, FieldValue)> = [
        ("volunteer_id", "u1"),
        ("volunteer_name", "张三"),
        ("team", "1"),
        ("activity", "清洁家园"),
        ("place", "幸福社区"),
        ("started_at", "2026-11-28T08:00:00+08:00"),
        ("ended_at", "2026-11-28T10:30:00+08:00"),
        ("status", "submitted"),
        ("note", "扫落叶"),
        ("device_time", "2026-11-28T10:31:00+08:00"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), FieldValue::Text(v.to_string())))
    .collect();
    let mut pushes = Vec::new();
    for _ in 0..docs {
        let mut r = Record::create(Kind::CheckIn, "team:1", actor.clone(), &fields, 1)?;
        pushes.push(PushDoc {
            id: *r.id().as_bytes(),
            kind: Kind::CheckIn,
            scope: "team:1".into(),
            changes: r.changes_since(&[]),
        });
    }
    let limits = Limits::default();
    let per_doc = |t: Instant| t.elapsed().as_secs_f64() * 1e6 / f64::from(docs);

    let t = Instant::now();
    for p in &pushes {
        split_changes(&p.changes, &limits)?;
    }
    let split = per_doc(t);
    let t = Instant::now();
    for p in &pushes {
        let mut doc = automerge::AutoCommit::new();
        doc.apply_changes(split_changes(&p.changes, &limits)?)?;
    }
    let apply = per_doc(t);
    let t = Instant::now();
    for p in &pushes {
        let merged = merge_push(None, p, &ctx, &limits)?;
        serde_json::to_vec(&merged.view)?;
    }
    let merge = per_doc(t);
    println!("merge of one new check-in, {docs} documents (µs per document)");
    println!("  parse and check change chunks        {split:8.1}");
    println!("  … and apply to a new document        {apply:8.1}");
    println!("  whole merge_push + JSON projection   {merge:8.1}");
    Ok(())
}
