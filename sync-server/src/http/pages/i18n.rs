//! The dashboard's two languages, and the words several pages share: kinds, statuses, roles and
//! field labels.
//!
//! A string only one page shows stays next to its markup as `lang.t("中文", "English")`, so a
//! page reads top to bottom in both languages; a name of something in the data (a kind, a
//! status, a role, a field) is translated here once, so every page calls it the same.

use axum::http::HeaderMap;
use axum_extra::extract::cookie::CookieJar;
use fieldsync_proto::access::Role;
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

pub(super) fn kind_label(lang: Lang, kind: &str) -> &'static str {
    match kind {
        "check_in" => lang.t("志愿服务签到", "Check-in"),
        "village_visit" => lang.t("走访记录", "Village visit"),
        "village_survey" => lang.t("村情台账", "Village survey"),
        _ => "?",
    }
}

pub(super) fn status_label(lang: Lang, status: &str) -> String {
    match status {
        "submitted" => lang.t("待审核", "submitted").to_string(),
        "confirmed" => lang.t("已确认", "confirmed").to_string(),
        "rejected" => lang.t("已驳回", "rejected").to_string(),
        other => other.to_string(),
    }
}

pub(super) fn role_label(lang: Lang, role: Role) -> &'static str {
    match role {
        Role::Volunteer => lang.t("志愿者", "volunteer"),
        Role::Village => lang.t("驻村工作队", "village team"),
        Role::Office => lang.t("办公室", "office"),
        Role::Admin => lang.t("管理员", "admin"),
    }
}

/// A field's name as a page shows it: in Chinese its label with the field name beside it (the
/// name stays the contract, and staff who write scripts or read exports know it).
pub(super) fn field_label(lang: Lang, field: &str) -> Markup {
    match (lang, field_label_zh(field)) {
        (Lang::Zh, Some(zh)) => html! { (zh) " " span.muted { (field) } },
        _ => html! { (field) },
    }
}

/// A field's Chinese name (DESIGN.md's field names stay the contract, shown beside it).
fn field_label_zh(field: &str) -> Option<&'static str> {
    Some(match field {
        "volunteer_id" => "志愿者编号",
        "volunteer_name" => "志愿者",
        "team" => "队伍",
        "activity" => "活动",
        "place" => "地点",
        "lat" => "纬度",
        "lon" => "经度",
        "accuracy_m" => "定位精度(米)",
        "started_at" => "开始时间",
        "ended_at" => "结束时间",
        "hours" => "时长(小时)",
        "note" => "备注",
        "status" => "状态",
        "review_note" => "审核意见",
        "reviewed_by" => "审核人",
        "device_time" => "手机时间",
        "village" => "村",
        "household" => "农户",
        "visitors" => "走访人",
        "visited_at" => "走访时间",
        "findings" => "发现问题",
        "needs" => "需求",
        "follow_ups" => "后续跟进",
        "road_km_hardened" => "硬化道路(公里)",
        "all_roads_hardened" => "道路全部硬化",
        "bus_service" => "通客车",
        "tap_water_pct" => "自来水普及率(%)",
        "electricity_pct" => "通电率(%)",
        "tv_coverage_pct" => "电视覆盖率(%)",
        "broadband_mbps" => "宽带(Mbps)",
        "standard_clinic" => "标准化卫生室",
        "licensed_doctors" => "执业医生",
        "school_sports_facilities" => "学校体育设施",
        "collective_income_yuan" => "集体收入(元)",
        _ => return None,
    })
}
