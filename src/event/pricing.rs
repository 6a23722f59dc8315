//! List prices and the cost budget: what a session's tokens cost at the model's list price,
//! and the rules a `budget` (the Managed Agents API's `max_list_cost`) follows. No I/O.
//!
//! Prices are written as the provider publishes them, US dollars per million tokens, as decimal
//! strings (`"3"`, `"0.30"`, `"3.75"`), and computed with exactly, in nano-dollars per token
//! (`$3 / MTok` = 3,000 n$ per token), so a session's cost is an integer sum that every reader
//! of the log computes the same way. A budget's amount is in the currency's minor units (US
//! cents) as an integer string, as in the API.
//!
//! The front door resolves the session model's prices from the [`PriceTable`] (the built-in
//! [`BUILTIN_PRICES`], overridden by the operator's `[prices]` in `herd.toml`) and records them
//! in the budget itself ([`Budget::list_prices`]): every brain then counts a session's spend at
//! the same prices, whatever table it was started with, and the log alone says what a session
//! spent (DESIGN rule 1).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Usage;
use super::config::ConfigError;

/// The only budget type the API defines.
pub const BUDGET_TYPE: &str = "limit";
/// The only currency the API defines.
pub const BUDGET_CURRENCY: &str = "USD";
/// Nano-dollars in one US cent.
pub const NANO_USD_PER_CENT: u128 = 10_000_000;

/// The built-in list prices, US dollars per million tokens: `(model, input, output, cache
/// write, cache read)`. Anthropic's published prices for its current models (cache write is
/// the 5-minute write, 1.25 × input; the long-context surcharge of some models past 200K input
/// tokens is not modelled). A model id matches its entry exactly, or with a date (`-20250929`)
/// or `-latest` after it, never by a shorter prefix: a newer version (`claude-opus-4-7`) is
/// not silently priced as an older one. Operators add or override models in `herd.toml`.
pub const BUILTIN_PRICES: &[(&str, &str, &str, &str, &str)] = &[
    ("claude-opus-4-5", "5", "25", "6.25", "0.50"),
    ("claude-opus-4-1", "15", "75", "18.75", "1.50"),
    ("claude-opus-4", "15", "75", "18.75", "1.50"),
    ("claude-sonnet-4-5", "3", "15", "3.75", "0.30"),
    ("claude-sonnet-4", "3", "15", "3.75", "0.30"),
    ("claude-3-7-sonnet", "3", "15", "3.75", "0.30"),
    ("claude-haiku-4-5", "1", "5", "1.25", "0.10"),
    ("claude-3-5-haiku", "0.80", "4", "1", "0.08"),
    ("claude-3-haiku", "0.25", "1.25", "0.30", "0.03"),
];

/// A model's list prices, US dollars per million tokens, as decimal strings (at most three
/// decimals: a tenth of a cent per million tokens).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListPrices {
    /// Input tokens not read from or written to the prompt cache.
    pub input: String,
    /// Output tokens.
    pub output: String,
    /// Input tokens written to the prompt cache.
    pub cache_creation: String,
    /// Input tokens read from the prompt cache.
    pub cache_read: String,
}

/// Prices in nano-dollars per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rates {
    /// Per input token.
    pub input: u64,
    /// Per output token.
    pub output: u64,
    /// Per token written to the cache.
    pub cache_creation: u64,
    /// Per token read from the cache.
    pub cache_read: u64,
}

impl Rates {
    /// What `usage` costs, in nano-dollars.
    pub fn cost(&self, usage: &Usage) -> u128 {
        let at = |tokens: u64, rate: u64| tokens as u128 * rate as u128;
        at(usage.input_tokens, self.input)
            + at(usage.output_tokens, self.output)
            + at(usage.cache_creation_input_tokens, self.cache_creation)
            + at(usage.cache_read_input_tokens, self.cache_read)
    }
}

