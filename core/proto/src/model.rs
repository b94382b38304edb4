//! Record kinds, their versioned schemas, typed values and validation.
//!
//! The same code validates a record on the phone before it is committed and on the server after
//! a push is merged, so a record the phone accepts is one the server accepts too.
//!
//! Decisions:
//! - Timestamps are kept as RFC 3339 text exactly as entered (China's `+08:00` offset survives),
//!   after checking that they parse.
//! - `hours` of a check-in is never stored in the document: it is derived from `started_at` and
//!   `ended_at` whenever a record is projected, so two devices editing start and end concurrently
//!   can never leave a stale `hours` behind. A change that writes `hours` is refused.
//! - Unknown fields (from a newer schema) are kept and shown as they are, never dropped.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::scope::{Scope, ScopeLevel};

/// The value of one field, in the form it is shown outside (CLI, exports, bindings).
///
/// Serialised as the plain JSON value. Deserialised by a visitor rather than serde's untagged
/// enums, which buffer every value and try each variant in turn: lists, exports and hours read
/// every projection, so this is on the office's hot path.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum FieldValue {
    /// A yes/no value (是/否).
    Bool(bool),
    /// A whole number.
    Integer(i64),
    /// A decimal number.
    Number(f64),
    /// Text.
    Text(String),
    /// A list of text.
    TextList(Vec<String>),
}

impl<'de> Deserialize<'de> for FieldValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FieldValueVisitor)
    }
}

struct FieldValueVisitor;

impl<'de> serde::de::Visitor<'de> for FieldValueVisitor {
    type Value = FieldValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a bool, a number, text or a list of text")
    }

    fn visit_bool<E>(self, v: bool) -> Result<FieldValue, E> {
        Ok(FieldValue::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<FieldValue, E> {
        Ok(FieldValue::Integer(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<FieldValue, E> {
        Ok(i64::try_from(v).map_or(FieldValue::Number(v as f64), FieldValue::Integer))
    }

    fn visit_f64<E>(self, v: f64) -> Result<FieldValue, E> {
        Ok(FieldValue::Number(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<FieldValue, E> {
        Ok(FieldValue::Text(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<FieldValue, E> {
        Ok(FieldValue::Text(v))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<FieldValue, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element::<String>()? {
            items.push(item);
        }
        Ok(FieldValue::TextList(items))
    }
}

impl FieldValue {
    /// The value as JSON, the form used by `--json`, exports and the wire projection.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            FieldValue::Bool(b) => serde_json::Value::Bool(*b),
            FieldValue::Integer(i) => serde_json::Value::from(*i),
            FieldValue::Number(n) => serde_json::Number::from_f64(*n)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            FieldValue::Text(s) => serde_json::Value::String(s.clone()),
            FieldValue::TextList(items) => serde_json::Value::Array(
                items
                    .iter()
                    .map(|s| serde_json::Value::String(s.clone()))
                    .collect(),
            ),
        }
    }

    /// The value as one cell of a CSV export: lists are joined with `; `.
    pub fn to_cell(&self) -> String {
        match self {
            FieldValue::Bool(b) => b.to_string(),
            FieldValue::Integer(i) => i.to_string(),
            FieldValue::Number(n) => n.to_string(),
            FieldValue::Text(s) => s.clone(),
            FieldValue::TextList(items) => items.join("; "),
        }
    }
}

/// The type of a field in a schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    /// Free text.
    Text,
    /// A decimal number.
    Number,
    /// A whole number.
    Integer,
    /// Yes or no.
    Bool,
    /// An RFC 3339 time with its offset.
    Timestamp,
    /// A list of text.
    TextList,
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FieldType::Text => "text",
            FieldType::Number => "number",
            FieldType::Integer => "integer",
            FieldType::Bool => "bool",
            FieldType::Timestamp => "timestamp (RFC 3339)",
            FieldType::TextList => "list of text",
        })
    }
}

/// The record kinds fieldsync knows.
///
/// Serialised as its name (`check_in`, …) in JSON, the form of `RecordView`'s `kind` in
/// projections, exports and the API; postcard (wire messages, the server's index) encodes the
/// variant's index, which renaming does not touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A volunteer's check-in (志愿服务签到), in a `team:<id>` scope.
    CheckIn,
    /// A household visit (走访记录), in a `village:<id>` scope.
    VillageVisit,
    /// A village's survey (村情台账), one per `village:<id>` scope.
    VillageSurvey,
}

impl Kind {
    /// Every kind, in the order lists and exports show them.
    pub const ALL: [Kind; 3] = [Kind::CheckIn, Kind::VillageVisit, Kind::VillageSurvey];

    /// The kind's name on the wire and in documents (`check_in`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::CheckIn => "check_in",
            Kind::VillageVisit => "village_visit",
            Kind::VillageSurvey => "village_survey",
        }
    }

    /// The schema this build writes for new records of this kind.
    pub fn schema(self) -> &'static Schema {
        match self {
            Kind::CheckIn => &CHECK_IN,
            Kind::VillageVisit => &VILLAGE_VISIT,
            Kind::VillageSurvey => &VILLAGE_SURVEY,
        }
    }

    /// The level of the scopes records of this kind live in (`team` or `village`).
    pub fn scope_level(self) -> ScopeLevel {
        match self {
            Kind::CheckIn => ScopeLevel::Team,
            Kind::VillageVisit | Kind::VillageSurvey => ScopeLevel::Village,
        }
    }
}

