//! Rank fusion over many ranked lists in one call: reciprocal-rank fusion and normalised weighted-score fusion.
//!
//! Results are sorted by fused score, best first, ties broken by id, so the output does not depend on the
//! order of the input lists (for equal weights).

use rustc_hash::FxHashMap;

use crate::error::{invalid, Result};

fn check_weights(weights: Option<&[f64]>, lists: usize) -> Result<()> {
    if let Some(w) = weights {
        if w.len() != lists {
            return Err(invalid(format!("got {} weights for {lists} lists; pass one weight per list", w.len())));
        }
        if let Some(bad) = w.iter().find(|x| !x.is_finite() || **x < 0.0) {
            return Err(invalid(format!("weights must be finite and >= 0 (got {bad})")));
        }
    }
    Ok(())
}

/// Sum each id's contributions in sorted order, so the total (to the last bit) does not depend on the order of
/// the input lists, then rank.
fn ranked(contributions: FxHashMap<&str, Vec<f64>>, top_k: usize) -> Vec<(String, f64)> {
    let mut out: Vec<(&str, f64)> = contributions
        .into_iter()
        .map(|(id, mut parts)| {
            parts.sort_unstable_by(f64::total_cmp);
            (id, parts.iter().sum())
        })
        .collect();
    out.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    out.truncate(top_k);
    out.into_iter().map(|(id, score)| (id.to_string(), score)).collect()
}

/// Reciprocal-rank fusion: `score(d) = sum_i w_i / (k + rank_i(d))`, ranks from 1; an id repeated within a
/// list counts at its first (best) rank. `k` must be finite and >= 0 (60 is the usual choice).
pub fn reciprocal_rank_fusion<S: AsRef<str>>(
    lists: &[Vec<S>],
    k: f64,
    weights: Option<&[f64]>,
    top_k: usize,
) -> Result<Vec<(String, f64)>> {
    if !(k.is_finite() && k >= 0.0) {
        return Err(invalid(format!("k must be finite and >= 0 (got {k})")));
    }
    check_weights(weights, lists.len())?;
    let max_weight = weights.map_or(1.0, |w| w.iter().copied().fold(0.0, f64::max));
    if max_weight / (k + 1.0) > 1e12 {
        return Err(invalid(format!("weights up to {max_weight} are too large for k = {k}; scale them down")));
    }
    // Contributions are summed in fixed point (integer addition is associative), so a fused score does not
    // depend on the order of the lists, to the last bit, without keeping every contribution.
    let mut scores: FxHashMap<&str, i128> = FxHashMap::default();
    let mut seen: FxHashMap<&str, ()> = FxHashMap::default();
    for (i, list) in lists.iter().enumerate() {
        let weight = weights.map_or(1.0, |w| w[i]);
        seen.clear();
        for (rank, id) in list.iter().enumerate() {
            let id = id.as_ref();
            if seen.insert(id, ()).is_some() {
                continue;
            }
            *scores.entry(id).or_insert(0) += to_fixed(weight / (k + rank as f64 + 1.0));
        }
    }
    let mut out: Vec<(&str, i128)> = scores.into_iter().collect();
    out.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    out.truncate(top_k);
    Ok(out.into_iter().map(|(id, fixed)| (id.to_string(), from_fixed(fixed))).collect())
}

/// 2^64 units per 1.0: RRF terms (at most `max weight / k`) keep ~19 significant digits.
const FIXED_SCALE: f64 = 18_446_744_073_709_551_616.0;

fn to_fixed(value: f64) -> i128 {
    (value * FIXED_SCALE).round() as i128
}

fn from_fixed(value: i128) -> f64 {
    value as f64 / FIXED_SCALE
}

/// How scores are normalised within each list before weighting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normalization {
    /// `(s - min) / (max - min)`; a list whose scores are all equal maps to 1.0.
    MinMax,
    /// `(s - mean) / std`; a list with zero spread maps to 0.0.
    ZScore,
    /// Raw scores.
    None,
}