/// `"3.75"` US dollars per million tokens → 3,750 nano-dollars per token.
pub fn parse_usd_per_mtok(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "price {s:?} is not a number of US dollars per million tokens such as \"3\" or \"0.30\" (at most three decimals)"
        )
    };
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |p: &str| p.chars().all(|c| c.is_ascii_digit());
    if whole.is_empty() || whole.len() > 9 || !digits(whole) || frac.len() > 3 || !digits(frac) {
        return Err(bad());
    }
    if s.contains('.') && frac.is_empty() {
        return Err(bad());
    }
    let whole: u64 = whole.parse().map_err(|_| bad())?;
    let frac: u64 = format!("{frac:0<3}").parse().map_err(|_| bad())?;
    Ok(whole * 1000 + frac)
}

impl ListPrices {
    /// Prices from four decimal strings.
    pub fn new(input: &str, output: &str, cache_creation: &str, cache_read: &str) -> Self {
        Self {
            input: input.into(),
            output: output.into(),
            cache_creation: cache_creation.into(),
            cache_read: cache_read.into(),
        }
    }

    /// The prices in nano-dollars per token; an error names the malformed one.
    pub fn rates(&self) -> Result<Rates, String> {
        Ok(Rates {
            input: parse_usd_per_mtok(&self.input).map_err(|e| format!("input: {e}"))?,
            output: parse_usd_per_mtok(&self.output).map_err(|e| format!("output: {e}"))?,
            cache_creation: parse_usd_per_mtok(&self.cache_creation)
                .map_err(|e| format!("cache_creation: {e}"))?,
            cache_read: parse_usd_per_mtok(&self.cache_read)
                .map_err(|e| format!("cache_read: {e}"))?,
        })
    }
}

/// An amount of money in the currency's minor units, as the API writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    /// Minor units (US cents), a non-negative integer as a string.
    pub amount: String,
    /// `USD`.
    pub currency: String,
}

impl Money {
    /// `cents` US cents.
    pub fn usd_cents(cents: u64) -> Self {
        Self {
            amount: cents.to_string(),
            currency: BUDGET_CURRENCY.into(),
        }
    }

    /// A cost in nano-dollars, rounded up to whole cents (so a cost at or past a budget never
    /// reads as under it).
    pub fn from_nano_usd(nano: u128) -> Self {
        Self::usd_cents(cents_ceil(nano))
    }
}

/// Nano-dollars rounded up to whole cents.
pub fn cents_ceil(nano: u128) -> u64 {
    u64::try_from(nano.div_ceil(NANO_USD_PER_CENT)).unwrap_or(u64::MAX)
}

/// `$1.23` for 123 cents.
pub fn format_usd(cents: u64) -> String {
    format!("${}.{:02}", cents / 100, cents % 100)
}

/// A session's cost budget (the Managed Agents API's `budget`): checked before each model
/// request against the list cost of the tokens the session has used; at it, the turn ends
/// with `session.limit_reached` (`max_list_cost`) and `stop_reason: budget_reached`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// `limit`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The most the session may spend, at list prices.
    pub max_list_cost: Money,
    /// herd's addition: the model's prices the budget is counted at, set by the front door
    /// from its price table when the budget is set (never by the client), so every brain
    /// counts the same spend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_prices: Option<ListPrices>,
}

/// Why a budget was refused: the Managed Agents API's reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetRefusal {
    /// A budget may be set only when the session is created; an update may raise or remove
    /// it (removal is for good).
    CreateOnly,
    /// An update may not set the budget below what the session has already spent.
    NotRaised,
    /// herd has no list price for the session's model, so it cannot count a budget.
    ModelNotBudgetable,
}

impl BudgetRefusal {
    /// The reason as the API names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateOnly => "budget_create_only",
            Self::NotRaised => "budget_not_raised",
            Self::ModelNotBudgetable => "model_not_budgetable",
        }
    }
}

impl std::fmt::Display for BudgetRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn refused(reason: BudgetRefusal, detail: String) -> ConfigError {
    ConfigError::Budget { reason, detail }
}

