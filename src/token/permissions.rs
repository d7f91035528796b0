//! The 64-bit permission bitmap and the names of its bits.
//!
//! Bits 0-15 are the authority's own (`tokens:create` ... `platform:admin`, the rest reserved);
//! bits 16-63 are the deployment's scopes, declared in the config file together with named
//! composites (a name that stands for several bits).

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

/// A set of permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Permissions(u64);

impl Permissions {
    pub const NONE: Permissions = Permissions(0);
    pub const TOKENS_CREATE: Permissions = Permissions(1 << 0);
    pub const TOKENS_REVOKE: Permissions = Permissions(1 << 1);
    pub const TOKENS_READ: Permissions = Permissions(1 << 2);
    pub const TOKENS_ROTATE: Permissions = Permissions(1 << 3);
    pub const AUDIT_READ: Permissions = Permissions(1 << 4);
    /// Acts on every token of its org, not only on the ones its holder created.
    pub const ORG_ADMIN: Permissions = Permissions(1 << 5);
    /// Acts in every org and holds every bit.
    pub const PLATFORM_ADMIN: Permissions = Permissions(1 << 6);
    /// Reads the users of its org.
    pub const USERS_READ: Permissions = Permissions(1 << 7);
    /// Invites, changes, disables and enables the users of its org.
    pub const USERS_MANAGE: Permissions = Permissions(1 << 8);
    /// Follows the org's changes (`WatchChanges`) and reports uses answered from a client's
    /// cache (`ReportUsage`): what the latchkey-client middleware's watch token needs.
    pub const TOKENS_WATCH: Permissions = Permissions(1 << 9);
    /// Every named system bit (0-9): what a bootstrap admin token carries.
    pub const ALL_SYSTEM: Permissions = Permissions(0x3ff);
    /// Bits 10-15: reserved for the authority's future use, never grantable.
    pub const RESERVED: Permissions = Permissions(0xfc00);

    pub const fn from_bits(bits: u64) -> Self {
        Permissions(bits)
    }

    pub const fn bits(self) -> u64 {
        self.0
    }

    pub const fn contains(self, other: Permissions) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn intersects(self, other: Permissions) -> bool {
        self.0 & other.0 != 0
    }

    pub const fn union(self, other: Permissions) -> Permissions {
        Permissions(self.0 | other.0)
    }

    /// The bits of `self` that are not in `other`.
    pub const fn minus(self, other: Permissions) -> Permissions {
        Permissions(self.0 & !other.0)
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// A person's role in its org. What each role may do is decided in `service/` (one place);
/// this is only the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Manages the tokens it owns; may grant the deployment's scopes that are not admin-only.
    Member,
    /// Everything a member may, plus every token and user of its org, its policy and audit log.
    Admin,
}

impl Role {
    /// `member` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }

    /// The role named `s` (exactly `member` or `admin`).
    pub fn from_name(s: &str) -> Option<Role> {
        match s {
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

const SYSTEM_NAMES: [(&str, u32); 10] = [
    ("tokens:create", 0),
    ("tokens:revoke", 1),
    ("tokens:read", 2),
    ("tokens:rotate", 3),
    ("audit:read", 4),
    ("org:admin", 5),
    ("platform:admin", 6),
    ("users:read", 7),
    ("users:manage", 8),
    ("tokens:watch", 9),
];

/// The scopes section of the config file (`--config FILE`, TOML):
///
/// ```toml
/// [[scopes]]
/// name = "runs:read"
/// bit = 16
///
/// [[scopes]]
/// name = "billing:write"
/// bit = 17
/// admin_only = true          # granting it needs org:admin
///
/// [composites]
/// "runs:all" = ["runs:read", "runs:write"]
/// ```
///
/// `default_scopes = ["runs:read"]`, before the first table, names what a person gets from
/// `POST /v1/auth/token` when the request names no scopes (default: none).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeConfig {
    #[serde(default)]
    pub default_scopes: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<ScopeDecl>,
    #[serde(default)]
    pub composites: BTreeMap<String, Vec<String>>,
}

/// One custom scope: a name on one of bits 16-63.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeDecl {
    pub name: String,
    pub bit: u32,
    #[serde(default)]
    pub admin_only: bool,
}

/// Why a requested set of scopes or bits was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("unknown scope {0:?}")]
    UnknownScope(String),
    #[error("permission bits {0:#x} are not assigned to any scope")]
    UnknownBits(u64),
}

/// The names of every bit and composite of this deployment. Built once from config.
#[derive(Debug, Clone)]
pub struct ScopeRegistry {
    by_name: HashMap<String, Permissions>,
    bit_names: Vec<Option<String>>,
    assigned: Permissions,
    admin_only: Permissions,
    default_scopes: Permissions,
}

fn valid_scope_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b':' | b'_' | b'-' | b'.')
        })
}

