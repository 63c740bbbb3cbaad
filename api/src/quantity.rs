//! Kubernetes `resource.Quantity` (`500m`, `1.5`, `64Mi`, `1e3`): exact parsing, checked
//! arithmetic, comparison and the canonical form Kubernetes serializes, with no floats.
//!
//! The value is an `i128` count of nano-units, so every quantity Kubernetes keeps exactly
//! (it rounds anything finer than `1n` up, as this module does) is kept exactly here, and
//! the range is explicit: magnitudes below `1e29` (10^38 nano-units). Kubernetes itself
//! has no cap on decimal quantities and silently caps binary ones at 2^63-1; skiff
//! refuses both beyond its range with [`QuantityError::OutOfRange`] instead, so a user's
//! `cpu: 1e30` is an error at admission rather than a wrapped sum in the scheduler.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// How a quantity was written, which decides how it is printed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `12e6`, `1e-3`.
    DecimalExponent,
    /// `12Mi` (12 × 2^20).
    BinarySI,
    /// `12M` (12 × 10^6), `500m`, plain numbers.
    DecimalSI,
}

/// Why a string is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The text is not `<signedNumber><suffix>` (Kubernetes' `ErrFormatWrong`, same text).
    #[error(
        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    )]
    Format,
    /// The number has no digits (`.`, `Ki`, `-m`).
    #[error("unable to parse numeric part of quantity")]
    Numeric,
    /// The suffix is none of the SI, binary or exponent suffixes (`12Zi`, `1mi`).
    #[error("unable to parse quantity's suffix")]
    Suffix,
    /// The value is too large to be kept exactly (see the module documentation).
    #[error("quantity is too large: its magnitude must be less than {limit}")]
    OutOfRange { limit: &'static str },
    /// A JSON value that is neither a string nor a number.
    #[error("a quantity must be a string or a number")]
    NotAQuantity,
}

/// A Kubernetes resource quantity. Equality and ordering compare values only, as
/// Kubernetes' `Cmp` does: `1Ki == 1024`.
#[derive(Debug, Clone, Copy)]
pub struct Quantity {
    /// The value in units of 10^-9; `|nanos| < NANOS_BOUND` always holds.
    nanos: i128,
    format: Format,
}

/// One unit in nano-units.
const NANOS_PER_UNIT: i128 = 1_000_000_000;
/// Exclusive bound on `|nanos|`: 10^38 nano-units, i.e. 1e29 units.
const NANOS_BOUND: i128 = 100_000_000_000_000_000_000_000_000_000_000_000_000;
/// Digits of `NANOS_BOUND - 1`.
const MAX_DIGITS: usize = 38;
/// Kubernetes caps binary quantities at 2^63-1 units; skiff refuses them beyond it.
const BINARY_MAX_NANOS: i128 = i64::MAX as i128 * NANOS_PER_UNIT;

impl Quantity {
    /// Zero, formatted as DecimalSI.
    pub const ZERO: Quantity = Quantity {
        nanos: 0,
        format: Format::DecimalSI,
    };

    /// Parses `<signedNumber><suffix>` as Kubernetes' `ParseQuantity` does: no
    /// surrounding whitespace, values finer than `1n` rounded up away from zero.
    pub fn parse(text: &str) -> Result<Quantity, QuantityError> {
        parse_quantity(text)
    }

    /// Reads a quantity from JSON as Kubernetes' `UnmarshalJSON` does: a string or a
    /// bare number, surrounding whitespace ignored; `null` is zero.
    pub fn from_json(value: &serde_json::Value) -> Result<Quantity, QuantityError> {
        match value {
            serde_json::Value::String(s) => Quantity::parse(s.trim()),
            serde_json::Value::Number(n) => Quantity::parse(&n.to_string()),
            serde_json::Value::Null => Ok(Quantity::ZERO),
            _ => Err(QuantityError::NotAQuantity),
        }
    }

    /// `value` units (bytes, cores, pods) in `format`.
    pub fn from_units(value: i64, format: Format) -> Quantity {
        Quantity {
            nanos: i128::from(value) * NANOS_PER_UNIT,
            format,
        }
    }

