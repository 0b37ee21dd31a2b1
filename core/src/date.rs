//! Wall-clock times written as text: RFC 3339 in UTC, as the health page and CEL's
//! `now` give them. Core reads no clock: the seconds come from the caller.

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The same with milliseconds, as Go's `2006-01-02T15:04:05.999Z07:00` writes them:
/// without trailing zeros, none when whole.
pub fn rfc3339_millis(secs: u64, millis: u32) -> String {
    let whole = rfc3339(secs);
    if millis == 0 {
        return whole;
    }
    let frac = format!("{:03}", millis.min(999));
    format!("{}.{}Z", whole.trim_end_matches('Z'), frac.trim_end_matches('0'))
}