impl Default for ScopeRegistry {
    fn default() -> Self {
        Self::new(&ScopeConfig::default()).expect("the system scopes are valid")
    }
}

impl ScopeRegistry {
    /// Builds the registry from the config's scopes and composites.
    ///
    /// # Errors
    /// A message naming the offending entry for: a bit outside 16-63, a bit or name used twice,
    /// a name that is not `[a-z][a-z0-9:_.-]*` (at most 64), a composite naming an unknown scope.
    pub fn new(cfg: &ScopeConfig) -> Result<Self, String> {
        let mut by_name = HashMap::new();
        let mut bit_names = vec![None; 64];
        for (name, bit) in SYSTEM_NAMES {
            by_name.insert(name.to_string(), Permissions(1 << bit));
            bit_names[bit as usize] = Some(name.to_string());
        }
        let mut assigned = Permissions::ALL_SYSTEM;
        let mut admin_only = Permissions::NONE;
        for decl in &cfg.scopes {
            if !(16..=63).contains(&decl.bit) {
                return Err(format!(
                    "scope {:?}: bit {} is outside 16-63",
                    decl.name, decl.bit
                ));
            }
            if !valid_scope_name(&decl.name) {
                return Err(format!(
                    "scope name {:?} must match [a-z][a-z0-9:_.-]*",
                    decl.name
                ));
            }
            if by_name.contains_key(&decl.name) {
                return Err(format!("scope name {:?} is declared twice", decl.name));
            }
            let p = Permissions(1 << decl.bit);
            if assigned.intersects(p) {
                return Err(format!("bit {} is declared twice", decl.bit));
            }
            assigned = assigned.union(p);
            if decl.admin_only {
                admin_only = admin_only.union(p);
            }
            by_name.insert(decl.name.clone(), p);
            bit_names[decl.bit as usize] = Some(decl.name.clone());
        }
        for (name, members) in &cfg.composites {
            if !valid_scope_name(name) {
                return Err(format!(
                    "composite name {name:?} must match [a-z][a-z0-9:_.-]*"
                ));
            }
            if by_name.contains_key(name) {
                return Err(format!("composite name {name:?} is already a scope"));
            }
            let mut p = Permissions::NONE;
            for m in members {
                // Composites may only name single scopes, so there are no cycles to worry about.
                let Some(bit) = bit_names.iter().position(|n| n.as_deref() == Some(m)) else {
                    return Err(format!("composite {name:?} names unknown scope {m:?}"));
                };
                p = p.union(Permissions(1 << bit));
            }
            by_name.insert(name.clone(), p);
        }
        let mut registry = Self {
            by_name,
            bit_names,
            assigned,
            admin_only,
            default_scopes: Permissions::NONE,
        };
        registry.default_scopes = registry
            .resolve(&cfg.default_scopes)
            .map_err(|e| format!("default_scopes: {e}"))?;
        Ok(registry)
    }

    /// The bits of `default_scopes`: what a token minted by a password exchange carries when
    /// the request names none.
    pub fn default_scopes(&self) -> Permissions {
        self.default_scopes
    }

