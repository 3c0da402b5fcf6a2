//! QoS classes and which requests belong to which (ITU-T Y.3818 clause 7, policy-based
//! control): the policy as operators configure it, checked whole before it is used.

use std::collections::BTreeMap;

/// Lowest and highest priority of a class (higher is served first).
pub const PRIORITY_RANGE: std::ops::RangeInclusive<u8> = 1..=100;

/// A quota: at most `bits` of key per `period_seconds` (fixed windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Key bits the class may receive in one period.
    pub bits: u64,
    /// The period's length in seconds.
    pub period_seconds: u32,
}

/// One QoS class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassSpec {
    /// The class's name.
    pub name: String,
    /// Higher is served first; also the class's weight when link key beyond the guarantees
    /// is shared.
    pub priority: u8,
    /// Key rate (bit/s) the class gets on a link whenever it asks for at least that much.
    pub guaranteed_bps: u64,
    /// Key rate (bit/s) the class never exceeds on a link; `None`: no maximum.
    pub max_bps: Option<u64>,
    /// Key the class may receive at this KM per period; `None`: no quota.
    pub quota: Option<Quota>,
}

/// The QoS policy of a KM (or a controller's admission): classes, which SAE pairs and peer
/// domains belong to which, and the class of everything else. An empty policy (no classes)
/// switches QoS off: requests are served in arrival order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QosPolicy {
    /// Classes by name.
    pub classes: BTreeMap<String, ClassSpec>,
    /// Application pairs (two SAE IDs, sorted) and their class; the order of master and
    /// slave does not matter.
    pub pairs: BTreeMap<(String, String), String>,
    /// Peer QKDNs and their class: requests for or from an SAE of that domain.
    pub domains: BTreeMap<String, String>,
    /// The class of requests no pair or domain entry names; required when classes exist.
    pub default_class: Option<String>,
}

/// Why a policy cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("class {class}: priority must be between 1 and 100")]
    Priority { class: String },
    #[error(
        "class {class}: maximum rate {max} bit/s is below its guaranteed rate {guaranteed} bit/s"
    )]
    MaxBelowGuarantee {
        class: String,
        max: u64,
        guaranteed: u64,
    },
    #[error("class {class}: a quota needs a positive number of bits and a positive period")]
    Quota { class: String },
    #[error("{what} names class {class}, which is not configured")]
    UnknownClass { what: String, class: String },
    #[error("QoS classes are configured but no default class: name one")]
    NoDefault,
    #[error("application pair {0} / {0}: the two SAEs must differ")]
    SamePair(String),
}

impl QosPolicy {
    /// Whether the policy switches QoS on.
    pub fn is_active(&self) -> bool {
        !self.classes.is_empty()
    }

    /// The sorted key of an application pair.
    pub fn pair_key(a: &str, b: &str) -> (String, String) {
        if a <= b {
            (a.to_owned(), b.to_owned())
        } else {
            (b.to_owned(), a.to_owned())
        }
    }

    /// Checks the policy whole.
    pub fn validate(&self) -> Result<(), PolicyError> {
        for class in self.classes.values() {
            if !PRIORITY_RANGE.contains(&class.priority) {
                return Err(PolicyError::Priority {
                    class: class.name.clone(),
                });
            }
            if let Some(max) = class.max_bps {
                if max < class.guaranteed_bps {
                    return Err(PolicyError::MaxBelowGuarantee {
                        class: class.name.clone(),
                        max,
                        guaranteed: class.guaranteed_bps,
                    });
                }
            }
            if class
                .quota
                .is_some_and(|q| q.bits == 0 || q.period_seconds == 0)
            {
                return Err(PolicyError::Quota {
                    class: class.name.clone(),
                });
            }
        }
        let unknown = |what: String, class: &String| PolicyError::UnknownClass {
            what,
            class: class.clone(),
        };
        for ((a, b), class) in &self.pairs {
            if a == b {
                return Err(PolicyError::SamePair(a.clone()));
            }
            if !self.classes.contains_key(class) {
                return Err(unknown(format!("application pair {a} / {b}"), class));
            }
        }
        for (domain, class) in &self.domains {
            if !self.classes.contains_key(class) {
                return Err(unknown(format!("peer domain {domain}"), class));
            }
        }
        match &self.default_class {
            Some(class) if !self.classes.contains_key(class) => {
                Err(unknown("default-class".into(), class))
            }
            None if self.is_active() => Err(PolicyError::NoDefault),
            _ => Ok(()),
        }
    }

    /// The class of a request of `master` for `slave`: the pair's, else the class of the
    /// peer domain either SAE belongs to (`domain_of`), else the default; `None` when QoS is
    /// off.
    pub fn class_of(
        &self,
        master: &str,
        slave: &str,
        domain_of: impl Fn(&str) -> Option<String>,
    ) -> Option<&ClassSpec> {
        if !self.is_active() {
            return None;
        }
        let name = self
            .pairs
            .get(&Self::pair_key(master, slave))
            .or_else(|| {
                [master, slave]
                    .into_iter()
                    .filter_map(&domain_of)
                    .find_map(|d| self.domains.get(&d))
            })
            .or(self.default_class.as_ref())?;
        self.classes.get(name)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn class(name: &str, priority: u8, guaranteed: u64, max: Option<u64>) -> ClassSpec {
        ClassSpec {
            name: name.into(),
            priority,
            guaranteed_bps: guaranteed,
            max_bps: max,
            quota: None,
        }
    }

    fn policy() -> QosPolicy {
        let mut p = QosPolicy::default();
        p.classes
            .insert("gold".into(), class("gold", 10, 1000, None));
        p.classes
            .insert("bronze".into(), class("bronze", 1, 0, Some(500)));
        p.pairs
            .insert(QosPolicy::pair_key("sae-2", "sae-1"), "gold".into());
        p.domains.insert("B".into(), "gold".into());
        p.default_class = Some("bronze".into());
        p
    }

    #[test]
    fn classes_by_pair_then_domain_then_default() {
        let p = policy();
        p.validate().unwrap();
        let none = |_: &str| None;
        assert_eq!(p.class_of("sae-1", "sae-2", none).unwrap().name, "gold");
        assert_eq!(p.class_of("sae-2", "sae-1", none).unwrap().name, "gold");
        assert_eq!(p.class_of("sae-1", "sae-3", none).unwrap().name, "bronze");
        let b = |s: &str| (s == "sae-b1").then(|| "B".to_owned());
        assert_eq!(p.class_of("sae-1", "sae-b1", b).unwrap().name, "gold");
        assert!(QosPolicy::default().class_of("a", "b", none).is_none());
    }

    #[test]
    fn bad_policies_are_refused() {
        let mut p = policy();
        p.default_class = None;
        assert_eq!(p.validate(), Err(PolicyError::NoDefault));
        let mut p = policy();
        p.domains.insert("C".into(), "silver".into());
        assert!(matches!(
            p.validate(),
            Err(PolicyError::UnknownClass { .. })
        ));
        let mut p = policy();
        p.classes.get_mut("bronze").unwrap().guaranteed_bps = 600;
        assert!(matches!(
            p.validate(),
            Err(PolicyError::MaxBelowGuarantee { .. })
        ));
        let mut p = policy();
        p.classes.get_mut("gold").unwrap().priority = 0;
        assert!(matches!(p.validate(), Err(PolicyError::Priority { .. })));
        let mut p = policy();
        p.classes.get_mut("gold").unwrap().quota = Some(Quota {
            bits: 0,
            period_seconds: 60,
        });
        assert!(matches!(p.validate(), Err(PolicyError::Quota { .. })));
    }
}