impl Normalization {
    /// Parse `minmax`, `zscore` or `none`.
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_lowercase().as_str() {
            "minmax" | "min-max" | "min_max" => Ok(Normalization::MinMax),
            "zscore" | "z-score" | "z_score" => Ok(Normalization::ZScore),
            "none" => Ok(Normalization::None),
            _ => Err(invalid(format!("unknown normalization {name:?}; use minmax, zscore or none"))),
        }
    }
}

/// Weighted-score fusion: each list's scores are normalised, multiplied by the list's weight and summed per id
/// (an id missing from a list contributes nothing). An id repeated within a list keeps its highest score.
pub fn weighted_score_fusion<S: AsRef<str>>(
    lists: &[Vec<(S, f64)>],
    weights: Option<&[f64]>,
    normalization: Normalization,
    top_k: usize,
) -> Result<Vec<(String, f64)>> {
    check_weights(weights, lists.len())?;
    let mut scores: FxHashMap<&str, Vec<f64>> = FxHashMap::default();
    for (i, list) in lists.iter().enumerate() {
        let mut best: FxHashMap<&str, f64> = FxHashMap::default();
        for (id, score) in list {
            if !score.is_finite() {
                return Err(invalid(format!("list {i} has a non-finite score for id {:?}", id.as_ref())));
            }
            let slot = best.entry(id.as_ref()).or_insert(f64::NEG_INFINITY);
            *slot = slot.max(*score);
        }
        if best.is_empty() {
            continue;
        }
        let values: Vec<f64> = best.values().copied().collect();
        let n = values.len() as f64;
        let (min, max) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let mean = values.iter().sum::<f64>() / n;
        let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        let weight = weights.map_or(1.0, |w| w[i]);
        for (id, score) in best {
            let normalised = match normalization {
                Normalization::MinMax if max > min => (score - min) / (max - min),
                Normalization::MinMax => 1.0,
                // all-equal scores have zero spread, however the rounding of the mean falls
                Normalization::ZScore if max > min && std > 0.0 => (score - mean) / std,
                Normalization::ZScore => 0.0,
                Normalization::None => score,
            };
            scores.entry(id).or_default().push(weight * normalised);
        }
    }
    Ok(ranked(scores, top_k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rrf_matches_hand_computation() {
        let lists = vec![vec!["a", "b", "c"], vec!["b", "a", "d"]];
        let fused = reciprocal_rank_fusion(&lists, 60.0, None, 10).unwrap();
        assert_eq!(fused[0].0, "a"); // tie with b broken by id
        assert!((fused[0].1 - (1.0 / 61.0 + 1.0 / 62.0)).abs() < 1e-12);
        assert_eq!(fused.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), vec!["a", "b", "c", "d"]);
    }

    #[test]
    fn rrf_is_order_invariant_and_weighted() {
        let a = vec![vec!["x", "y"], vec!["y", "z"]];
        let b = vec![vec!["y", "z"], vec!["x", "y"]];
        assert_eq!(reciprocal_rank_fusion(&a, 60.0, None, 10).unwrap(), reciprocal_rank_fusion(&b, 60.0, None, 10).unwrap());
        let weighted = reciprocal_rank_fusion(&a, 0.0, Some(&[0.0, 1.0]), 10).unwrap();
        assert_eq!(weighted[0], ("y".to_string(), 1.0));
        assert!(reciprocal_rank_fusion(&a, 60.0, Some(&[1.0]), 10).is_err());
    }

    #[test]
    fn weighted_minmax() {
        let lists = vec![vec![("a", 10.0), ("b", 5.0), ("c", 0.0)], vec![("c", 0.9), ("a", 0.1)]];
        let fused = weighted_score_fusion(&lists, Some(&[1.0, 2.0]), Normalization::MinMax, 10).unwrap();
        assert_eq!(fused[0], ("c".to_string(), 2.0));
        assert_eq!(fused[1], ("a".to_string(), 1.0));
        assert_eq!(fused[2], ("b".to_string(), 0.5));
        let nan = vec![vec![("a", f64::NAN)]];
        assert!(weighted_score_fusion(&nan, None, Normalization::None, 10).is_err());
    }
}
