//! Go duration syntax (`"2s"`, `"150ms"`, `"1m30s"`, `"1.5h"`), as KrakenD reads it.

use std::time::Duration;

use super::BadValue;

/// Parses a Go-syntax duration. Units: `ns`, `us` (`µs`, `μs`), `ms`, `s`, `m`, `h`.
/// A lone `"0"` is zero. Negative durations are refused: no Sluice setting takes one.
pub fn parse_duration(text: &str) -> Result<Duration, BadValue> {
    let invalid = || format!("invalid duration {text:?} (use Go syntax: \"2s\", \"150ms\", \"1m30s\")");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let rest = match text.strip_prefix('+') {
        Some(r) => r,
        None if text.starts_with('-') => return Err(BadValue(format!("negative duration {text:?} is not allowed"))),
        None => text,
    };
    if rest.is_empty() {
        return Err(BadValue(invalid()));
    }
    let mut total: u128 = 0;
    let mut s = rest;
    while !s.is_empty() {
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = s.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.bytes().take_while(u8::is_ascii_digit).count();
                a.split_at(n)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(BadValue(invalid()));
        }
        let unit_len = after.bytes().take_while(|b| !b.is_ascii_digit() && *b != b'.').count();
        let (unit, after) = after.split_at(unit_len);
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(BadValue(format!("missing unit in duration {text:?} (for example \"{int_part}s\")"))),
            _ => return Err(BadValue(format!("unknown unit {unit:?} in duration {text:?}"))),
        };
        let int: u128 = if int_part.is_empty() { 0 } else { int_part.parse().map_err(|_| invalid())? };
        let mut value = int.checked_mul(nanos_per_unit).ok_or_else(invalid)?;
        // Fraction: at most 18 digits are significant at nanosecond precision.
        let mut scale = nanos_per_unit;
        for d in frac_part.bytes().take(18) {
            scale /= 10;
            value = value.checked_add(u128::from(d - b'0') * scale).ok_or_else(invalid)?;
        }
        total = total.checked_add(value).ok_or_else(invalid)?;
        s = after;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| invalid())?;
    // Go's limit is about 290 years; refuse anything past it like Go does.
    if secs > 9_223_372_036 {
        return Err(BadValue(format!("duration {text:?} is too large")));
    }
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_syntax() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("150ms"), Ok(Duration::from_millis(150)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h2m3s4ms5us6ns"), Ok(Duration::new(3723, 4_005_006)));
        assert_eq!(parse_duration("300µs"), Ok(Duration::from_micros(300)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("+1s"), Ok(Duration::from_secs(1)));
    }

    #[test]
    fn bad_durations() {
        assert_eq!(parse_duration("2"), Err("missing unit in duration \"2\" (for example \"2s\")".into()));
        assert_eq!(parse_duration("2 s"), Err("unknown unit \" s\" in duration \"2 s\"".into()));
        assert_eq!(parse_duration("-1s"), Err("negative duration \"-1s\" is not allowed".into()));
        assert_eq!(
            parse_duration(""),
            Err("invalid duration \"\" (use Go syntax: \"2s\", \"150ms\", \"1m30s\")".into())
        );
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("99999999999999999999999h").is_err());
        assert!(parse_duration("3000000h").is_err());
    }
}
