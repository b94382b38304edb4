//! The village indicator table: each village's survey values, conflicts flagged, and its
//! visits.

use axum::extract::State;
use fieldsync_proto::model::FieldValue;
use maud::{Markup, html};

use super::layout::{PageError, PageResult, PageStaff, layout};
use crate::http::{AppState, blocking};
use crate::office;

pub(super) async fn villages_page(
    State(state): State<AppState>,
    page: PageStaff,
) -> Result<Markup, PageError> {
    let lang = page.lang;
    let store = state.shared.store.clone();
    let rows = blocking(move || Ok(office::villages(&store)?))
        .await
        .page(lang)?;
    let columns: [(&str, &str, &str); 11] = [
        ("road_km_hardened", "硬化道路(km)", "Roads hardened (km)"),
        ("all_roads_hardened", "村村通硬化", "All roads hardened"),
        ("bus_service", "通客车", "Bus"),
        ("tap_water_pct", "自来水(%)", "Tap water (%)"),
        ("electricity_pct", "通电(%)", "Electricity (%)"),
        ("tv_coverage_pct", "电视(%)", "TV (%)"),
        ("broadband_mbps", "宽带(Mbps)", "Broadband (Mbps)"),
        ("standard_clinic", "标准化卫生室", "Clinic"),
        ("licensed_doctors", "执业医生", "Doctors"),
        ("school_sports_facilities", "学校体育设施", "School sports"),
        (
            "collective_income_yuan",
            "集体收入(元)",
            "Collective income (¥)",
        ),
    ];
    let body = html! {
        table #villages {
            tr {
                th { (lang.t("村", "Village")) }
                @for (_, zh, en) in &columns { th { (lang.t(zh, en)) } }
                th { (lang.t("最近走访", "Last visit")) } th { (lang.t("走访次数", "Visits")) }
            }
            @for r in &rows {
                tr {
                    td {
                        @if let Some(s) = &r.survey { a href={"/records/" (s.id)} { (r.village) } } @else { (r.village) }
                        " " span.muted { (r.scope) }
                    }
                    @for (field, _, _) in &columns {
                        @let conflicted = r.conflicts.iter().any(|c| c == field);
                        td class=[conflicted.then_some("conflict")] {
                            (r.survey.as_ref().and_then(|s| s.field(field)).map(FieldValue::to_cell).unwrap_or_default())
                            @if conflicted { " " span.flag title=(lang.t("存在冲突值", "conflicting values")) { "⚠" } }
                        }
                    }
                    td { (r.last_visit.clone().unwrap_or_default()) }
                    td { (r.visits) }
                }
            }
        }
    };
    Ok(layout(
        &page,
        lang.t("村情台账", "Village indicators"),
        "/villages",
        body,
    ))
}