/// Shows an enum with `ALL` and `as_str` by its name and reads it back by name; any other text
/// is refused as `ValidationError::$refused(text)`.
macro_rules! by_name {
    ($ty:ident, $refused:ident) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $ty::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| ValidationError::$refused(s.to_string()))
            }
        }
    };
}

by_name!(Kind, UnknownKind);

/// A name shown to people, in the two languages of the office dashboard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label {
    /// Chinese.
    pub zh: &'static str,
    /// English.
    pub en: &'static str,
}

/// One field of a schema.
#[derive(Debug)]
pub struct FieldSpec {
    /// The field's name: a contract with CLIs, bindings and exports, never renamed.
    pub name: &'static str,
    /// What people call the field in Chinese; the dashboard shows it beside `name`. Labels are
    /// for reading and may be reworded; `name` is the contract (CLIs, bindings, exports) and is
    /// never renamed.
    pub label_zh: &'static str,
    /// The field's value type.
    pub ty: FieldType,
    /// Whether a record is invalid without it.
    pub required: bool,
    /// Derived fields are computed when a record is projected and never stored.
    pub derived: bool,
    /// Only office staff may write these (review fields).
    pub office_only: bool,
    /// A village indicator: a survey value the office compares across villages, one column
    /// each, under this heading (shorter than the label, so the table fits a screen).
    pub indicator: Option<Label>,
}

impl FieldSpec {
    /// This field as a village indicator headed `zh` / `en`.
    const fn indicator(self, zh: &'static str, en: &'static str) -> FieldSpec {
        FieldSpec {
            indicator: Some(Label { zh, en }),
            ..self
        }
    }
}

const fn field(name: &'static str, label_zh: &'static str, ty: FieldType) -> FieldSpec {
    FieldSpec {
        name,
        label_zh,
        ty,
        required: false,
        derived: false,
        office_only: false,
        indicator: None,
    }
}

const fn required(name: &'static str, label_zh: &'static str, ty: FieldType) -> FieldSpec {
    FieldSpec {
        required: true,
        ..field(name, label_zh, ty)
    }
}

const fn office(name: &'static str, label_zh: &'static str, ty: FieldType) -> FieldSpec {
    FieldSpec {
        office_only: true,
        ..field(name, label_zh, ty)
    }
}

/// A versioned schema: the fields of one kind at one version.
#[derive(Debug)]
pub struct Schema {
    /// The kind this schema describes.
    pub kind: Kind,
    /// The schema version, stored in each record as `kind@version`.
    pub version: u32,
    /// The kind's fields, in the order forms and exports show them.
    pub fields: &'static [FieldSpec],
}

impl Schema {
    /// `kind@version`, as stored in each document's `schema` field.
    pub fn id(&self) -> String {
        format!("{}@{}", self.kind, self.version)
    }