    /// The deployment's own scopes (bits 16-63 that config declares), admin-only ones included.
    pub fn custom(&self) -> Permissions {
        self.assigned.minus(Permissions::ALL_SYSTEM)
    }

    /// The bits that the given names (scopes or composites) stand for.
    ///
    /// # Errors
    /// [`ScopeError::UnknownScope`] for the first name that is neither.
    pub fn resolve<S: AsRef<str>>(&self, names: &[S]) -> Result<Permissions, ScopeError> {
        let mut p = Permissions::NONE;
        for n in names {
            let n = n.as_ref();
            let bits = self
                .by_name
                .get(n)
                .ok_or_else(|| ScopeError::UnknownScope(n.to_string()))?;
            p = p.union(*bits);
        }
        Ok(p)
    }

    /// Checks that every bit of `p` has a name in this deployment.
    ///
    /// # Errors
    /// [`ScopeError::UnknownBits`] with the unassigned bits.
    pub fn check_assigned(&self, p: Permissions) -> Result<(), ScopeError> {
        let unknown = p.minus(self.assigned);
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(ScopeError::UnknownBits(unknown.bits()))
        }
    }

    /// The names of the bits set in `p`, lowest bit first. Composites are never listed; a bit
    /// with no name (declared once, then removed from config) shows as `bit:N`.
    pub fn names(&self, p: Permissions) -> Vec<String> {
        (0..64)
            .filter(|b| p.bits() & (1u64 << b) != 0)
            .map(|b| {
                self.bit_names[b]
                    .clone()
                    .unwrap_or_else(|| format!("bit:{b}"))
            })
            .collect()
    }

    /// Every bit with a name in this deployment (the system's and config's).
    pub fn assigned(&self) -> Permissions {
        self.assigned
    }

    /// The scopes that only a holder of `org:admin` may grant.
    pub fn admin_only(&self) -> Permissions {
        self.admin_only
    }
}

/// Why a grant was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantError {
    /// The grantor does not hold these bits itself.
    NotHeld(Permissions),
    /// These admin-only scopes need `org:admin`.
    AdminOnly(Permissions),
}

