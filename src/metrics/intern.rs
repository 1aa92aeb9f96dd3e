//! Label values as `&'static str`: each distinct route template or tag is kept once, so a
//! series is found without allocating. Their number is bounded (past the bound, one fixed
//! value stands for the rest), so a flood of new values cannot grow memory or series.

use std::collections::HashSet;
use std::sync::{LazyLock, RwLock};

struct Interned {
    values: RwLock<HashSet<&'static str>>,
    max: usize,
    other: &'static str,
}

impl Interned {
    fn new(max: usize, other: &'static str) -> Self {
        Self {
            values: RwLock::new(HashSet::new()),
            max,
            other,
        }
    }

    fn get(&self, value: &str) -> &'static str {
        if let Some(known) = self.values.read().expect("label lock").get(value) {
            return known;
        }
        let mut values = self.values.write().expect("label lock");
        if let Some(known) = values.get(value) {
            return known;
        }
        if values.len() >= self.max {
            return self.other;
        }
        let kept: &'static str = Box::leak(value.to_owned().into_boxed_str());
        values.insert(kept);
        kept
    }
}

/// Route templates come from the router (about a hundred).
static ROUTES: LazyLock<Interned> = LazyLock::new(|| Interned::new(512, "other"));
/// Tags are the operator's (`WORKER_TAGS`), and a job's tag must have a consumer.
static TAGS: LazyLock<Interned> = LazyLock::new(|| Interned::new(256, "other"));

/// The `route` label of a matched route template.
pub fn route_label(template: &str) -> &'static str {
    ROUTES.get(template)
}

/// The `tag` label of a job's tag.
pub fn tag_label(tag: &str) -> &'static str {
    TAGS.get(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_kept_once_and_bounded() {
        let labels = Interned::new(2, "other");
        let a = labels.get("a");
        assert!(std::ptr::eq(a, labels.get(&String::from("a"))));
        assert_eq!(labels.get("b"), "b");
        assert_eq!(labels.get("c"), "other");
        assert_eq!(labels.get("a"), "a");
    }
}