impl Budget {
    /// A budget of `cents` US cents.
    pub fn usd_cents(cents: u64) -> Self {
        Self {
            kind: BUDGET_TYPE.into(),
            max_list_cost: Money::usd_cents(cents),
            list_prices: None,
        }
    }

    /// Checks the budget's shape, strictly: type `limit`, currency `USD`, an amount that is a
    /// non-negative integer string (digits only: no sign, decimal point, spaces or exponent)
    /// that fits 64 bits. Returns the amount in cents.
    pub fn check(&self) -> Result<u64, ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(format!("budget: {m}")));
        if self.kind != BUDGET_TYPE {
            return bad(format!(
                "unknown type {:?}; the only budget type is \"limit\"",
                self.kind
            ));
        }
        let m = &self.max_list_cost;
        if m.currency != BUDGET_CURRENCY {
            return bad(format!(
                "max_list_cost.currency {:?}: the only currency is \"USD\"",
                m.currency
            ));
        }
        let digits = !m.amount.is_empty() && m.amount.chars().all(|c| c.is_ascii_digit());
        match m.amount.parse::<u64>() {
            Ok(cents) if digits && m.amount.len() <= 18 => Ok(cents),
            _ => bad(format!(
                "max_list_cost.amount {:?} is not a whole number of US cents written as a string of digits, such as \"500\" for $5.00",
                m.amount
            )),
        }
    }

    /// The amount in cents, or 0 for a malformed one (a budget herd cannot read allows
    /// nothing: it fails closed).
    pub fn max_cents(&self) -> u64 {
        self.check().unwrap_or(0)
    }

    /// The prices the budget is counted at, when recorded and well-formed.
    pub fn rates(&self) -> Option<Rates> {
        self.list_prices.as_ref().and_then(|p| p.rates().ok())
    }
}

/// The list prices a deployment knows, by model id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceTable {
    models: BTreeMap<String, ListPrices>,
}

impl Default for PriceTable {
    /// The built-in table.
    fn default() -> Self {
        Self {
            models: BUILTIN_PRICES
                .iter()
                .map(|(m, i, o, w, r)| (m.to_string(), ListPrices::new(i, o, w, r)))
                .collect(),
        }
    }
}

impl PriceTable {
    /// The built-in table with the operator's entries added or replacing built-in ones; an
    /// error names a malformed price.
    pub fn with_overrides(
        overrides: impl IntoIterator<Item = (String, ListPrices)>,
    ) -> Result<Self, ConfigError> {
        let mut table = Self::default();
        for (model, prices) in overrides {
            prices
                .rates()
                .map_err(|e| ConfigError::Invalid(format!("prices of {model:?}: {e}")))?;
            table.models.insert(model, prices);
        }
        Ok(table)
    }

    /// The prices of `model`: its entry, matched exactly or with a date or `-latest` suffix.
    pub fn lookup(&self, model: &str) -> Option<&ListPrices> {
        if let Some(p) = self.models.get(model) {
            return Some(p);
        }
        let (base, suffix) = model.rsplit_once('-')?;
        let dated = suffix.len() == 8 && suffix.chars().all(|c| c.is_ascii_digit());
        if dated || suffix == "latest" {
            self.models.get(base)
        } else {
            None
        }
    }

    /// A budget set when a session is created: well-formed, set by the client without prices,
    /// and for a model this table prices. Records the prices in it.
    pub fn price_new_budget(&self, model: &str, budget: &mut Budget) -> Result<(), ConfigError> {
        budget.check()?;
        if budget.list_prices.is_some() {
            return Err(ConfigError::Invalid(
                "budget: list_prices is herd's to set, from the deployment's price table".into(),
            ));
        }
        let prices = self.lookup(model).ok_or_else(|| {
            refused(
                BudgetRefusal::ModelNotBudgetable,
                format!(
                    "herd has no list price for the model {model:?}, so it cannot count a budget; the operator can add one under [prices] in herd.toml"
                ),
            )
        })?;
        budget.list_prices = Some(prices.clone());
        Ok(())
    }