/// The rule that a grantor hands out only what it holds. `held` is the grantor's effective set
/// (a `platform:admin` holds every bit); admin-only scopes additionally need `org:admin`.
///
/// # Errors
/// [`GrantError`] naming the offending bits.
pub fn check_grant(
    held: Permissions,
    requested: Permissions,
    admin_only: Permissions,
) -> Result<(), GrantError> {
    let missing = requested.minus(held);
    if !missing.is_empty() {
        return Err(GrantError::NotHeld(missing));
    }
    let needs_admin = Permissions(requested.bits() & admin_only.bits());
    if !needs_admin.is_empty() && !held.contains(Permissions::ORG_ADMIN) {
        return Err(GrantError::AdminOnly(needs_admin));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> ScopeRegistry {
        let cfg: ScopeConfig = toml::from_str(
            r#"
            [[scopes]]
            name = "runs:read"
            bit = 16
            [[scopes]]
            name = "runs:write"
            bit = 17
            [[scopes]]
            name = "billing:write"
            bit = 63
            admin_only = true
            [composites]
            "runs:all" = ["runs:read", "runs:write"]
            "#,
        )
        .unwrap();
        ScopeRegistry::new(&cfg).unwrap()
    }

    #[test]
    fn system_names_map_to_their_bits() {
        let r = ScopeRegistry::default();
        assert_eq!(
            r.resolve(&["tokens:create"]).unwrap(),
            Permissions::TOKENS_CREATE
        );
        assert_eq!(r.resolve(&["platform:admin"]).unwrap().bits(), 1 << 6);
        assert_eq!(r.names(Permissions::ALL_SYSTEM).len(), 10);
        assert_eq!(r.resolve(&["users:manage"]).unwrap().bits(), 1 << 8);
        assert_eq!(r.resolve(&["tokens:watch"]).unwrap().bits(), 1 << 9);
        assert_eq!(
            r.names(Permissions::TOKENS_READ.union(Permissions::AUDIT_READ)),
            vec!["tokens:read", "audit:read"]
        );
    }

    #[test]
    fn custom_scopes_and_composites_convert_both_ways() {
        let r = registry();
        let all = r.resolve(&["runs:all"]).unwrap();
        assert_eq!(all.bits(), (1 << 16) | (1 << 17));
        assert_eq!(r.names(all), vec!["runs:read", "runs:write"]);
        let p = r.resolve(&["billing:write", "tokens:read"]).unwrap();
        assert_eq!(p.bits(), (1u64 << 63) | 4);
        assert_eq!(r.resolve(&r.names(p)).unwrap(), p);
        assert_eq!(
            r.resolve(&["nope"]).unwrap_err(),
            ScopeError::UnknownScope("nope".into())
        );
    }

    #[test]
    fn unassigned_and_reserved_bits_are_reported() {
        let r = registry();
        assert!(r.check_assigned(Permissions::from_bits(1 << 16)).is_ok());
        assert_eq!(
            r.check_assigned(Permissions::from_bits((1 << 20) | (1 << 10))),
            Err(ScopeError::UnknownBits((1 << 20) | (1 << 10)))
        );
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let cases = [
            ("[[scopes]]\nname = \"a\"\nbit = 3", "outside 16-63"),
            ("[[scopes]]\nname = \"a\"\nbit = 64", "outside 16-63"),
            ("[[scopes]]\nname = \"A b\"\nbit = 20", "must match"),
            ("[[scopes]]\nname = \"tokens:read\"\nbit = 20", "twice"),
            (
                "[[scopes]]\nname = \"a\"\nbit = 20\n[[scopes]]\nname = \"b\"\nbit = 20",
                "twice",
            ),
            ("[composites]\n\"x\" = [\"missing\"]", "unknown scope"),
            ("default_scopes = [\"nope\"]", "default_scopes"),
        ];
        for (src, want) in cases {
            let cfg: ScopeConfig = toml::from_str(src).unwrap();
            let err = ScopeRegistry::new(&cfg).unwrap_err();
            assert!(err.contains(want), "{src}: {err}");
        }
    }

    #[test]
    fn a_grantor_grants_only_bits_it_holds() {
        let held = Permissions::TOKENS_CREATE.union(Permissions::TOKENS_READ);
        assert!(check_grant(held, Permissions::TOKENS_READ, Permissions::NONE).is_ok());
        assert_eq!(
            check_grant(
                held,
                Permissions::TOKENS_REVOKE.union(Permissions::TOKENS_READ),
                Permissions::NONE
            ),
            Err(GrantError::NotHeld(Permissions::TOKENS_REVOKE))
        );
    }

    #[test]
    fn admin_only_scopes_need_org_admin_even_when_held() {
        let billing = Permissions::from_bits(1 << 63);
        let held = billing.union(Permissions::TOKENS_CREATE);
        assert_eq!(
            check_grant(held, billing, billing),
            Err(GrantError::AdminOnly(billing))
        );
        assert!(check_grant(held.union(Permissions::ORG_ADMIN), billing, billing).is_ok());
    }
}

#[cfg(test)]
mod properties {
    //! Property tests of the scope registry: names and bits convert both ways, and no config or
    //! request input panics it. PROPTEST_CASES cases each (256 by default).

    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    /// A valid config: distinct bits of 16-63 with distinct valid names (none a system name), some
    /// admin-only, composites over them, default scopes among them.
    fn valid_config() -> impl Strategy<Value = ScopeConfig> {
        // Names are a random stem and a number, so they are distinct (and none a system name)
        // without generating and deduplicating dozens of strings per case.
        let stem = prop_oneof![
            8 => "[a-z][a-z0-9:_.-]{0,10}",
            1 => "[a-z][a-z0-9:_.-]{61}",
        ];
        (
            prop::collection::btree_set(16u32..64, 0..48),
            stem,
            any::<u64>(),
        )
            .prop_map(|(bits, stem, admin_mask)| {
                let names: Vec<String> =
                    (0..bits.len() + 4).map(|i| format!("{stem}{i}")).collect();
                (bits, names, admin_mask)
            })
            .prop_flat_map(|(bits, names, admin_mask)| {
                let names: Vec<String> = names
                    .into_iter()
                    .filter(|n| !SYSTEM_NAMES.iter().any(|(s, _)| s == n))
                    .collect();
                let scopes: Vec<ScopeDecl> = bits
                    .into_iter()
                    .zip(names.iter().cloned())
                    .map(|(bit, name)| ScopeDecl {
                        name,
                        bit,
                        admin_only: admin_mask >> bit & 1 == 1,
                    })
                    .collect();
                let mut members: Vec<String> = scopes.iter().map(|d| d.name.clone()).collect();
                members.extend(SYSTEM_NAMES.iter().map(|(n, _)| n.to_string()));
                let spare: Vec<String> = names.get(scopes.len()..).unwrap_or_default().to_vec();
                (
                    Just(scopes),
                    prop::collection::vec(
                        prop::sample::subsequence(members.clone(), 0..4),
                        0..=spare.len(),
                    ),
                    prop::sample::subsequence(members, 0..3),
                    Just(spare),
                )
            })
            .prop_map(
                |(scopes, composite_members, default_scopes, spare)| ScopeConfig {
                    default_scopes,
                    scopes,
                    composites: spare.into_iter().zip(composite_members).collect(),
                },
            )
    }

    /// Any config at all, valid or not.
    fn any_config() -> impl Strategy<Value = ScopeConfig> {
        let name = prop_oneof![
            "[a-z][a-z0-9:_.-]{0,8}",
            ".{0,70}",
            Just("tokens:read".to_string())
        ];
        (
            prop::collection::vec(name.clone(), 0..4),
            prop::collection::vec(
                (
                    name.clone(),
                    prop_oneof![0u32..80, any::<u32>()],
                    any::<bool>(),
                ),
                0..8,
            ),
            prop::collection::btree_map(name.clone(), prop::collection::vec(name, 0..4), 0..4),
        )
            .prop_map(|(default_scopes, scopes, composites)| ScopeConfig {
                default_scopes,
                scopes: scopes
                    .into_iter()
                    .map(|(name, bit, admin_only)| ScopeDecl {
                        name,
                        bit,
                        admin_only,
                    })
                    .collect(),
                composites,
            })
    }

    proptest! {
        #[test]
        fn a_valid_config_builds_and_every_declared_name_means_its_bit(cfg in valid_config()) {
            let r = ScopeRegistry::new(&cfg).unwrap();
            for d in &cfg.scopes {
                let bit = Permissions::from_bits(1 << d.bit);
                prop_assert_eq!(r.resolve(&[&d.name]).unwrap(), bit);
                prop_assert_eq!(r.names(bit), vec![d.name.clone()]);
                prop_assert_eq!(r.admin_only().contains(bit), d.admin_only);
            }
            for (name, members) in &cfg.composites {
                prop_assert_eq!(r.resolve(&[name]).unwrap(), r.resolve(members).unwrap());
            }
            prop_assert_eq!(r.default_scopes(), r.resolve(&cfg.default_scopes).unwrap());
            prop_assert_eq!(r.custom().bits().count_ones() as usize, cfg.scopes.len());
        }

        /// parse(format(p)) == p: the names of an assigned set resolve back to the set, and never
        /// name a composite.
        #[test]
        fn names_then_resolve_gives_back_every_assigned_set(cfg in valid_config(), bits in any::<u64>()) {
            let r = ScopeRegistry::new(&cfg).unwrap();
            let p = Permissions::from_bits(bits & r.assigned().bits());
            let names = r.names(p);
            prop_assert_eq!(names.len() as u32, p.bits().count_ones());
            prop_assert!(names.iter().all(|n| !cfg.composites.contains_key(n)));
            prop_assert_eq!(r.resolve(&names).unwrap(), p);
            prop_assert!(r.check_assigned(p).is_ok());
        }

        #[test]
        fn unassigned_bits_are_reported_and_their_names_do_not_resolve(cfg in valid_config(), bits in any::<u64>()) {
            let r = ScopeRegistry::new(&cfg).unwrap();
            let p = Permissions::from_bits(bits);
            let unknown = p.minus(r.assigned());
            match r.check_assigned(p) {
                Ok(()) => prop_assert!(unknown.is_empty()),
                Err(ScopeError::UnknownBits(b)) => prop_assert_eq!(b, unknown.bits()),
                Err(e) => prop_assert!(false, "unexpected {e:?}"),
            }
            // `bit:N` names are for display only.
            prop_assert_eq!(r.resolve(&r.names(p)).is_ok(), unknown.is_empty());
        }

        #[test]
        fn resolving_arbitrary_names_never_panics_and_fails_on_the_first_unknown(
            cfg in valid_config(),
            names in prop::collection::vec(prop_oneof![".{0,70}", "[a-z:]{1,14}"], 0..6),
        ) {
            let r = ScopeRegistry::new(&cfg).unwrap();
            let known = |n: &String| {
                SYSTEM_NAMES.iter().any(|(s, _)| s == n)
                    || cfg.scopes.iter().any(|d| &d.name == n)
                    || cfg.composites.contains_key(n)
            };
            match r.resolve(&names) {
                Ok(_) => prop_assert!(names.iter().all(known)),
                Err(ScopeError::UnknownScope(n)) => {
                    prop_assert_eq!(Some(&n), names.iter().find(|n| !known(n)));
                }
                Err(e) => prop_assert!(false, "unexpected {e:?}"),
            }
        }

        #[test]
        fn any_config_is_refused_or_built_without_panicking(cfg in any_config()) {
            if let Ok(r) = ScopeRegistry::new(&cfg) {
                let bits: BTreeSet<u32> = cfg.scopes.iter().map(|d| d.bit).collect();
                prop_assert_eq!(bits.len(), cfg.scopes.len(), "a bit declared twice was accepted");
                for d in &cfg.scopes {
                    prop_assert!((16..=63).contains(&d.bit));
                    prop_assert!(valid_scope_name(&d.name));
                    prop_assert_eq!(r.resolve(&[&d.name]).unwrap().bits(), 1u64 << d.bit);
                }
                for name in cfg.composites.keys() {
                    prop_assert!(valid_scope_name(name));
                }
            }
        }

        #[test]
        fn a_grant_succeeds_exactly_within_the_held_bits(held in any::<u64>(), requested in any::<u64>(), admin_only in any::<u64>(), pick in any::<u64>()) {
            let (held, admin_only) = (Permissions::from_bits(held), Permissions::from_bits(admin_only));
            // Half the time ask for a subset of what is held.
            for requested in [Permissions::from_bits(requested), Permissions::from_bits(held.bits() & pick)] {
                let ok = held.contains(requested)
                    && (!requested.intersects(admin_only) || held.contains(Permissions::ORG_ADMIN));
                prop_assert_eq!(check_grant(held, requested, admin_only).is_ok(), ok);
                if let Err(GrantError::NotHeld(m)) = check_grant(held, requested, admin_only) {
                    prop_assert_eq!(m, requested.minus(held));
                }
            }
        }

        #[test]
        fn role_names_convert_both_ways(s in prop_oneof![".{0,10}", Just("admin".to_string()), Just("member".to_string())]) {
            if let Some(role) = Role::from_name(&s) {
                prop_assert_eq!(role.as_str(), s);
            } else {
                prop_assert!(s != "admin" && s != "member");
            }
        }
    }
}
