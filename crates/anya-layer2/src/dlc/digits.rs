//! Digit decomposition of numeric outcomes (dlcspecs `Oracle.md`, "Digit Decomposition").
//!
//! A value is written in `base` with exactly `nb_digits` digits, most significant first, each
//! digit attested as its decimal string (`"0"` … `"base-1"`); a signed event adds a first
//! outcome `"+"` or `"-"` (zero is `"+"`). A value outside what the digits can hold is clamped
//! to the nearest value they can: every digit `base-1` above the range, and zero (unsigned) or
//! the most negative value (signed) below it.

/// Why a digit layout or a list of attested digits is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DigitsError {
    /// The base is below 2.
    #[error("base {0} is below 2")]
    Base(u16),
    /// No digits, or more than [`MAX_DIGITS`].
    #[error("{0} digits: between 1 and {MAX_DIGITS} are allowed")]
    DigitCount(u16),
    /// Attested outcomes that are not this layout's digits.
    #[error("outcome {index} ({outcome:?}) is not a digit of this event")]
    NotADigit {
        /// Its position.
        index: usize,
        /// The outcome string.
        outcome: String,
    },
    /// A number of outcomes other than the layout has.
    #[error("{found} outcomes for a layout of {expected}")]
    Count {
        /// How many the layout has.
        expected: usize,
        /// How many were given.
        found: usize,
    },
}

/// The most digits an event may have (each is one nonce and one signature).
pub const MAX_DIGITS: u16 = 128;

/// A digit layout: `base`, `nb_digits`, and whether a sign comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digits {
    base: u16,
    nb_digits: u16,
    signed: bool,
}

impl Digits {
    /// Checks the layout.
    pub fn new(base: u16, nb_digits: u16, signed: bool) -> Result<Self, DigitsError> {
        if base < 2 {
            return Err(DigitsError::Base(base));
        }
        if nb_digits == 0 || nb_digits > MAX_DIGITS {
            return Err(DigitsError::DigitCount(nb_digits));
        }
        Ok(Self {
            base,
            nb_digits,
            signed,
        })
    }

    /// How many nonces (and outcomes) an event of this layout has.
    pub fn nonce_count(&self) -> usize {
        usize::from(self.nb_digits) + usize::from(self.signed)
    }

    /// The largest magnitude the digits hold (`base^nb_digits - 1`), saturated at `u128::MAX`.
    pub fn max_magnitude(&self) -> u128 {
        let mut limit: u128 = 1;
        for _ in 0..self.nb_digits {
            match limit.checked_mul(u128::from(self.base)) {
                Some(l) => limit = l,
                None => return u128::MAX,
            }
        }
        limit - 1
    }

    /// The value after clamping, as the spec says, to what the digits hold.
    pub fn clamp(&self, value: i64) -> i64 {
        let max = self.max_magnitude();
        let magnitude = u128::from(value.unsigned_abs()).min(max);
        if value < 0 {
            if !self.signed {
                return 0;
            }
            // magnitude <= |i64::MIN|, so the negation fits.
            i64::try_from(-(magnitude as i128)).unwrap_or(i64::MIN)
        } else {
            i64::try_from(magnitude).unwrap_or(i64::MAX)
        }
    }

    /// The outcomes to attest for `value` (clamped first): the sign if signed, then every digit.
    pub fn decompose(&self, value: i64) -> Vec<String> {
        let value = self.clamp(value);
        let mut out = Vec::with_capacity(self.nonce_count());
        if self.signed {
            out.push(if value < 0 { "-" } else { "+" }.to_owned());
        }
        let mut magnitude = u128::from(value.unsigned_abs());
        let base = u128::from(self.base);
        let mut digits = vec![0u16; usize::from(self.nb_digits)];
        for d in digits.iter_mut().rev() {
            // The remainder is below base, which fits u16.
            *d = u16::try_from(magnitude % base).unwrap_or(0);
            magnitude /= base;
        }
        out.extend(digits.iter().map(u16::to_string));
        out
    }

