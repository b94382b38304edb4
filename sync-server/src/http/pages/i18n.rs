//! The dashboard's two languages, and the names of kinds, statuses, roles and fields in them.
//!
//! A string only one page shows stays next to its markup as `lang.t("中文", "English")`, so a
//! page reads top to bottom in both languages; a name of something in the data (a kind, a
//! status, a role) is translated here once, so every page calls it the same. Field labels are
//! part of the schema (`fieldsync_proto::model::FieldSpec`), beside the fields they name.

use axum::http::HeaderMap;
use axum_extra::extract::cookie::CookieJar;
use fieldsync_proto::access::Role;
use fieldsync_proto::model::{Kind, Status};
use maud::{Markup, html};

/// The language cookie (`zh` or `en`).
pub(super) const LANG_COOKIE: &str = "fs_lang";

/// The page language; Chinese unless the language cookie asks for English.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lang {
    Zh,
    En,
}

impl Lang {
    pub(super) fn from_headers(headers: &HeaderMap) -> Lang {
        match CookieJar::from_headers(headers)
            .get(LANG_COOKIE)
            .map(|c| c.value())
        {
            Some("en") => Lang::En,
            _ => Lang::Zh,
        }
    }

    /// The text in this language.
    pub(super) fn t<'a>(self, zh: &'a str, en: &'a str) -> &'a str {
        match self {
            Lang::Zh => zh,
            Lang::En => en,
        }
    }

    /// The `lang` attribute of a page in this language.
    pub(super) fn tag(self) -> &'static str {
        self.t("zh-CN", "en")
    }

    /// The link that switches to the other language.
    pub(super) fn switch_link(self) -> Markup {
        html! {
            @if self == Lang::Zh { a href="/lang/en" { "English" } } @else { a href="/lang/zh" { "中文" } }
        }
    }
}

pub(super) fn kind_label(lang: Lang, kind: Kind) -> &'static str {
    match kind {
        Kind::CheckIn => lang.t("志愿服务签到", "Check-in"),
        Kind::VillageVisit => lang.t("走访记录", "Village visit"),
        Kind::VillageSurvey => lang.t("村情台账", "Village survey"),
    }
}

pub(super) fn status_label(lang: Lang, status: Status) -> &'static str {
    match status {
        Status::Submitted => lang.t("待审核", "submitted"),
        Status::Confirmed => lang.t("已确认", "confirmed"),
        Status::Rejected => lang.t("已驳回", "rejected"),
    }
}

/// The status text of a record as a page shows it: its label, or the text itself if it is no
/// status this build knows.
pub(super) fn status_text(lang: Lang, text: &str) -> String {
    text.parse()
        .map_or_else(|_| text.to_string(), |s| status_label(lang, s).to_string())
}

pub(super) fn role_label(lang: Lang, role: Role) -> &'static str {
    match role {
        Role::Volunteer => lang.t("志愿者", "volunteer"),
        Role::Village => lang.t("驻村工作队", "village team"),
        Role::Office => lang.t("办公室", "office"),
        Role::Admin => lang.t("管理员", "admin"),
    }
}

/// A field's name as a page shows it: in Chinese the schema's label with the field name beside
/// it (the name stays the contract, and staff who write scripts or read exports know it); a
/// field the schema does not know (written by a newer phone) shows its name alone.
pub(super) fn field_label(lang: Lang, kind: Kind, field: &str) -> Markup {
    let label_zh = kind.schema().field(field).map(|spec| spec.label_zh);
    match (lang, label_zh) {
        (Lang::Zh, Some(zh)) => html! { (zh) " " span.muted { (field) } },
        _ => html! { (field) },
    }
}
