//! Budget periods and where spend lives in Redis. Shared by the data plane (which records
//! spend) and the control plane (which reports it in VirtualKey status), so both agree on the
//! period a moment falls in and on the key that holds it.

use switchyard_proto::v1::BudgetPeriod;

/// A budget period: its id (part of the Redis key) and when it ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Period {
    /// `2026-11-26` (daily), `2026-W48` (weekly, ISO), `2026-11` (monthly) or `all`.
    pub id: String,
    /// Unix seconds when the next period starts; `None` for a lifetime budget.
    pub ends_at: Option<i64>,
}

/// The period of `kind` that contains `now` (Unix seconds, UTC).
pub fn period(kind: BudgetPeriod, now: i64) -> Period {
    const DAY: i64 = 86_400;
    let days = now.div_euclid(DAY);
    match kind {
        BudgetPeriod::None => Period {
            id: "all".into(),
            ends_at: None,
        },
        BudgetPeriod::Daily => {
            let (y, m, d) = civil_from_days(days);
            Period {
                id: format!("{y:04}-{m:02}-{d:02}"),
                ends_at: Some((days + 1) * DAY),
            }
        }
        BudgetPeriod::Weekly => {
            // 1970-01-01 was a Thursday; weeks start on Monday.
            let monday = days - (days + 3).rem_euclid(7);
            let thursday = monday + 3;
            let (iso_year, _, _) = civil_from_days(thursday);
            let week = (thursday - days_from_civil(iso_year, 1, 1)) / 7 + 1;
            Period {
                id: format!("{iso_year:04}-W{week:02}"),
                ends_at: Some((monday + 7) * DAY),
            }
        }
        BudgetPeriod::Monthly => {
            let (y, m, _) = civil_from_days(days);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            Period {
                id: format!("{y:04}-{m:02}"),
                ends_at: Some(days_from_civil(ny, nm, 1) * DAY),
            }
        }
    }
}

/// The protobuf period of a VirtualKey's budget period.
pub fn proto_period(p: crate::BudgetPeriod) -> BudgetPeriod {
    match p {
        crate::BudgetPeriod::Daily => BudgetPeriod::Daily,
        crate::BudgetPeriod::Weekly => BudgetPeriod::Weekly,
        crate::BudgetPeriod::Monthly => BudgetPeriod::Monthly,
        crate::BudgetPeriod::None => BudgetPeriod::None,
    }
}

/// Redis hash holding a key's spend in a period: fields `s` (settled nano-dollars) and `r`
/// (reserved by requests in flight). The hash tag keeps every counter of one key in one slot.
pub fn spend_key(key_id: &str, period_id: &str) -> String {
    format!("sy:{{k:{key_id}}}:spend:{period_id}")
}

/// Formats nano-dollars as a USD decimal with six places, e.g. `1.234567`.
pub fn usd(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let micros = nanos.unsigned_abs() / 1000;
    format!("{sign}{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(s: &str) -> i64 {
        crate::validate::timestamp_unix("t", s).expect("timestamp")
    }

    #[test]
    fn periods_reset_on_utc_boundaries() {
        let now = unix("2026-11-26T19:51:39Z");
        let d = period(BudgetPeriod::Daily, now);
        assert_eq!(d.id, "2026-11-26");
        assert_eq!(d.ends_at, Some(unix("2026-11-27T00:00:00Z")));
        let w = period(BudgetPeriod::Weekly, now);
        assert_eq!(w.id, "2026-W48");
        assert_eq!(w.ends_at, Some(unix("2026-11-30T00:00:00Z")));
        let m = period(BudgetPeriod::Monthly, now);
        assert_eq!(m.id, "2026-11");
        assert_eq!(m.ends_at, Some(unix("2026-12-01T00:00:00Z")));
        let dec = period(BudgetPeriod::Monthly, unix("2026-12-31T23:59:59Z"));
        assert_eq!(
            (dec.id.as_str(), dec.ends_at),
            ("2026-12", Some(unix("2027-01-01T00:00:00Z")))
        );
        assert_eq!(period(BudgetPeriod::None, now).ends_at, None);
        // The last second of a period and the first of the next differ.
        let end = unix("2026-11-30T00:00:00Z");
        assert_eq!(period(BudgetPeriod::Weekly, end - 1).id, "2026-W48");
        assert_eq!(period(BudgetPeriod::Weekly, end).id, "2026-W49");
    }

    #[test]
    fn iso_weeks_at_year_edges() {
        // 2027-01-01 is a Friday: it belongs to ISO week 53 of 2026.
        assert_eq!(
            period(BudgetPeriod::Weekly, unix("2027-01-01T12:00:00Z")).id,
            "2026-W53"
        );
        // 2024-12-30 is a Monday in ISO week 1 of 2025.
        assert_eq!(
            period(BudgetPeriod::Weekly, unix("2024-12-30T00:00:00Z")).id,
            "2025-W01"
        );
    }

    #[test]
    fn usd_formatting() {
        assert_eq!(usd(0), "0.000000");
        assert_eq!(usd(12_500_000_000), "12.500000");
        assert_eq!(usd(1_234_567_890), "1.234567");
        assert_eq!(usd(-5_000), "-0.000005");
    }
}
