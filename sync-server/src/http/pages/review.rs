//! The queue of check-ins waiting for review, and the review form.
//!
//! The same form also stands on a check-in's own page.

use axum::extract::{Form, Path, State};
use axum::response::Redirect;
use fieldsync_proto::model::{FieldValue, Kind, Status};
use fieldsync_proto::record::RecordView;
use maud::{Markup, html};
use serde::Deserialize;

use super::i18n::Lang;
use super::layout::{PageError, PageResult, PageStaff, layout, local_path};
use crate::http::{AppState, list_records, review_record};
use crate::office;

pub(super) async fn review_page(
    State(state): State<AppState>,
    page: PageStaff,
) -> Result<Markup, PageError> {
    let lang = page.lang;
    let filter = office::RecordFilter {
        kind: Some(Kind::CheckIn),
        status: Some(Status::Submitted),
        ..Default::default()
    };
    let records = list_records(&state, filter).await.page(lang)?;
    let can_act = page.is_office();
    let body = html! {
        p { (records.len()) " " (lang.t("条待审核的签到", "check-ins waiting for review")) }
        table #review-queue {
            tr {
                th { (lang.t("志愿者", "Volunteer")) } th { (lang.t("活动", "Activity")) } th { (lang.t("地点", "Place")) }
                th { (lang.t("开始", "Start")) } th { (lang.t("时长", "Hours")) } th { (lang.t("审核", "Review")) }
            }
            @for r in &records {
                tr data-id=(r.id) {
                    td { a href={"/records/" (r.id)} { (r.text("volunteer_name").unwrap_or("?")) } }
                    td { (r.text("activity").unwrap_or("")) }
                    td { (r.text("place").unwrap_or("")) }
                    td { (r.text("started_at").unwrap_or("")) }
                    td { (r.field("hours").map(FieldValue::to_cell).unwrap_or_default()) }
                    td {
                        @if can_act {
                            form.inline.review method="post" action={"/review/" (r.id)} {
                                (page.csrf_field())
                                input type="hidden" name="back" value="/review";
                                input name="note" placeholder=(lang.t("审核意见", "note"));
                                (verdict_buttons(lang))
                            }
                        } @else { span.muted { (lang.t("仅办公室人员可审核", "office staff review")) } }
                    }
                }
            }
        }
    };
    Ok(layout(
        &page,
        lang.t("待审核签到", "Review queue"),
        "/review",
        body,
    ))
}

/// The review form of one check-in, on its record page.
pub(super) fn review_controls(page: &PageStaff, view: &RecordView) -> Markup {
    let lang = page.lang;
    html! {
        form.card.review method="post" action={"/review/" (view.id)} {
            (page.csrf_field())
            label { (lang.t("审核意见", "Note")) " " input name="note" value=(view.text("review_note").unwrap_or("")); }
            (verdict_buttons(lang))
        }
    }
}

/// The two submit buttons of a review form: the verdict is the button pressed.
fn verdict_buttons(lang: Lang) -> Markup {
    html! {
        " " button type="submit" name="status" value=(Status::Confirmed.as_str()) class="confirm" { (lang.t("确认", "Confirm")) }
        " " button type="submit" name="status" value=(Status::Rejected.as_str()) class="reject" { (lang.t("驳回", "Reject")) }
    }
}

#[derive(Deserialize)]
pub(super) struct ReviewForm {
    /// A missing token is refused by the CSRF check (403), like a wrong one.
    #[serde(default)]
    csrf: String,
    status: String,
    #[serde(default)]
    note: String,
    /// Where to go afterwards (the review queue or the record).
    back: Option<String>,
}

pub(super) async fn review_form(
    State(state): State<AppState>,
    page: PageStaff,
    Path(id): Path<String>,
    Form(form): Form<ReviewForm>,
) -> Result<Redirect, PageError> {
    let lang = page.lang;
    let id = page.staff.office_change(Some(&form.csrf), &id).page(lang)?;
    review_record(state, page.staff.user, id, &form.status, form.note)
        .await
        .page(lang)?;
    Ok(Redirect::to(&local_path(
        form.back.as_deref(),
        &format!("/records/{id}"),
    )))
}