    /// `value` thousandths of a unit (millicores) in `format`.
    pub fn from_millis(value: i64, format: Format) -> Quantity {
        Quantity {
            nanos: i128::from(value) * 1_000_000,
            format,
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }

    /// `ceil(q)`, rounded away from zero like Kubernetes' `Value` (bytes for memory).
    pub fn value(&self) -> i128 {
        scaled_away_from_zero(self.nanos, NANOS_PER_UNIT)
    }

    /// `ceil(q × 1000)`, rounded away from zero like Kubernetes' `MilliValue`
    /// (millicores for CPU).
    pub fn milli_value(&self) -> i128 {
        scaled_away_from_zero(self.nanos, 1_000_000)
    }

    /// [`Self::value`] clamped to `0..=u64::MAX`, for sums that are saturating anyway.
    pub fn value_clamped(&self) -> u64 {
        clamp_u64(self.value())
    }

    /// [`Self::milli_value`] clamped to `0..=u64::MAX`.
    pub fn milli_value_clamped(&self) -> u64 {
        clamp_u64(self.milli_value())
    }

    /// The sum, or `None` if it leaves the representable range. Adding to a zero takes
    /// the other quantity's format, as Kubernetes' `Add` does.
    pub fn checked_add(&self, other: &Quantity) -> Option<Quantity> {
        let nanos = self.nanos.checked_add(other.nanos)?;
        self.with_result(other, nanos)
    }

    /// The difference, or `None` if it leaves the representable range.
    pub fn checked_sub(&self, other: &Quantity) -> Option<Quantity> {
        let nanos = self.nanos.checked_sub(other.nanos)?;
        self.with_result(other, nanos)
    }

    fn with_result(&self, other: &Quantity, nanos: i128) -> Option<Quantity> {
        // `unsigned_abs`: a sum of two in-range values may be exactly `i128::MIN`.
        if nanos.unsigned_abs() >= NANOS_BOUND.unsigned_abs() {
            return None;
        }
        let format = if self.nanos == 0 {
            other.format
        } else {
            self.format
        };
        Some(Quantity { nanos, format })
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quantity::parse(s)
    }
}

/// The canonical form Kubernetes serializes: no fractional digits, the largest suffix
/// that loses nothing, the quantity's own kind of suffix where it can be kept.
impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0");
        }
        let whole_units = self.nanos % NANOS_PER_UNIT == 0;
        // Kubernetes prints a binary quantity below 1Ki, or one with a fraction, as
        // DecimalSI so that nothing is rounded.
        if self.format == Format::BinarySI
            && whole_units
            && self.nanos.unsigned_abs() >= (1024 * NANOS_PER_UNIT).unsigned_abs()
        {
            let mut mantissa = self.nanos / NANOS_PER_UNIT;
            let mut power = 0;
            while power < BINARY_SUFFIXES.len() - 1 && mantissa % 1024 == 0 {
                mantissa /= 1024;
                power += 1;
            }
            let suffix = BINARY_SUFFIXES.get(power).copied().unwrap_or_default();
            return write!(f, "{mantissa}{suffix}");
        }
        let (mantissa, exponent) = canonical_decimal(self.nanos);
        if self.format == Format::DecimalExponent {
            return if exponent == 0 {
                write!(f, "{mantissa}")
            } else {
                write!(f, "{mantissa}e{exponent}")
            };
        }
        // DecimalSI has no suffix past E (10^18); Kubernetes falls back to an exponent.
        match decimal_suffix(exponent) {
            Some(suffix) => write!(f, "{mantissa}{suffix}"),
            None => write!(f, "{mantissa}e{exponent}"),
        }
    }
}

/// The typed objects' quantity is its text; Kubernetes trims it when it reads JSON.
impl TryFrom<&k8s_openapi::apimachinery::pkg::api::resource::Quantity> for Quantity {
    type Error = QuantityError;

    fn try_from(
        value: &k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    ) -> Result<Self, Self::Error> {
        Quantity::parse(value.0.trim())
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Quantity::from_json(&value).map_err(serde::de::Error::custom)
    }
}

const BINARY_SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

/// DecimalSI suffixes by base-10 exponent, from `n` (10^-9) to `E` (10^18).
fn decimal_suffix(exponent: i32) -> Option<&'static str> {
    Some(match exponent {
        -9 => "n",
        -6 => "u",
        -3 => "m",
        0 => "",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        18 => "E",
        _ => return None,
    })
}