    /// The spec of field `name`, if the schema has it.
    pub fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }
}

use FieldType::{Bool, Integer, Number, Text, TextList, Timestamp};

/// The check-in form.
pub static CHECK_IN: Schema = Schema {
    kind: Kind::CheckIn,
    version: 1,
    fields: &[
        required("volunteer_id", "志愿者编号", Text),
        field("volunteer_name", "志愿者", Text),
        field("team", "队伍", Text),
        required("activity", "活动", Text),
        required("place", "地点", Text),
        field("lat", "纬度", Number),
        field("lon", "经度", Number),
        field("accuracy_m", "定位精度(米)", Number),
        required("started_at", "开始时间", Timestamp),
        field("ended_at", "结束时间", Timestamp),
        FieldSpec {
            derived: true,
            ..field("hours", "时长(小时)", Number)
        },
        field("note", "备注", Text),
        required("status", "状态", Text),
        office("review_note", "审核意见", Text),
        office("reviewed_by", "审核人", Text),
        field("device_time", "手机时间", Timestamp),
    ],
};

/// The household visit form.
pub static VILLAGE_VISIT: Schema = Schema {
    kind: Kind::VillageVisit,
    version: 1,
    fields: &[
        required("village", "村", Text),
        required("household", "农户", Text),
        field("visitors", "走访人", TextList),
        required("visited_at", "走访时间", Timestamp),
        field("findings", "发现问题", Text),
        field("needs", "需求", Text),
        field("follow_ups", "后续跟进", TextList),
    ],
};

/// The village survey form.
pub static VILLAGE_SURVEY: Schema = Schema {
    kind: Kind::VillageSurvey,
    version: 1,
    fields: &[
        required("village", "村", Text),
        field("road_km_hardened", "硬化道路(公里)", Number)
            .indicator("硬化道路(km)", "Roads hardened (km)"),
        field("all_roads_hardened", "道路全部硬化", Bool)
            .indicator("村村通硬化", "All roads hardened"),
        field("bus_service", "通客车", Bool).indicator("通客车", "Bus"),
        field("tap_water_pct", "自来水普及率(%)", Number).indicator("自来水(%)", "Tap water (%)"),
        field("electricity_pct", "通电率(%)", Number).indicator("通电(%)", "Electricity (%)"),
        field("tv_coverage_pct", "电视覆盖率(%)", Number).indicator("电视(%)", "TV (%)"),
        field("broadband_mbps", "宽带(Mbps)", Number).indicator("宽带(Mbps)", "Broadband (Mbps)"),
        field("standard_clinic", "标准化卫生室", Bool).indicator("标准化卫生室", "Clinic"),
        field("licensed_doctors", "执业医生", Integer).indicator("执业医生", "Doctors"),
        field("school_sports_facilities", "学校体育设施", Bool)
            .indicator("学校体育设施", "School sports"),
        field("collective_income_yuan", "集体收入(元)", Number)
            .indicator("集体收入(元)", "Collective income (¥)"),
        field("note", "备注", Text),
    ],
};

/// The root keys every record document holds besides its fields.
pub const HEADER_KEYS: [&str; 3] = ["kind", "schema", "scope"];

/// A check-in's review status, stored as its name in the text field `status`.
///
/// A phone writes `submitted` when it records a check-in; office staff set `confirmed` or
/// `rejected` when they review it ([`crate::access`] keeps volunteers to `submitted`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// Recorded on a phone, waiting for review (待审核).
    Submitted,
    /// Confirmed by office staff (已确认): the hours count.
    Confirmed,
    /// Rejected by office staff (已驳回): the hours count nowhere.
    Rejected,
}

impl Status {
    /// Every status, in the order filters and tables show them.
    pub const ALL: [Status; 3] = [Status::Submitted, Status::Confirmed, Status::Rejected];

    /// The status's name as stored in the `status` field (`submitted`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Submitted => "submitted",
            Status::Confirmed => "confirmed",
            Status::Rejected => "rejected",
        }
    }

    /// The value of the `status` field that records this status.
    pub fn value(self) -> FieldValue {
        FieldValue::Text(self.as_str().to_string())
    }
}