    /// The value that `outcomes` attest (the inverse of [`decompose`](Self::decompose)).
    pub fn compose(&self, outcomes: &[String]) -> Result<i64, DigitsError> {
        if outcomes.len() != self.nonce_count() {
            return Err(DigitsError::Count {
                expected: self.nonce_count(),
                found: outcomes.len(),
            });
        }
        let (negative, digits) = if self.signed {
            match outcomes[0].as_str() {
                "+" => (false, &outcomes[1..]),
                "-" => (true, &outcomes[1..]),
                other => {
                    return Err(DigitsError::NotADigit {
                        index: 0,
                        outcome: other.to_owned(),
                    })
                }
            }
        } else {
            (false, outcomes)
        };
        let offset = usize::from(self.signed);
        let mut magnitude: i128 = 0;
        for (i, o) in digits.iter().enumerate() {
            let not_a_digit = || DigitsError::NotADigit {
                index: i + offset,
                outcome: o.clone(),
            };
            // Only the canonical decimal form: no sign, no leading zero.
            if o.is_empty() || (o.len() > 1 && o.starts_with('0')) || !o.bytes().all(|b| b.is_ascii_digit()) {
                return Err(not_a_digit());
            }
            let d: u16 = o.parse().map_err(|_| not_a_digit())?;
            if d >= self.base {
                return Err(not_a_digit());
            }
            magnitude = magnitude
                .checked_mul(i128::from(self.base))
                .and_then(|m| m.checked_add(i128::from(d)))
                .filter(|m| *m <= i128::from(i64::MAX) + 1)
                .ok_or_else(not_a_digit)?;
        }
        let value = if negative { -magnitude } else { magnitude };
        i64::try_from(value).map_err(|_| DigitsError::NotADigit {
            index: 0,
            outcome: outcomes[0].clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn base_ten_and_sign() {
        let d = Digits::new(10, 4, true).unwrap();
        assert_eq!(d.decompose(42), ["+", "0", "0", "4", "2"]);
        assert_eq!(d.decompose(-7), ["-", "0", "0", "0", "7"]);
        assert_eq!(d.decompose(0), ["+", "0", "0", "0", "0"]);
    }

    #[test]
    fn out_of_range_clamps() {
        let unsigned = Digits::new(2, 4, false).unwrap();
        assert_eq!(unsigned.decompose(16), ["1", "1", "1", "1"]);
        assert_eq!(unsigned.decompose(-3), ["0", "0", "0", "0"]);
        let signed = Digits::new(10, 2, true).unwrap();
        assert_eq!(signed.decompose(-1000), ["-", "9", "9"]);
        assert_eq!(signed.decompose(i64::MAX), ["+", "9", "9"]);
        let wide = Digits::new(16, 20, true).unwrap();
        assert_eq!(wide.compose(&wide.decompose(i64::MIN)).unwrap(), i64::MIN);
    }

    #[test]
    fn bad_layouts_and_digits() {
        assert_eq!(Digits::new(1, 4, false), Err(DigitsError::Base(1)));
        assert_eq!(Digits::new(2, 0, false), Err(DigitsError::DigitCount(0)));
        let d = Digits::new(10, 2, false).unwrap();
        for bad in [["1", "a"], ["1", "10"], ["1", "01"], ["1", "-1"], ["1", ""]] {
            let bad: Vec<String> = bad.iter().map(|s| (*s).to_owned()).collect();
            assert!(
                matches!(d.compose(&bad), Err(DigitsError::NotADigit { index: 1, .. })),
                "{bad:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn decompose_compose_round_trip(base in 2u16..=300, nb in 1u16..=40, signed: bool, value: i64) {
            let d = Digits::new(base, nb, signed).unwrap();
            let outcomes = d.decompose(value);
            prop_assert_eq!(outcomes.len(), d.nonce_count());
            prop_assert_eq!(d.compose(&outcomes).unwrap(), d.clamp(value));
        }
    }
}
