//! Kubernetes resource quantities (`500m`, `1.5Gi`, `2`, `1e3`), parsed once and exactly: every
//! suffix Kubernetes has, checked arithmetic, and Kubernetes' limits (no quantity beyond 2^63-1,
//! precision below a milli-unit rounded up).

use std::fmt;
use std::str::FromStr;

/// A quantity in thousandths of its unit (millicores, millibytes), exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity {
    milli: i128,
}

/// Why a quantity does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("invalid quantity {0:?}: expected a number with an optional suffix, e.g. 500m, 0.5, 128Mi, 1G")]
    Syntax(String),
    #[error("quantity {0:?} is too large: Kubernetes quantities are at most 2^63-1 (9223372036854775807)")]
    TooLarge(String),
}

/// The largest magnitude a quantity may have, in its unit.
const MAX: i128 = i64::MAX as i128;

impl Quantity {
    /// The quantity of `units` whole units.
    pub fn from_units(units: i64) -> Quantity {
        Quantity {
            milli: i128::from(units) * 1000,
        }
    }

    /// In thousandths of the unit (millicores), saturating at the ends of `i64`.
    pub fn milli_value(&self) -> i64 {
        saturate(self.milli)
    }

    /// In whole units (bytes, cores), rounded up as Kubernetes' `Value()` does.
    pub fn value(&self) -> i64 {
        saturate(div_ceil(self.milli, 1000))
    }

    /// In billionths of the unit (nanocores), saturating.
    pub fn nano_value(&self) -> i64 {
        saturate(self.milli.saturating_mul(1_000_000))
    }

    /// The sum, held at Kubernetes' range when it would leave it (a sum of valid quantities
    /// cannot wrap).
    pub fn saturating_add(self, other: Quantity) -> Quantity {
        Quantity {
            milli: (self.milli + other.milli).clamp(-MAX * 1000, MAX * 1000),
        }
    }

    pub fn is_negative(&self) -> bool {
        self.milli < 0
    }

    /// The quantity at `value`, zero when it is absent or invalid (objects are validated when
    /// they are read from Git, so callers need not say the same error twice).
    pub fn of(value: &serde_json::Value) -> Quantity {
        Quantity::from_json(value).unwrap_or_default()
    }

    /// Reads a quantity as it appears in JSON: a string, or a plain number.
    pub fn from_json(value: &serde_json::Value) -> Option<Quantity> {
        match value {
            serde_json::Value::String(s) => s.parse().ok(),
            serde_json::Value::Number(n) => n.to_string().parse().ok(),
            _ => None,
        }
    }
}

fn saturate(v: i128) -> i64 {
    v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// Division rounding toward positive infinity.
fn div_ceil(a: i128, b: i128) -> i128 {
    let q = a / b;
    if a % b > 0 { q + 1 } else { q }
}

/// What a suffix multiplies by: `10^exp` or `2^(10·binary)`.
enum Scale {
    Decimal(i32),
    Binary(u32),
}

fn suffix_scale(suffix: &str) -> Option<Scale> {
    Some(match suffix {
        "" => Scale::Decimal(0),
        "n" => Scale::Decimal(-9),
        "u" => Scale::Decimal(-6),
        "m" => Scale::Decimal(-3),
        "k" => Scale::Decimal(3),
        "M" => Scale::Decimal(6),
        "G" => Scale::Decimal(9),
        "T" => Scale::Decimal(12),
        "P" => Scale::Decimal(15),
        "E" => Scale::Decimal(18),
        "Ki" => Scale::Binary(1),
        "Mi" => Scale::Binary(2),
        "Gi" => Scale::Binary(3),
        "Ti" => Scale::Binary(4),
        "Pi" => Scale::Binary(5),
        "Ei" => Scale::Binary(6),
        s if s.starts_with(['e', 'E']) => {
            let exp = &s[1..];
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // Anything beyond ±100 is far outside the range either way: clamp before parsing.
            let n: i32 = if digits.len() > 3 { 1000 } else { digits.parse().ok()? };
            Scale::Decimal(if exp.starts_with('-') { -n } else { n })
        }
        _ => return None,
    })
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(text: &str) -> Result<Quantity, QuantityError> {
        let syntax = || QuantityError::Syntax(text.to_owned());
        let too_large = || QuantityError::TooLarge(text.to_owned());
        let (negative, body) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let number_end = body.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(body.len());
        let (number, suffix) = body.split_at(number_end);
        let (int, frac) = number.split_once('.').unwrap_or((number, ""));
        if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(syntax());
        }
        let scale = suffix_scale(suffix).ok_or_else(syntax)?;
        // The digits as one integer, with `shift` the power of ten it is to be multiplied by.
        // Leading zeros never overflow; trailing fraction digits past a nano-unit only round.
        let int = int.trim_start_matches('0');
        let mut digits: i128 = 0;
        let mut shift: i32 = 0;
        for b in int.bytes() {
            digits = digits
                .checked_mul(10)
                .and_then(|d| d.checked_add(i128::from(b - b'0')))
                .ok_or_else(too_large)?;
        }
        let mut rounded_away = false;
        for b in frac.bytes() {
            if shift <= -30 {
                rounded_away |= b != b'0';
                continue;
            }
            digits = digits
                .checked_mul(10)
                .and_then(|d| d.checked_add(i128::from(b - b'0')))
                .ok_or_else(too_large)?;
            shift -= 1;
        }
        // milli = digits · 10^shift · scale · 1000, rounded up (away from zero for the magnitude).
        let mut milli = digits;
        let mut exp = shift + 3;
        if let Scale::Binary(k) = scale {
            milli = milli.checked_mul(1i128 << (10 * k)).ok_or_else(too_large)?;
        } else if let Scale::Decimal(e) = scale {
            exp += e;
        }
        if exp >= 0 {
            if milli != 0 {
                let factor = 10i128.checked_pow(exp as u32).ok_or_else(too_large)?;
                milli = milli.checked_mul(factor).ok_or_else(too_large)?;
            }
        } else {
            let divisor = 10i128.checked_pow((-exp) as u32);
            milli = match divisor {
                Some(d) => {
                    let q = milli / d;
                    if milli % d != 0 { q + 1 } else { q }
                }
                None => i128::from(milli != 0),
            };
        }
        if rounded_away && milli == 0 {
            milli = 1;
        }
        if milli > MAX * 1000 {
            return Err(too_large());
        }
        Ok(Quantity {
            milli: if negative { -milli } else { milli },
        })
    }
}