by_name!(Status, BadStatus);

/// Why a record or a value is not acceptable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    /// The kind is not one of `check_in`, `village_visit`, `village_survey`.
    #[error("unknown kind `{0}` (known: check_in, village_visit, village_survey)")]
    UnknownKind(String),
    /// The scope is not `team:<id>` or `village:<id>` as the kind requires.
    #[error("scope `{scope}` is not valid for {kind}: expected `{level}:<id>`")]
    BadScope {
        /// The record's kind.
        kind: Kind,
        /// The scope given.
        scope: String,
        /// The scope level the kind needs.
        level: ScopeLevel,
    },
    /// A value does not have the field's type.
    #[error("field `{field}` must be {expected}, got {got}")]
    WrongType {
        /// The field.
        field: String,
        /// The type its schema gives.
        expected: FieldType,
        /// What was given instead.
        got: String,
    },
    /// A required field is missing.
    #[error("field `{0}` is required")]
    Missing(&'static str),
    /// A derived field was written.
    #[error("field `{0}` is derived and cannot be written")]
    Derived(&'static str),
    /// A status outside submitted/confirmed/rejected.
    #[error("status must be one of submitted, confirmed, rejected; got `{0}`")]
    BadStatus(String),
    /// The end of a check-in is before its start.
    #[error("ended_at is before started_at")]
    EndBeforeStart,
    /// The document's structure is not a record (missing header, nested objects, too deep).
    #[error("malformed record: {0}")]
    Malformed(String),
}

/// Checks that `scope` is a valid scope for `kind`, and returns it parsed.
pub fn check_scope(kind: Kind, scope: &str) -> Result<Scope, ValidationError> {
    let level = kind.scope_level();
    match scope.parse::<Scope>() {
        Ok(parsed) if parsed.level() == level => Ok(parsed),
        _ => Err(ValidationError::BadScope {
            kind,
            scope: scope.to_string(),
            level,
        }),
    }
}

/// Parses an RFC 3339 timestamp.
pub fn parse_timestamp(s: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(s).ok()
}

/// Checks one value against a field's type; numbers given as integers are accepted as numbers.
pub fn check_value(spec: &FieldSpec, value: &FieldValue) -> Result<FieldValue, ValidationError> {
    let wrong = |got: &str| ValidationError::WrongType {
        field: spec.name.to_string(),
        expected: spec.ty,
        got: got.to_string(),
    };
    match (spec.ty, value) {
        (Text, FieldValue::Text(_))
        | (Bool, FieldValue::Bool(_))
        | (Integer, FieldValue::Integer(_))
        | (TextList, FieldValue::TextList(_)) => Ok(value.clone()),
        (Number, FieldValue::Number(n)) if n.is_finite() => Ok(value.clone()),
        (Number, FieldValue::Integer(i)) => Ok(FieldValue::Number(*i as f64)),
        (Timestamp, FieldValue::Text(s)) => match parse_timestamp(s) {
            Some(_) => Ok(value.clone()),
            None => Err(wrong(&format!("`{s}`, which is not an RFC 3339 timestamp"))),
        },
        (_, other) => Err(wrong(&describe(other))),
    }
}

fn describe(value: &FieldValue) -> String {
    match value {
        FieldValue::Bool(b) => format!("bool {b}"),
        FieldValue::Integer(i) => format!("integer {i}"),
        FieldValue::Number(n) => format!("number {n}"),
        FieldValue::Text(s) => format!("text `{s}`"),
        FieldValue::TextList(_) => "a list of text".to_string(),
    }
}

/// Parses a command-line `VALUE` for a field: by the field's type, or as JSON for any type.
pub fn parse_input(spec: &FieldSpec, raw: &str) -> Result<FieldValue, ValidationError> {
    let typed = match spec.ty {
        Text | Timestamp => Some(FieldValue::Text(raw.to_string())),
        Number => raw.parse::<f64>().ok().map(FieldValue::Number),
        Integer => raw.parse::<i64>().ok().map(FieldValue::Integer),
        Bool => match raw {
            "true" | "yes" | "1" => Some(FieldValue::Bool(true)),
            "false" | "no" | "0" => Some(FieldValue::Bool(false)),
            _ => None,
        },
        TextList => None,
    };
    let value = match typed {
        Some(v) if !raw.trim_start().starts_with(['[', '"']) => v,
        _ => match serde_json::from_str::<serde_json::Value>(raw) {
            Ok(json) => from_json(spec.name, &json)?,
            Err(_) if spec.ty == TextList => {
                FieldValue::TextList(raw.split(';').map(|s| s.trim().to_string()).collect())
            }
            Err(_) => {
                return Err(ValidationError::WrongType {
                    field: spec.name.to_string(),
                    expected: spec.ty,
                    got: format!("`{raw}`"),
                });
            }
        },
    };
    check_value(spec, &value)
}

/// Converts a JSON value into a field value (not yet checked against a schema).
pub fn from_json(field: &str, json: &serde_json::Value) -> Result<FieldValue, ValidationError> {
    let bad = |got: &str| ValidationError::Malformed(format!("field `{field}`: {got}"));
    Ok(match json {
        serde_json::Value::Bool(b) => FieldValue::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => FieldValue::Integer(i),
            None => FieldValue::Number(n.as_f64().ok_or_else(|| bad("number out of range"))?),
        },
        serde_json::Value::String(s) => FieldValue::Text(s.clone()),
        serde_json::Value::Array(items) => FieldValue::TextList(
            items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("lists may only hold text"))?,
        ),
        serde_json::Value::Null => return Err(bad("null is not a value")),
        serde_json::Value::Object(_) => return Err(bad("objects are not field values")),
    })
}

