//! Wall-clock times written as text: RFC 3339 in UTC, as the health page and CEL's
//! `now` give them. Core reads no clock: the seconds come from the caller.

/// A UTC time broken down: year, month (1-12), day (1-31), hour, minute, second, and
/// the weekday (0 is Sunday).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub weekday: usize,
}

/// Seconds since the Unix epoch, broken down in UTC.
pub fn civil(secs: u64) -> Civil {
    let days = (secs / 86_400) as i64;
    let rem = (secs % 86_400) as u32;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    // 1970-01-01 was a Thursday.
    let weekday = (days + 4).rem_euclid(7) as usize;
    Civil { year, month, day, hour: rem / 3600, minute: rem % 3600 / 60, second: rem % 60, weekday }
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(secs: u64) -> String {
    let t = civil(secs);
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", t.year, t.month, t.day, t.hour, t.minute, t.second)
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

/// Seconds since the Unix epoch as an HTTP date (`Wed, 02 Jan 2030 03:04:05 GMT`).
pub fn http_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let iso = rfc3339(secs);
    let (y, m, d) = (&iso[0..4], iso[5..7].parse::<usize>().unwrap_or(1), &iso[8..10]);
    let weekday = DAYS[(secs / 86_400 % 7) as usize];
    format!("{weekday}, {d} {} {y} {} GMT", MONTHS[m - 1], &iso[11..19])
}

/// An RFC 3339 time (`2030-01-02T03:04:05Z`, `...05.5+02:00`) as whole seconds since
/// the Unix epoch; `None` for anything else or before 1970.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes().all(|c| c.is_ascii_digit()).then(|| t.parse().ok())?
    };
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&mo) || d < 1 || d > month_days[(mo - 1) as usize] || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) && rest.as_bytes()[3] == b':' => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (num(s.len() - 5..s.len() - 3)? * 3600 + num(s.len() - 2..s.len())? * 60)
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm, the inverse of `rfc3339`).
    let (y, mo) = if mo <= 2 { (y - 1, mo + 9) } else { (y, mo - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + sec - offset).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2030-01-02T03:04:05Z"), Some(1_893_553_445));
        assert_eq!(parse_rfc3339("2030-01-02T05:04:05.25+02:00"), Some(1_893_553_445));
        assert_eq!(rfc3339(1_893_553_445), "2030-01-02T03:04:05Z");
        assert_eq!(http_date(1_893_553_445), "Wed, 02 Jan 2030 03:04:05 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(parse_rfc3339("2028-02-29T00:00:00Z"), Some(1_835_395_200));
        for bad in [
            "1969-12-31T23:59:59Z",
            "2030-01-02 03:04:05Z",
            "2030-13-02T03:04:05Z",
            "2030-02-29T03:04:05Z",
            "2030-04-31T03:04:05Z",
            "2030-01-02T03:04:05",
            "2030-01-02T03:04:05+0\u{e9}00",
            "2030-01-02T03:04:05+0100",
            "x",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
