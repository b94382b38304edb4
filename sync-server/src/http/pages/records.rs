//! The record list, and one record with its history.
//!
//! The list has filters and export links; a record's page shows office staff the review and
//! resolve forms too.

use axum::extract::{Path, Query, State};
use fieldsync_proto::model::{FieldValue, Kind, Status};
use fieldsync_proto::record::RecordView;
use maud::{Markup, html};

use super::conflicts::resolve_controls;
use super::i18n::{Lang, field_label, kind_label, status_label, status_text};
use super::layout::{PageError, PageResult, PageStaff, layout, time_text};
use super::review::review_controls;
use crate::http::{AppState, MAX_LIST, RecordQuery, blocking, list_records, parse_id};
use crate::office::{self, OfficeError};

/// A short one-line summary of a record for lists.
pub(super) fn summary(view: &RecordView) -> String {
    let keys: &[&str] = match view.kind {
        Kind::CheckIn => &["volunteer_name", "activity", "place"],
        Kind::VillageVisit => &["village", "household", "findings"],
        Kind::VillageSurvey => &["village", "note"],
    };
    keys.iter()
        .filter_map(|k| view.field(k).map(FieldValue::to_cell))
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" · ")
}

fn record_rows(lang: Lang, records: &[RecordView]) -> Markup {
    html! {
        table #records {
            tr {
                th { (lang.t("类型", "Kind")) } th { (lang.t("范围", "Scope")) } th { (lang.t("日期", "Date")) }
                th { (lang.t("内容", "Summary")) } th { (lang.t("时长", "Hours")) } th { (lang.t("状态", "Status")) } th { (lang.t("冲突", "Conflicts")) }
            }
            @for r in records {
                tr class=[(!r.conflicts.is_empty()).then_some("conflict")] {
                    td { a href={"/records/" (r.id)} { (kind_label(lang, r.kind)) } }
                    td { (r.scope) }
                    td { (office::record_day(r).unwrap_or("")) }
                    td { (summary(r)) }
                    td { (r.field("hours").map(FieldValue::to_cell).unwrap_or_default()) }
                    td { (r.text("status").map(|s| status_text(lang, s)).unwrap_or_default()) }
                    td { (r.conflicts.keys().cloned().collect::<Vec<_>>().join(", ")) }
                }
            }
        }
    }
}

pub(super) async fn records_page(
    State(state): State<AppState>,
    page: PageStaff,
    Query(query): Query<RecordQuery>,
) -> Result<Markup, PageError> {
    let lang = page.lang;
    let filter = query.filter().page(lang)?;
    let records = list_records(&state, filter).await.page(lang)?;
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    let kind = v(&query.kind);
    let export_kind = if kind.is_empty() {
        String::new()
    } else {
        format!("kind={kind}&")
    };
    let body = html! {
        form.filters method="get" action="/records" {
            label { (lang.t("类型", "Kind")) select name="kind" {
                option value="" { (lang.t("全部", "all")) }
                @for k in Kind::ALL { option value=(k.as_str()) selected[kind == k.as_str()] { (kind_label(lang, k)) } }
            } }
            label { (lang.t("范围", "Scope")) input name="scope" value=(v(&query.scope)) placeholder="team:7 / village:3"; }
            label { (lang.t("状态", "Status")) select name="status" {
                option value="" { (lang.t("全部", "all")) }
                @for s in Status::ALL { option value=(s.as_str()) selected[query.status.as_deref() == Some(s.as_str())] { (status_label(lang, s)) } }
            } }
            label { (lang.t("从", "From")) input type="date" name="from" value=(v(&query.from)); }
            label { (lang.t("到", "To")) input type="date" name="to" value=(v(&query.to)); }
            label { (lang.t("搜索", "Text")) input name="q" value=(v(&query.q)); }
            button type="submit" { (lang.t("筛选", "Filter")) }
        }
        p {
            (records.len()) " " (lang.t("条记录", "records"))
            @if records.len() >= MAX_LIST { " " span.muted { (lang.t("（只显示前 5000 条，请缩小筛选范围）", "(first 5000 shown; narrow the filter)")) } }
            " · " a #export-csv href={"/export?" (export_kind) "format=csv"} { (lang.t("导出 Excel (CSV)", "Export to Excel (CSV)")) }
            " · " a href={"/export?" (export_kind) "format=json"} { (lang.t("导出 JSON", "Export JSON")) }
        }
        (record_rows(lang, &records))
    };
    Ok(layout(&page, lang.t("记录", "Records"), "/records", body))
}

pub(super) async fn record_page(
    State(state): State<AppState>,
    page: PageStaff,
    Path(id): Path<String>,
) -> Result<Markup, PageError> {
    let lang = page.lang;
    let id = parse_id(&id).page(lang)?;
    let store = state.shared.store.clone();
    let (view, history) = blocking(move || {
        let view = store.record_view(id)?.ok_or(OfficeError::NotFound(id))?;
        Ok((view, office::history(&store, id)?.unwrap_or_default()))
    })
    .await
    .page(lang)?;
    let can_act = page.is_office();
    let body = html! {
        p { (kind_label(lang, view.kind)) " · " code { (view.scope) } " · " code { (view.id) } }
        table #fields {
            tr { th { (lang.t("字段", "Field")) } th { (lang.t("值", "Value")) } }
            @for (name, value) in &view.fields {
                tr class=[view.conflicts.contains_key(name).then_some("conflict")] {
                    td { (field_label(lang, view.kind, name)) }
                    td {
                        @if let Some(all) = view.conflicts.get(name) {
                            strong { (lang.t("冲突：", "Conflict: ")) }
                            (all.iter().map(FieldValue::to_cell).collect::<Vec<_>>().join(" | "))
                        } @else if name == "status" {
                            (status_text(lang, &value.to_cell()))
                        } @else { (value.to_cell()) }
                    }
                }
            }
        }
        @if can_act && view.kind == Kind::CheckIn { (review_controls(&page, &view)) }
        @if can_act && !view.conflicts.is_empty() { (resolve_controls(&page, &view)) }
        h2 { (lang.t("修改历史", "History")) }
        table #history {
            tr {
                th { (lang.t("设备时间", "Device time")) } th { (lang.t("服务器接收", "Received")) }
                th { (lang.t("用户", "User")) } th { (lang.t("设备", "Device")) } th { (lang.t("字段", "Fields")) }
            }
            @for h in &history {
                tr {
                    td { (time_text(h.device_time)) }
                    td {
                        (h.received_at.map(time_text).unwrap_or_default())
                        @if h.clock_flagged {
                            br; span.flag { (lang.t("⚠ 设备时钟偏差 ", "⚠ device clock off by ")) (h.clock_gap.map(|g| format!("{:.1} h", g as f64 / 3600.0)).unwrap_or_default()) }
                        }
                    }
                    td { (h.user_name.clone().or(h.user_id.clone()).unwrap_or_default()) }
                    td { code { (h.device_id.as_deref().map(|d| d.get(..16).unwrap_or(d)).unwrap_or("?")) } }
                    td { (h.fields.join(", ")) }
                }
            }
        }
    };
    Ok(layout(&page, &summary(&view), "/records", body))
}