/// `nanos` as `mantissa × 10^exponent` with no trailing zeros moved into the mantissa
/// beyond what makes the exponent a multiple of three (Kubernetes' `AsCanonicalBytes`).
fn canonical_decimal(nanos: i128) -> (i128, i32) {
    let (mut mantissa, mut exponent) = (nanos, -9i32);
    while mantissa != 0 && mantissa % 10 == 0 {
        mantissa /= 10;
        exponent += 1;
    }
    // Stripping k zeros and putting back at most k keeps the mantissa within `nanos`.
    while exponent.rem_euclid(3) != 0 {
        mantissa *= 10;
        exponent -= 1;
    }
    (mantissa, exponent)
}

fn scaled_away_from_zero(nanos: i128, per: i128) -> i128 {
    let (quotient, remainder) = (nanos / per, nanos % per);
    quotient + remainder.signum()
}

fn clamp_u64(value: i128) -> u64 {
    u64::try_from(value.max(0)).unwrap_or(u64::MAX)
}

/// What a suffix means: a power of ten or of two, and the format it implies.
enum Multiplier {
    Decimal(i64),
    Binary(u32),
}

fn interpret_suffix(suffix: &str) -> Result<(Multiplier, Format), QuantityError> {
    let decimal = |e| Ok((Multiplier::Decimal(e), Format::DecimalSI));
    let binary = |e| Ok((Multiplier::Binary(e), Format::BinarySI));
    match suffix {
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "" => decimal(0),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => binary(10),
        "Mi" => binary(20),
        "Gi" => binary(30),
        "Ti" => binary(40),
        "Pi" => binary(50),
        "Ei" => binary(60),
        _ => {
            let exponent = suffix
                .strip_prefix(['e', 'E'])
                .filter(|e| !e.is_empty())
                .ok_or(QuantityError::Suffix)?;
            // Kubernetes keeps exponents as int32; anything wider is not a quantity.
            let exponent: i32 =
                exponent
                    .parse()
                    .map_err(|e: std::num::ParseIntError| match e.kind() {
                        std::num::IntErrorKind::PosOverflow
                        | std::num::IntErrorKind::NegOverflow => {
                            QuantityError::OutOfRange { limit: "1e29" }
                        }
                        _ => QuantityError::Suffix,
                    })?;
            Ok((
                Multiplier::Decimal(i64::from(exponent)),
                Format::DecimalExponent,
            ))
        }
    }
}

/// The pieces of `<sign><digits>.<digits><suffix>`, found the way Kubernetes'
/// `parseQuantityString` scans them.
struct Scanned<'a> {
    negative: bool,
    whole: &'a str,
    fraction: &'a str,
    suffix: &'a str,
}

fn scan(text: &str) -> Result<Scanned<'_>, QuantityError> {
    let bytes = text.as_bytes();
    let mut pos = 0;
    let mut negative = false;
    match bytes.first() {
        Some(b'-') => {
            negative = true;
            pos = 1;
        }
        Some(b'+') => pos = 1,
        _ => {}
    }
    let digits_from = |start: usize| {
        start
            + bytes
                .get(start..)
                .unwrap_or_default()
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count()
    };
    let whole_end = digits_from(pos);
    let whole = text.get(pos..whole_end).unwrap_or_default();
    pos = whole_end;
    let mut fraction = "";
    if bytes.get(pos) == Some(&b'.') {
        let end = digits_from(pos + 1);
        fraction = text.get(pos + 1..end).unwrap_or_default();
        pos = end;
    }
    let suffix_start = pos;
    while bytes.get(pos).is_some_and(|b| b"eEinumkKMGTP".contains(b)) {
        pos += 1;
    }
    if matches!(bytes.get(pos), Some(b'-' | b'+')) {
        pos += 1;
    }
    pos = digits_from(pos);
    if pos != bytes.len() {
        return Err(QuantityError::Format);
    }
    Ok(Scanned {
        negative,
        whole,
        fraction,
        suffix: text.get(suffix_start..).unwrap_or_default(),
    })
}

