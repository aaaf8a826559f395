//! "Did you mean …?": the closest known spelling of a misspelt word.

/// The candidate closest to `word`, if one is close enough to be what was meant:
/// at most a third of its characters differ (one for short words), counting a swap
/// of two neighbours as one edit.
///
/// ```
/// use plugbay_manifest::closest;
///
/// assert_eq!(closest("proces", ["init", "process", "cleanup"]), Some("process"));
/// assert_eq!(closest("shutdown", ["init", "process", "cleanup"]), None);
/// ```
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lowercase = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .filter(|candidate| *candidate != word)
        .map(|candidate| {
            (
                strsim::damerau_levenshtein(&lowercase, &candidate.to_ascii_lowercase()),
                candidate,
            )
        })
        .filter(|(distance, candidate)| {
            let longest = lowercase.chars().count().max(candidate.chars().count());
            *distance <= (longest / 3).max(1)
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// What follows "unknown thing `x`": `; did you mean `y`? expected one of …`, or
/// `; expected one of …` when nothing known is close.
pub(crate) fn expected(suggestion: Option<&str>, known: &str) -> String {
    match suggestion {
        Some(suggestion) => format!("; did you mean `{suggestion}`? expected one of {known}"),
        None => format!("; expected one of {known}"),
    }
}

#[cfg(test)]
mod tests {
    use super::closest;

    #[test]
    fn near_misses_are_found_and_strangers_are_not() {
        let hooks = ["init", "process", "cleanup"];
        assert_eq!(closest("proccess", hooks), Some("process"));
        assert_eq!(closest("Init", hooks), Some("init"));
        assert_eq!(closest("clenaup", hooks), Some("cleanup"));
        assert_eq!(
            closest("process", hooks),
            None,
            "an exact match needs no hint"
        );
        assert_eq!(closest("start", hooks), None);
        assert_eq!(closest("", hooks), None);
    }
}