impl fmt::Display for Quantity {
    /// A canonical form: whole units when exact, else millis (`1500m`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.milli % 1000 == 0 {
            write!(f, "{}", self.milli / 1000)
        } else {
            write!(f, "{}m", self.milli)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn q(s: &str) -> Quantity {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn every_suffix_is_read_exactly() {
        for (text, milli) in [
            ("500m", 500),
            ("0.5", 500),
            ("2", 2000),
            ("1k", 1_000_000),
            ("1M", 1_000_000_000),
            ("1G", 1_000_000_000_000),
            ("1T", 1_000_000_000_000_000),
            ("1P", 1_000_000_000_000_000_000),
            ("1E", 1_000_000_000_000_000_000_000),
            ("1Ki", 1_024_000),
            ("1Mi", 1_048_576_000),
            ("1.5Gi", 1_610_612_736_000),
            ("1Ti", 1_099_511_627_776_000),
            ("1Pi", 1_125_899_906_842_624_000),
            ("2Ei", 2_305_843_009_213_693_952_000),
            ("1e3", 1_000_000),
            ("1E-3", 1),
            ("250000000n", 250),
            ("1u", 1),
            ("+3", 3000),
            ("-1", -1000),
            (".5", 500),
            ("5.", 5000),
            ("007", 7000),
        ] {
            assert_eq!(q(text).milli, milli, "{text}");
        }
        assert_eq!(q("1Pi").value(), 1 << 50);
        assert_eq!(q("2E").value(), 2_000_000_000_000_000_000);
        assert_eq!(q("100m").milli_value(), 100);
        assert_eq!(q("1.5").nano_value(), 1_500_000_000);
    }

    #[test]
    fn precision_below_a_milli_unit_rounds_up() {
        assert_eq!(q("0.1m").milli, 1);
        assert_eq!(q("1n").milli, 1);
        assert_eq!(q("1.0001").milli, 1001);
        assert_eq!(q("0.000000000000000000000000000000000001").milli, 1);
        assert_eq!(q("1e-400").milli, 1);
        assert_eq!(q("0").milli, 0);
        assert_eq!(q("0e-400").milli, 0);
        assert_eq!(q("1500m").value(), 2, "whole units round up");
    }

    #[test]
    fn values_beyond_kubernetes_range_are_refused() {
        for text in ["1e400", "9223372036854775808", "8Ei", "10E", &"9".repeat(400), "1e19"] {
            assert!(matches!(text.parse::<Quantity>(), Err(QuantityError::TooLarge(_))), "{text}");
        }
        assert_eq!(q("9223372036854775807").value(), i64::MAX);
        assert_eq!(q("7Ei").value(), 7 << 60);
        for text in ["", ".", "1.2.3", "12MB", "lots", "1e", "1e+", "--1", "1 Gi", "Gi", "0x10"] {
            assert!(matches!(text.parse::<Quantity>(), Err(QuantityError::Syntax(_))), "{text:?}");
        }
    }

    #[test]
    fn display_is_canonical() {
        assert_eq!(q("1.5").to_string(), "1500m");
        assert_eq!(q("2000m").to_string(), "2");
        assert_eq!(q("1Ki").to_string(), "1024");
    }

    proptest! {
        #[test]
        fn integers_and_millis_round_trip(n in -1_000_000_000i64..1_000_000_000, milli in 0i64..1000) {
            prop_assert_eq!(q(&n.to_string()).value(), n);
            prop_assert_eq!(q(&format!("{milli}m")).milli_value(), milli);
            prop_assert_eq!(Quantity::from_units(n), q(&n.to_string()));
        }

        #[test]
        fn any_text_parses_or_errs_without_panicking(s in "[-+0-9.eEkKMGTPimnu]{0,40}") {
            let _ = s.parse::<Quantity>();
        }
    }
}