    /// The budget after an update that sets it to `new` (`None` removes it), from `current`,
    /// when the session has spent `spent_nano` nano-dollars. A session without a budget cannot
    /// get one (`budget_create_only`: a budget is set at creation, and removing it is for
    /// good); a new budget below the spend is refused (`budget_not_raised`); the new budget is
    /// counted at the prices of the current one.
    pub fn update_budget(
        &self,
        model: &str,
        current: Option<&Budget>,
        new: Option<Budget>,
        spent_nano: u128,
    ) -> Result<Option<Budget>, ConfigError> {
        let Some(mut new) = new else {
            return Ok(None);
        };
        let cents = new.check()?;
        if new.list_prices.is_some() {
            return Err(ConfigError::Invalid(
                "budget: list_prices is herd's to set, from the deployment's price table".into(),
            ));
        }
        let Some(current) = current else {
            return Err(refused(
                BudgetRefusal::CreateOnly,
                "this session has no budget: a budget is set when a session is created, and removing one is for good".into(),
            ));
        };
        if (cents as u128) * NANO_USD_PER_CENT < spent_nano {
            return Err(refused(
                BudgetRefusal::NotRaised,
                format!(
                    "the new budget ({}) is below what the session has already spent ({})",
                    format_usd(cents),
                    format_usd(cents_ceil(spent_nano))
                ),
            ));
        }
        let prices = match &current.list_prices {
            Some(p) => p.clone(),
            None => self.lookup(model).cloned().ok_or_else(|| {
                refused(
                    BudgetRefusal::ModelNotBudgetable,
                    format!("herd has no list price for the model {model:?}"),
                )
            })?,
        };
        new.list_prices = Some(prices);
        Ok(Some(new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_parse_exactly_and_malformed_ones_are_named() {
        assert_eq!(parse_usd_per_mtok("3"), Ok(3_000));
        assert_eq!(parse_usd_per_mtok("0.30"), Ok(300));
        assert_eq!(parse_usd_per_mtok("18.75"), Ok(18_750));
        assert_eq!(parse_usd_per_mtok("0.125"), Ok(125));
        for bad in ["", "-1", "1.", ".5", "1.2345", "1e3", " 3", "3$", "1,5"] {
            assert!(parse_usd_per_mtok(bad).is_err(), "{bad:?}");
        }
        let err = ListPrices::new("3", "x", "1", "1").rates().unwrap_err();
        assert!(err.starts_with("output:"), "{err}");
    }

    #[test]
    fn a_cost_is_the_exact_sum_of_each_kind_of_token_at_its_price() {
        let rates = PriceTable::default()
            .lookup("claude-sonnet-4-5")
            .unwrap()
            .rates()
            .unwrap();
        let usage = Usage {
            input_tokens: 1_000_000,
            output_tokens: 100_000,
            cache_creation_input_tokens: 10_000,
            cache_read_input_tokens: 1_000_000,
        };
        // $3 + $1.50 + $0.0375 + $0.30 = $4.8375 → 484 cents, rounded up.
        let nano = rates.cost(&usage);
        assert_eq!(nano, 4_837_500_000);
        assert_eq!(cents_ceil(nano), 484);
        assert_eq!(cents_ceil(0), 0);
        assert_eq!(cents_ceil(1), 1);
        assert_eq!(format_usd(484), "$4.84");
    }

    #[test]
    fn models_match_exactly_or_with_a_date_never_by_a_shorter_prefix() {
        let t = PriceTable::default();
        assert!(t.lookup("claude-sonnet-4-5").is_some());
        assert!(t.lookup("claude-sonnet-4-5-20250929").is_some());
        assert!(t.lookup("claude-3-7-sonnet-latest").is_some());
        assert_eq!(t.lookup("claude-opus-4-1-20250805").unwrap().input, "15");
        assert_eq!(t.lookup("claude-opus-4-5").unwrap().input, "5");
        assert!(
            t.lookup("claude-opus-4-7").is_none(),
            "no silent prefix match"
        );
        assert!(t.lookup("gpt-4o").is_none());
        assert!(t.lookup("scripted").is_none());
        let t = PriceTable::with_overrides([(
            "scripted".into(),
            ListPrices::new("1", "2", "1", "0.1"),
        )])
        .unwrap();
        assert_eq!(t.lookup("scripted").unwrap().output, "2");
        assert!(
            PriceTable::with_overrides([("m".into(), ListPrices::new("1", "-2", "1", "1"))])
                .unwrap_err()
                .to_string()
                .contains("prices of \"m\": output")
        );
    }

    #[test]
    fn malformed_budgets_are_refused_with_what_is_wrong() {
        let refused = |f: &dyn Fn(&mut Budget)| {
            let mut b = Budget::usd_cents(500);
            f(&mut b);
            b.check().unwrap_err().to_string()
        };
        assert_eq!(Budget::usd_cents(500).check(), Ok(500));
        assert_eq!(Budget::usd_cents(0).check(), Ok(0));
        assert!(refused(&|b| b.kind = "soft".into()).contains("only budget type is \"limit\""));
        assert!(refused(&|b| b.max_list_cost.currency = "EUR".into()).contains("only currency"));
        for amount in [
            "",
            "-5",
            "5.00",
            "1e3",
            " 5",
            "+5",
            "99999999999999999999",
            "five",
        ] {
            let e = refused(&|b| b.max_list_cost.amount = amount.into());
            assert!(
                e.contains("not a whole number of US cents"),
                "{amount:?}: {e}"
            );
        }
    }

    #[test]
    fn a_new_budget_needs_a_priced_model_and_no_prices_from_the_client() {
        let t = PriceTable::default();
        let mut b = Budget::usd_cents(100);
        t.price_new_budget("claude-haiku-4-5", &mut b).unwrap();
        assert_eq!(b.list_prices.as_ref().unwrap().output, "5");
        let mut b = Budget::usd_cents(100);
        let e = t.price_new_budget("llama3", &mut b).unwrap_err();
        assert!(e.to_string().starts_with("model_not_budgetable:"), "{e}");
        let mut b = Budget::usd_cents(100);
        b.list_prices = Some(ListPrices::new("0", "0", "0", "0"));
        assert!(
            t.price_new_budget("claude-haiku-4-5", &mut b)
                .unwrap_err()
                .to_string()
                .contains("herd's to set")
        );
    }

    #[test]
    fn an_update_raises_or_removes_a_budget_never_adds_or_lowers_it_below_the_spend() {
        let t = PriceTable::default();
        let mut current = Budget::usd_cents(100);
        t.price_new_budget("claude-haiku-4-5", &mut current)
            .unwrap();
        let spent = 150 * NANO_USD_PER_CENT - 1; // $1.4999…
        let up = t
            .update_budget(
                "claude-haiku-4-5",
                Some(&current),
                Some(Budget::usd_cents(150)),
                spent,
            )
            .unwrap()
            .unwrap();
        assert_eq!(up.max_cents(), 150);
        assert_eq!(
            up.list_prices, current.list_prices,
            "counted at the same prices"
        );
        // Lowered below the spend: refused, with the reason.
        let e = t
            .update_budget(
                "claude-haiku-4-5",
                Some(&current),
                Some(Budget::usd_cents(149)),
                spent,
            )
            .unwrap_err();
        assert!(e.to_string().starts_with("budget_not_raised:"), "{e}");
        assert!(e.to_string().contains("$1.50"), "{e}");
        // Removed: fine, and for good.
        assert_eq!(
            t.update_budget("claude-haiku-4-5", Some(&current), None, spent),
            Ok(None)
        );
        let e = t
            .update_budget("claude-haiku-4-5", None, Some(Budget::usd_cents(500)), 0)
            .unwrap_err();
        assert!(e.to_string().starts_with("budget_create_only:"), "{e}");
        // A malformed one is refused before anything else.
        let mut bad = Budget::usd_cents(5);
        bad.max_list_cost.currency = "usd".into();
        assert!(
            t.update_budget("claude-haiku-4-5", Some(&current), Some(bad), 0)
                .is_err()
        );
    }
}
