//! Volunteer hours summed by review status, and the one rule that rounds them.
//!
//! A phone shows its user's own hours and the office adds up hours per volunteer or team and
//! month. Both sum the derived `hours` of check-in projections with one [`Tally`], so the two
//! can never disagree on where a check-in counts or how a sum is rounded.
//!
//! Decisions:
//! - A check-in's hours count under its status; a status that is missing or unknown to this
//!   build counts as `submitted` (waiting for review), never as confirmed.
//! - A check-in without `hours` (no end yet) is counted as open and adds no hours.
//! - Hours are kept at hundredths ([`round`]): each check-in's derived hours are, and sums are
//!   rounded again because sums of hundredths drift in binary floating point.

use crate::model::{FieldValue, Status};
use crate::record::RecordView;

/// Rounds hours to hundredths: the one rule for derived hours and for their sums.
pub fn round(hours: f64) -> f64 {
    (hours * 100.0).round() / 100.0
}

/// Check-ins counted and their hours summed, by review status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    /// Check-ins with hours, by [`index`].
    counts: [u64; 3],
    /// Their hours, by [`index`], not yet rounded.
    hours: [f64; 3],
    /// Check-ins without hours yet.
    open: u64,
}

/// Where a status's sums sit in a [`Tally`].
fn index(status: Status) -> usize {
    match status {
        Status::Submitted => 0,
        Status::Confirmed => 1,
        Status::Rejected => 2,
    }
}

impl Tally {
    /// Counts one check-in projection: its `status` and its derived `hours`.
    pub fn add_view(&mut self, view: &RecordView) {
        let status = view
            .text("status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(Status::Submitted);
        let hours = match view.field("hours") {
            Some(FieldValue::Number(h)) => Some(*h),
            _ => None,
        };
        self.add(status, hours);
    }

    /// Counts one check-in of `status` with `hours`, or as open if it has none yet.
    pub fn add(&mut self, status: Status, hours: Option<f64>) {
        match hours {
            Some(h) => {
                self.counts[index(status)] += 1;
                self.hours[index(status)] += h;
            }
            None => self.open += 1,
        }
    }

    /// The hours of the check-ins of `status`, rounded to hundredths.
    pub fn hours(&self, status: Status) -> f64 {
        round(self.hours[index(status)])
    }

    /// How many check-ins of `status` have hours.
    pub fn count(&self, status: Status) -> u64 {
        self.counts[index(status)]
    }

    /// How many check-ins have no hours yet (no end).
    pub fn open(&self) -> u64 {
        self.open
    }

    /// Every check-in counted, open ones included.
    pub fn check_ins(&self) -> u64 {
        self.counts.iter().sum::<u64>() + self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_are_kept_by_status_and_rounded_to_hundredths() {
        let mut t = Tally::default();
        for _ in 0..3 {
            t.add(Status::Confirmed, Some(0.1));
        }
        t.add(Status::Rejected, Some(2.25));
        t.add(Status::Submitted, None);
        assert_eq!(0.1 + 0.1 + 0.1, 0.30000000000000004);
        assert_eq!(t.hours(Status::Confirmed), 0.3);
        assert_eq!(t.count(Status::Confirmed), 3);
        assert_eq!(t.hours(Status::Rejected), 2.25);
        assert_eq!(
            (t.hours(Status::Submitted), t.count(Status::Submitted)),
            (0.0, 0)
        );
        assert_eq!((t.open(), t.check_ins()), (1, 5));
    }

    #[test]
    fn a_view_counts_under_its_status_and_an_unknown_one_as_submitted() {
        let view = |status: &str, hours: Option<f64>| {
            let mut fields = std::collections::BTreeMap::new();
            fields.insert("status".to_string(), FieldValue::Text(status.to_string()));
            if let Some(h) = hours {
                fields.insert("hours".to_string(), FieldValue::Number(h));
            }
            RecordView {
                id: "id".into(),
                kind: crate::Kind::CheckIn,
                scope: "team:1".into(),
                fields,
                conflicts: Default::default(),
            }
        };
        let mut t = Tally::default();
        t.add_view(&view("confirmed", Some(1.5)));
        t.add_view(&view("approved", Some(2.0)));
        t.add_view(&view("rejected", None));
        assert_eq!(t.hours(Status::Confirmed), 1.5);
        assert_eq!(t.hours(Status::Submitted), 2.0);
        assert_eq!((t.count(Status::Rejected), t.open()), (0, 1));
    }
}