/// Computes `hours` from a check-in's start and end, rounded to hundredths.
pub fn derive_hours(started_at: &str, ended_at: &str) -> Option<f64> {
    let start = parse_timestamp(started_at)?;
    let end = parse_timestamp(ended_at)?;
    let ms = (end - start).num_milliseconds();
    (ms >= 0).then(|| crate::hours::round(ms as f64 / 3_600_000.0))
}

/// Validates the whole set of current field values of a record of `kind`.
///
/// `values` holds every concurrent value of each field (one element where there is no
/// conflict); every one of them must have the field's type.
pub fn validate_record(
    kind: Kind,
    values: &BTreeMap<String, Vec<FieldValue>>,
) -> Result<(), ValidationError> {
    let schema = kind.schema();
    for spec in schema.fields {
        match values.get(spec.name) {
            Some(_) if spec.derived => return Err(ValidationError::Derived(spec.name)),
            Some(vs) => {
                for v in vs {
                    check_value(spec, v)?;
                    if spec.name == "status"
                        && let FieldValue::Text(s) = v
                    {
                        s.parse::<Status>()?;
                    }
                }
            }
            None if spec.required => return Err(ValidationError::Missing(spec.name)),
            None => {}
        }
    }
    if kind == Kind::CheckIn {
        let first = |name: &str| match values.get(name).and_then(|v| v.first()) {
            Some(FieldValue::Text(s)) => Some(s.clone()),
            _ => None,
        };
        if let (Some(start), Some(end)) = (first("started_at"), first("ended_at"))
            && derive_hours(&start, &end).is_none()
        {
            return Err(ValidationError::EndBeforeStart);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_unknown_kind_is_refused() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>(), Ok(k));
        }
        assert!(matches!(
            "parade".parse::<Kind>(),
            Err(ValidationError::UnknownKind(_))
        ));
    }

    #[test]
    fn statuses_round_trip_and_others_are_refused() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>(), Ok(s));
            assert_eq!(s.value(), FieldValue::Text(s.to_string()));
        }
        assert_eq!(
            "approved".parse::<Status>().unwrap_err().to_string(),
            "status must be one of submitted, confirmed, rejected; got `approved`"
        );
    }

    #[test]
    fn every_field_has_a_label_and_only_survey_fields_are_indicators() {
        for kind in Kind::ALL {
            for spec in kind.schema().fields {
                assert!(
                    !spec.label_zh.is_empty(),
                    "{kind}.{} has no label",
                    spec.name
                );
                if let Some(heading) = spec.indicator {
                    assert_eq!(kind, Kind::VillageSurvey, "{kind}.{}", spec.name);
                    assert!(!heading.zh.is_empty() && !heading.en.is_empty());
                }
            }
        }
    }

    #[test]
    fn scope_must_match_kind() {
        assert!(check_scope(Kind::CheckIn, "team:7").is_ok());
        assert!(check_scope(Kind::CheckIn, "village:7").is_err());
        assert!(check_scope(Kind::VillageSurvey, "village:").is_err());
        assert_eq!(
            check_scope(Kind::CheckIn, "village:7")
                .unwrap_err()
                .to_string(),
            "scope `village:7` is not valid for check_in: expected `team:<id>`"
        );
        let scope = check_scope(Kind::VillageVisit, "village:a:b").unwrap();
        assert_eq!((scope.level(), scope.id()), (ScopeLevel::Village, "a:b"));
    }

    #[test]
    fn input_parsing_follows_field_type() {
        let s = Kind::VillageSurvey.schema();
        let doctors = s.field("licensed_doctors").unwrap();
        assert_eq!(parse_input(doctors, "3"), Ok(FieldValue::Integer(3)));
        assert!(parse_input(doctors, "three").is_err());
        let road = s.field("road_km_hardened").unwrap();
        assert_eq!(parse_input(road, "12.5"), Ok(FieldValue::Number(12.5)));
        let visitors = Kind::VillageVisit.schema().field("visitors").unwrap();
        assert_eq!(
            parse_input(visitors, r#"["张三","李四"]"#),
            Ok(FieldValue::TextList(vec!["张三".into(), "李四".into()]))
        );
        let at = Kind::CheckIn.schema().field("started_at").unwrap();
        assert!(parse_input(at, "yesterday").is_err());
    }

    #[test]
    fn hours_derive_from_start_and_end() {
        assert_eq!(
            derive_hours("2026-11-28T08:00:00+08:00", "2026-11-28T10:30:00+08:00"),
            Some(2.5)
        );
        assert_eq!(
            derive_hours("2026-11-28T10:00:00+08:00", "2026-11-28T08:00:00+08:00"),
            None
        );
    }

    #[test]
    fn validation_catches_missing_wrong_and_derived() {
        let mut v = BTreeMap::new();
        v.insert("village".to_string(), vec![FieldValue::Text("x".into())]);
        assert!(validate_record(Kind::VillageSurvey, &v).is_ok());
        v.insert(
            "licensed_doctors".to_string(),
            vec![FieldValue::Text("two".into())],
        );
        assert!(matches!(
            validate_record(Kind::VillageSurvey, &v),
            Err(ValidationError::WrongType { .. })
        ));
        let mut c: BTreeMap<String, Vec<FieldValue>> = [
            ("volunteer_id", "u1"),
            ("activity", "a"),
            ("place", "p"),
            ("started_at", "2026-11-28T08:00:00+08:00"),
            ("status", "submitted"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), vec![FieldValue::Text(v.to_string())]))
        .collect();
        assert!(validate_record(Kind::CheckIn, &c).is_ok());
        c.insert("hours".to_string(), vec![FieldValue::Number(3.0)]);
        assert_eq!(
            validate_record(Kind::CheckIn, &c),
            Err(ValidationError::Derived("hours"))
        );
    }

    #[test]
    fn field_values_read_back_from_json_as_written() {
        let values = vec![
            FieldValue::Bool(true),
            FieldValue::Integer(-3),
            FieldValue::Integer(7),
            FieldValue::Number(2.5),
            FieldValue::Text("大坪村".into()),
            FieldValue::TextList(vec!["a".into(), "b".into()]),
            FieldValue::TextList(vec![]),
        ];
        let json = serde_json::to_string(&values).expect("serialise");
        let back: Vec<FieldValue> = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, values);
        assert_eq!(
            serde_json::from_str::<FieldValue>("18446744073709551615").expect("u64"),
            FieldValue::Number(18446744073709551615.0)
        );
        for bad in ["null", "{}", "[1]", "[[\"a\"]]"] {
            assert!(
                serde_json::from_str::<FieldValue>(bad).is_err(),
                "{bad} accepted"
            );
        }
    }
}
