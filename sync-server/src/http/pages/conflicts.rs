//! Records holding conflicting values, and the form that keeps one value.
//!
//! The same form also stands on a record's own page.

use axum::extract::{Form, Path, State};
use axum::response::Redirect;
use fieldsync_proto::model::{self, FieldValue, Kind};
use fieldsync_proto::record::RecordView;
use maud::{Markup, html};
use serde::Deserialize;

use super::i18n::{field_label, kind_label};
use super::layout::{PageError, PageResult, PageStaff, layout};
use super::records::summary;
use crate::http::{ApiError, AppState, blocking, list_records, resolve_record};
use crate::office::{self, OfficeError};

pub(super) fn resolve_controls(page: &PageStaff, view: &RecordView) -> Markup {
    let lang = page.lang;
    html! {
        @for (field, values) in &view.conflicts {
            form.card.resolve method="post" action={"/resolve/" (view.id)} data-field=(field) {
                (page.csrf_field())
                input type="hidden" name="field" value=(field);
                strong { (field_label(lang, view.kind, field)) } " "
                // Nothing is chosen in advance: the concurrent values come in no meaningful
                // order, and a value typed under "other" must not quietly keep another value
                // because "other" was not also clicked. The browser asks for a choice.
                @for value in values {
                    label { input type="radio" name="pick" value=(value.to_json().to_string()) required; " " (value.to_cell()) } " "
                }
                label { input type="radio" name="pick" value="__typed" required; " " (lang.t("其他：", "Other: ")) input name="typed"; }
                " " button type="submit" { (lang.t("以此为准", "Keep this value")) }
            }
        }
    }
}

pub(super) async fn conflicts_page(
    State(state): State<AppState>,
    page: PageStaff,
) -> Result<Markup, PageError> {
    let lang = page.lang;
    let filter = office::RecordFilter {
        conflicted: true,
        ..Default::default()
    };
    let records = list_records(&state, filter).await.page(lang)?;
    let can_act = page.is_office();
    let body = html! {
        p { (records.len()) " " (lang.t("条记录存在冲突值", "records hold conflicting values")) }
        @for r in &records {
            div.card.conflicted data-id=(r.id) {
                p { a href={"/records/" (r.id)} { (kind_label(lang, r.kind)) " · " (summary(r)) } " " span.muted { (r.scope) } }
                @if can_act { (resolve_controls(&page, r)) } @else {
                    @for (field, values) in &r.conflicts {
                        p { strong { (field_label(lang, r.kind, field)) } ": " (values.iter().map(FieldValue::to_cell).collect::<Vec<_>>().join(" | ")) }
                    }
                }
            }
        }
    };
    Ok(layout(
        &page,
        lang.t("冲突值", "Conflicts"),
        "/conflicts",
        body,
    ))
}

#[derive(Deserialize)]
pub(super) struct ResolveForm {
    /// A missing token is refused by the CSRF check (403), like a wrong one.
    #[serde(default)]
    csrf: String,
    field: String,
    pick: String,
    #[serde(default)]
    typed: String,
}

pub(super) async fn resolve_form(
    State(state): State<AppState>,
    page: PageStaff,
    Path(id): Path<String>,
    Form(form): Form<ResolveForm>,
) -> Result<Redirect, PageError> {
    let lang = page.lang;
    let id = page.staff.office_change(Some(&form.csrf), &id).page(lang)?;
    let store = state.shared.store.clone();
    let kind = blocking(move || {
        Ok(store
            .record_view(id)?
            .ok_or(OfficeError::NotFound(id))?
            .kind)
    })
    .await
    .page(lang)?;
    let value = form_value(kind, &form).page(lang)?;
    resolve_record(state, page.staff.user, id, form.field, value)
        .await
        .page(lang)?;
    Ok(Redirect::to("/conflicts"))
}

/// The value a resolve form keeps. A picked value is the JSON of one of the concurrent values;
/// a typed one is read by the field's type, as the command line reads it.
fn form_value(kind: Kind, form: &ResolveForm) -> Result<serde_json::Value, ApiError> {
    if form.pick != "__typed" {
        return serde_json::from_str(&form.pick)
            .map_err(|e| ApiError::bad_request(format!("bad value: {e}")));
    }
    let spec = kind
        .schema()
        .field(&form.field)
        .ok_or_else(|| ApiError::bad_request(format!("{kind} has no field `{}`", form.field)))?;
    Ok(model::parse_input(spec, form.typed.trim())
        .map_err(|e| ApiError::bad_request(e.to_string()))?
        .to_json())
}
