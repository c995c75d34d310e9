//! The 1000 ImageNet-1k class names, in torchvision's index order, shipped with the binary.

use std::sync::OnceLock;

/// Number of ImageNet-1k classes both networks predict.
pub const NUM_CLASSES: usize = 1000;

const RAW: &str = include_str!("../data/imagenet_classes.txt");

/// All class names; index `i` is the label of logit `i`.
pub fn labels() -> &'static [&'static str] {
    static LABELS: OnceLock<Vec<&'static str>> = OnceLock::new();
    LABELS.get_or_init(|| RAW.lines().map(str::trim).collect())
}

/// The name of class `index`, or `"?"` for an index outside 0..1000.
pub fn label(index: usize) -> &'static str {
    labels().get(index).copied().unwrap_or("?")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_label_per_class() {
        assert_eq!(labels().len(), NUM_CLASSES);
        assert!(labels().iter().all(|l| !l.is_empty()));
        assert_eq!(label(0), "tench");
        assert_eq!(label(281), "tabby");
        assert_eq!(label(999), "toilet tissue");
        assert_eq!(label(1000), "?");
    }
}
