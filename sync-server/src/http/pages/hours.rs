//! Volunteer hours per volunteer or team and month.

use axum::extract::{Query, State};
use maud::{Markup, html};

use super::layout::{PageError, PageResult, PageStaff, layout};
use crate::http::{AppState, HoursQuery, blocking};
use crate::office;

pub(super) async fn hours_page(
    State(state): State<AppState>,
    page: PageStaff,
    Query(query): Query<HoursQuery>,
) -> Result<Markup, PageError> {
    let lang = page.lang;
    let (by, month) = query.parse().page(lang)?;
    let store = state.shared.store.clone();
    let m = month.clone();
    let rows = blocking(move || Ok(office::hours(&store, by, m.as_deref())?))
        .await
        .page(lang)?;
    let team = by == office::HoursBy::Team;
    let body = html! {
        form.filters method="get" action="/hours" {
            label { (lang.t("按", "By")) select name="by" {
                option value="volunteer" selected[!team] { (lang.t("志愿者", "volunteer")) }
                option value="team" selected[team] { (lang.t("队伍", "team")) }
            } }
            label { (lang.t("月份", "Month")) input type="month" name="month" value=(month.as_deref().unwrap_or_default()); }
            button type="submit" { (lang.t("查看", "Show")) }
        }
        p.muted { (lang.t("只有已确认的签到计入“已确认”时长；待审核的计入“待审核”，已驳回的不计入。", "Only confirmed check-ins count as confirmed hours; submitted ones are pending; rejected ones count nowhere.")) }
        table #hours {
            tr {
                th { (if team { lang.t("队伍", "Team") } else { lang.t("志愿者", "Volunteer") }) }
                th { (lang.t("月份", "Month")) } th { (lang.t("已确认（小时）", "Confirmed (h)")) }
                th { (lang.t("待审核（小时）", "Pending (h)")) } th { (lang.t("已驳回（小时）", "Rejected (h)")) } th { (lang.t("签到次数", "Check-ins")) }
            }
            @for r in &rows {
                tr {
                    td { (r.name) " " span.muted { (r.key) } }
                    td { (r.month) } td { (r.confirmed) } td { (r.pending) } td { (r.rejected) } td { (r.check_ins) }
                }
            }
        }
    };
    Ok(layout(
        &page,
        lang.t("志愿服务时长", "Volunteer hours"),
        "/hours",
        body,
    ))
}
