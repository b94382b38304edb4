//! The village indicator table: survey values, conflicts flagged, and visits per village.
//!
//! The columns are the survey fields the schema marks as indicators, in its order.

use axum::extract::State;
use fieldsync_proto::model::{FieldValue, Kind, Label};
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
    let columns: Vec<(&str, Label)> = Kind::VillageSurvey
        .schema()
        .fields
        .iter()
        .filter_map(|spec| spec.indicator.map(|heading| (spec.name, heading)))
        .collect();
    let body = html! {
        table #villages {
            tr {
                th { (lang.t("村", "Village")) }
                @for (_, heading) in &columns { th { (lang.t(heading.zh, heading.en)) } }
                th { (lang.t("最近走访", "Last visit")) } th { (lang.t("走访次数", "Visits")) }
            }
            @for r in &rows {
                tr {
                    td {
                        @if let Some(s) = &r.survey { a href={"/records/" (s.id)} { (r.village) } } @else { (r.village) }
                        " " span.muted { (r.scope) }
                    }
                    @for (field, _) in &columns {
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