fn parse_quantity(text: &str) -> Result<Quantity, QuantityError> {
    if text.is_empty() {
        return Err(QuantityError::Format);
    }
    let scanned = scan(text)?;
    if scanned.whole.is_empty() && scanned.fraction.is_empty() {
        return Err(QuantityError::Numeric);
    }
    let (multiplier, mut format) = interpret_suffix(scanned.suffix)?;
    // The significant digits, with the decimal point `fraction.len()` places from the right.
    let mut digits: Vec<u8> = scanned
        .whole
        .bytes()
        .chain(scanned.fraction.bytes())
        .map(|b| b - b'0')
        .skip_while(|d| *d == 0)
        .collect();
    let fraction_len = i64::try_from(scanned.fraction.len()).map_err(|_| QuantityError::Format)?;
    // `value = digits × 10^(shift - 9) × 2^power` nano-units... i.e. nanos = digits × 10^shift.
    let mut shift = 9 - fraction_len;
    match multiplier {
        Multiplier::Decimal(exponent) => shift += exponent,
        Multiplier::Binary(power) => multiply_decimal(&mut digits, 1u64 << power),
    }
    let limit = if format == Format::BinarySI {
        "8Ei"
    } else {
        "1e29"
    };
    let magnitude = nanos_of(&digits, shift).ok_or(QuantityError::OutOfRange { limit })?;
    if format == Format::BinarySI && magnitude > BINARY_MAX_NANOS {
        return Err(QuantityError::OutOfRange { limit });
    }
    // Kubernetes does not keep a fraction of a unit in binary form.
    if format == Format::BinarySI && magnitude > 0 && magnitude < NANOS_PER_UNIT {
        format = Format::DecimalSI;
    }
    let nanos = if scanned.negative {
        -magnitude
    } else {
        magnitude
    };
    Ok(Quantity { nanos, format })
}

/// Multiplies a big-endian decimal digit string by `factor` in place.
fn multiply_decimal(digits: &mut Vec<u8>, factor: u64) {
    let mut carry: u128 = 0;
    for digit in digits.iter_mut().rev() {
        let product = u128::from(*digit) * u128::from(factor) + carry;
        *digit = (product % 10) as u8;
        carry = product / 10;
    }
    let mut head = Vec::new();
    while carry > 0 {
        head.push((carry % 10) as u8);
        carry /= 10;
    }
    head.reverse();
    head.append(digits);
    *digits = head;
}

/// `ceil(digits × 10^shift)` as nano-units, or `None` if it is not below `NANOS_BOUND`.
/// Rounding up means any non-zero value finer than `1n` becomes `1n`, as in Kubernetes.
fn nanos_of(digits: &[u8], shift: i64) -> Option<i128> {
    if digits.is_empty() {
        return Some(0);
    }
    let len = i64::try_from(digits.len()).ok()?;
    let kept_len = len.checked_add(shift)?;
    let (kept, rest): (&[u8], &[u8]) = if shift >= 0 {
        (digits, &[])
    } else if kept_len <= 0 {
        (&[], digits)
    } else {
        digits.split_at(usize::try_from(kept_len).ok()?)
    };
    let zeros = usize::try_from(shift.max(0)).ok()?;
    if kept.len().checked_add(zeros)? > MAX_DIGITS {
        return None;
    }
    let mut value: i128 = 0;
    for digit in kept.iter().copied().chain(std::iter::repeat_n(0, zeros)) {
        value = value * 10 + i128::from(digit);
    }
    if rest.iter().any(|d| *d != 0) {
        value += 1;
    }
    (value < NANOS_BOUND).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> Quantity {
        match Quantity::parse(text) {
            Ok(q) => q,
            Err(e) => panic!("{text:?} did not parse: {e}"),
        }
    }

    /// `mantissa × 10^exponent` units, to write expectations like quantity_test.go's
    /// `decQuantity`.
    fn dec(mantissa: i128, exponent: i32) -> i128 {
        let shifted = exponent + 9;
        if shifted >= 0 {
            mantissa * 10i128.pow(shifted as u32)
        } else {
            mantissa / 10i128.pow((-shifted) as u32)
        }
    }

    // Cases from TestQuantityParse in k8s.io/apimachinery/pkg/api/resource/quantity_test.go.
    #[test]
    fn parses_like_kubernetes_test_quantity_parse() {
        use Format::*;
        let table: &[(&str, i128, Format)] = &[
            ("0", 0, DecimalSI),
            ("0n", 0, DecimalSI),
            ("0u", 0, DecimalSI),
            ("0m", 0, DecimalSI),
            ("0Ki", 0, BinarySI),
            ("0k", 0, DecimalSI),
            ("0Mi", 0, BinarySI),
            ("0Ti", 0, BinarySI),
            ("1", dec(1, 0), DecimalSI),
            ("1Ki", dec(1024, 0), BinarySI),
            ("8Ki", dec(8 * 1024, 0), BinarySI),
            ("7Mi", dec(7 << 20, 0), BinarySI),
            ("6Gi", dec(6 << 30, 0), BinarySI),
            ("5Ti", dec(5 << 40, 0), BinarySI),
            ("4Pi", dec(4 << 50, 0), BinarySI),
            ("3Ei", dec(3 << 60, 0), BinarySI),
            ("100Ti", dec(100 << 40, 0), BinarySI),
            ("5n", dec(5, -9), DecimalSI),
            ("4u", dec(4, -6), DecimalSI),
            ("3m", dec(3, -3), DecimalSI),
            ("9", dec(9, 0), DecimalSI),
            ("8k", dec(8, 3), DecimalSI),
            ("50k", dec(5, 4), DecimalSI),
            ("7M", dec(7, 6), DecimalSI),
            ("6G", dec(6, 9), DecimalSI),
            ("5T", dec(5, 12), DecimalSI),
            ("40T", dec(4, 13), DecimalSI),
            ("2P", dec(2, 15), DecimalSI),
            ("1E", dec(1, 18), DecimalSI),
            ("1E-3", dec(1, -3), DecimalExponent),
            ("1e3", dec(1, 3), DecimalExponent),
            ("1E6", dec(1, 6), DecimalExponent),
            ("1e9", dec(1, 9), DecimalExponent),
            ("1E18", dec(1, 18), DecimalExponent),
            ("1e14", dec(1, 14), DecimalExponent),
            ("100.035k", dec(100035, 0), DecimalSI),
            ("0.001", dec(1, -3), DecimalSI),
            ("0.0005k", dec(5, -1), DecimalSI),
            ("0.5", dec(5, -1), DecimalSI),
            ("0.00050k", dec(5, -1), DecimalSI),
            ("0.50000", dec(5, -1), DecimalSI),
            ("0.5e0", dec(5, -1), DecimalExponent),
            ("0.5e-1", dec(5, -2), DecimalExponent),
            ("0.5e-2", dec(5, -3), DecimalExponent),
            ("10.035M", dec(10035, 3), DecimalSI),
            ("1.2e3", dec(12, 2), DecimalExponent),
            ("1.3E+6", dec(13, 5), DecimalExponent),
            ("1.40e9", dec(14, 8), DecimalExponent),
            ("1.53E12", dec(153, 10), DecimalExponent),
            ("1.7E18", dec(17, 17), DecimalExponent),
            ("9.01", dec(901, -2), DecimalSI),
            ("8.1k", dec(81, 2), DecimalSI),
            ("7.123456M", dec(7123456, 0), DecimalSI),
            ("6.987654321G", dec(6987654321, 0), DecimalSI),
            ("5.444T", dec(5444, 9), DecimalSI),
            ("2.5P", dec(25, 14), DecimalSI),
            ("1.01E", dec(101, 16), DecimalSI),
            // Things that saturate/round.
            ("3.001n", dec(4, -9), DecimalSI),
            ("1.1E-9", dec(2, -9), DecimalExponent),
            ("0.0000000001", dec(1, -9), DecimalSI),
            ("0.0000000005", dec(1, -9), DecimalSI),
            ("0.5e-9", dec(1, -9), DecimalExponent),
            ("0.9n", dec(1, -9), DecimalSI),
            ("0.00000012345", dec(124, -9), DecimalSI),
            ("0.00000012354", dec(124, -9), DecimalSI),
            ("12E", dec(12, 18), DecimalSI),
            // Fractional binary.
            ("100.035Ki", dec(10243584, -2), BinarySI),
            ("0.5Mi", dec(512 * 1024, 0), BinarySI),
            ("0.05Gi", dec(536870912, -1), BinarySI),
            ("0.025Ti", dec(274877906944, -1), BinarySI),
            // Things written by trolls.
            ("0.000000000001Ki", dec(2, -9), DecimalSI),
            (".001", dec(1, -3), DecimalSI),
            (".0001k", dec(100, -3), DecimalSI),
            ("1.", dec(1, 0), DecimalSI),
            ("1.G", dec(1, 9), DecimalSI),
        ];
        for (text, nanos, format) in table {
            for (prefix, sign) in [("", 1), ("+", 1), ("-", -1)] {
                let input = format!("{prefix}{text}");
                let got = q(&input);
                assert_eq!(got.nanos, sign * nanos, "{input}");
                assert_eq!(got.format, *format, "{input}");
            }
        }
    }

    #[test]
    fn refuses_malformed_input_as_kubernetes_does() {
        use QuantityError::*;
        let table: &[(&str, QuantityError)] = &[
            ("", Format),
            // The invalid list of TestQuantityParse.
            ("1.1.M", Format),
            ("1+1.0M", Format),
            ("0.1mi", Suffix),
            ("0.1am", Format),
            ("aoeu", Format),
            (".5i", Suffix),
            ("1i", Suffix),
            ("-3.01i", Suffix),
            ("-3.01e-", Suffix),
            (" 1", Format),
            ("1 ", Format),
            // And what users of skiff have written.
            ("abc", Format),
            ("12Zi", Format),
            ("1.2.3", Format),
            ("--1", Numeric),
            ("Ki", Numeric),
            (".", Numeric),
            ("1e", Suffix),
            ("1e99999999999", OutOfRange { limit: "1e29" }),
        ];
        for (text, error) in table {
            assert_eq!(Quantity::parse(text), Err(error.clone()), "{text:?}");
        }
    }

    #[test]
    fn values_beyond_the_range_are_errors_not_caps() {
        let decimal = QuantityError::OutOfRange { limit: "1e29" };
        let binary = QuantityError::OutOfRange { limit: "8Ei" };
        assert_eq!(Quantity::parse("1e30"), Err(decimal.clone()));
        assert_eq!(Quantity::parse("-1e29"), Err(decimal.clone()));
        assert_eq!(Quantity::parse("100000000000E"), Err(decimal));
        // Kubernetes silently caps these two at 2^63-1 (TestQuantityParse "9Ei").
        assert_eq!(Quantity::parse("9Ei"), Err(binary.clone()));
        assert_eq!(Quantity::parse("9223372036854775807Ki"), Err(binary));
        assert_eq!(
            q("99999999999999999999999999999").value(),
            10i128.pow(29) - 1
        );
        assert_eq!(q("1e-2000000000"), q("1n"));
        assert_eq!(q("7.99999Ei").format(), Format::BinarySI);
    }

    // TestQuantityString and TestQuantityParseEmit: the canonical form.
    #[test]
    fn canonical_form_like_kubernetes_test_quantity_string() {
        let table: &[(&str, &str)] = &[
            ("1Gi", "1Gi"),
            ("1024Mi", "1Gi"),
            ("300Mi", "300Mi"),
            ("307200Ki", "300Mi"),
            ("6Ki", "6Ki"),
            ("1025024Mi", "1001Gi"),
            ("1024Gi", "1Ti"),
            ("1024Ki", "1Mi"),
            ("1.5Gi", "1536Mi"),
            ("1025Ki", "1025Ki"),
            ("5", "5"),
            ("1G", "1G"),
            ("1000M", "1G"),
            ("0.001T", "1G"),
            ("1000000k", "1G"),
            ("1000k", "1M"),
            ("1m", "1m"),
            ("1000u", "1m"),
            ("1500m", "1500m"),
            ("1.5", "1500m"),
            ("1.08", "1080m"),
            ("1080000000n", "1080m"),
            ("300M", "300M"),
            ("1E", "1E"),
            ("1000E", "1e21"),
            ("5000E", "5e21"),
            ("1000000E", "1e24"),
            ("1234567M", "1234567M"),
            ("3k", "3k"),
            ("0", "0"),
            ("0Ki", "0"),
            ("00", "0"),
            ("1e9", "1e9"),
            (".001e12", "1e9"),
            ("1e-3", "1e-3"),
            ("0.001e0", "1e-3"),
            ("1000e-12", "1e-9"),
            ("80e-3", "80e-3"),
            ("300e6", "300e6"),
            ("1.5e3", "1500"),
            ("1n", "1n"),
            ("1080n", "1080n"),
            ("1080u", "1080u"),
            // Binary quantities below 1Ki or with fractions print as DecimalSI.
            ("0.5Ki", "512"),
            (".001Ki", "1024m"),
            (".000001Ki", "1024u"),
            (".000000001Ki", "1024n"),
            (".000000000001Ki", "2n"),
            ("100.035Ki", "102435840m"),
        ];
        for (input, canonical) in table {
            assert_eq!(q(input).to_string(), *canonical, "{input}");
            assert_eq!(
                q(canonical).to_string(),
                *canonical,
                "{canonical} round trip"
            );
            if !q(input).is_zero() {
                assert_eq!(
                    q(&format!("-{input}")).to_string(),
                    format!("-{canonical}"),
                    "-{input}"
                );
            }
        }
    }

    // TestMilliNewSet / TestNewSet, and the rounding of MilliValue and Value.
    #[test]
    fn milli_value_and_value_round_up_away_from_zero() {
        assert_eq!(
            Quantity::from_millis(1, Format::DecimalSI).to_string(),
            "1m"
        );
        assert_eq!(
            Quantity::from_millis(1000, Format::DecimalSI).to_string(),
            "1"
        );
        assert_eq!(
            Quantity::from_millis(1024, Format::BinarySI).to_string(),
            "1024m"
        );
        assert_eq!(
            Quantity::from_units(1024, Format::BinarySI).to_string(),
            "1Ki"
        );
        assert_eq!(
            Quantity::from_units(1_234_000, Format::DecimalSI).to_string(),
            "1234k"
        );
        assert_eq!(
            Quantity::from_units(1_000_000, Format::DecimalExponent).to_string(),
            "1e6"
        );
        assert_eq!(q("1.5").milli_value(), 1500);
        assert_eq!(q("250m").milli_value(), 250);
        assert_eq!(q("1n").milli_value(), 1);
        assert_eq!(q("-1n").milli_value(), -1);
        assert_eq!(q("1.0001m").milli_value(), 2);
        assert_eq!(q("64Mi").value(), 64 << 20);
        assert_eq!(q("1.5").value(), 2);
        assert_eq!(q("500m").value(), 1);
        assert_eq!(q("1e20").value_clamped(), u64::MAX);
        assert_eq!(q("-1").milli_value_clamped(), 0);
    }

    #[test]
    fn arithmetic_is_checked_and_comparison_ignores_format() {
        // TestQuantityCmp.
        assert!(q("100m") > q("50m"));
        assert!(q("10000T") > q("100Gi"));
        assert_eq!(q("1Ki"), q("1024"));
        assert_eq!(q("1"), q("1000m"));
        let sum = q("1.5").checked_add(&q("500m"));
        assert_eq!(sum.map(|s| s.to_string()).as_deref(), Some("2"));
        assert_eq!(q("1Gi").checked_sub(&q("1Gi")), Some(Quantity::ZERO));
        // TestQuantityAddZeroPreservesSuffix.
        for text in ["100m", "1Gi"] {
            let zero = q("0");
            assert_eq!(
                zero.checked_add(&q(text)).map(|s| s.to_string()).as_deref(),
                Some(text)
            );
            assert_eq!(
                q(text).checked_add(&zero).map(|s| s.to_string()).as_deref(),
                Some(text)
            );
        }
        let most_negative = Quantity {
            nanos: -(NANOS_BOUND - 1),
            format: Format::DecimalSI,
        };
        assert_eq!(most_negative.checked_add(&most_negative), None);
        assert_eq!(most_negative.checked_sub(&q("1n")), None);
        let to_min = Quantity {
            nanos: i128::MIN - most_negative.nanos,
            format: Format::DecimalSI,
        };
        assert_eq!(most_negative.checked_add(&to_min), None);
        let big = q("9e28");
        assert_eq!(big.checked_add(&big), None);
        assert_eq!(q("-9e28").checked_sub(&big), None);
    }

    #[test]
    fn json_accepts_strings_and_numbers_like_unmarshal_json() {
        use serde_json::json;
        // TestJSONWhitespace.
        for (value, canonical) in [
            (json!(" 1"), "1"),
            (json!("1 "), "1"),
            (json!(1), "1"),
            (json!(-1), "-1"),
            (json!(1.5), "1500m"),
            (json!(null), "0"),
        ] {
            let parsed: Quantity =
                serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{value}: {e}"));
            assert_eq!(parsed.to_string(), canonical, "{value}");
        }
        assert_eq!(
            Quantity::from_json(&json!(true)),
            Err(QuantityError::NotAQuantity)
        );
        assert!(serde_json::from_value::<Quantity>(json!("abc")).is_err());
        assert_eq!(serde_json::to_value(q("1024Mi")).ok(), Some(json!("1Gi")));
        let typed = k8s_openapi::apimachinery::pkg::api::resource::Quantity("1.5 ".into());
        assert_eq!(
            Quantity::try_from(&typed).map(|q| q.milli_value()),
            Ok(1500)
        );
    }
}
