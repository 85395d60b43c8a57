//! [`Catalog`]: what one agent can instrument (its probe sites), as it last reported it, and the
//! merge of several agents' catalogs that `GET /api/sites` answers.
//!
//! Agents send their catalog once per connection (`sonde.v1.StatusService/ReportCatalog`); the
//! server keeps only the latest one per agent, in memory, beside the agent's status (see
//! `agents`). Nothing is stored durably: a restarted server learns the catalogs again as agents
//! reconnect.

use std::collections::BTreeMap;

use serde::Serialize;
use sonde_proto::{
    path_matches,
    sonde::{SiteCatalog, SiteKind},
};

/// Most sites one catalog may hold.
pub const MAX_SITES: usize = 50_000;
/// Most captured names per site.
pub const MAX_NAMES: usize = 64;
/// Longest file, module or name.
pub const MAX_TEXT: usize = 1024;

/// One site of a catalog.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SiteView {
    /// The file, as a tracepoint's `path` may name it.
    pub file: String,
    /// The line.
    pub line: u32,
    /// `probe` (a `probe!` site compiled into the program).
    pub kind: &'static str,
    /// The captured variables, in order.
    pub names: Vec<String>,
    /// The module path.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub module: String,
}

/// One agent's catalog.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Catalog {
    /// Whether the agent also arms lines without a probe site (native breakpoints).
    pub native: bool,
    /// Its sites, ordered by file and line.
    pub sites: Vec<SiteView>,
}

/// Why a catalog was refused.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct BadCatalog {
    /// The field at fault (`sites[3].file`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl Catalog {
    /// Checks the bounds of a reported catalog and converts it.
    pub fn from_wire(wire: &SiteCatalog) -> Result<Self, BadCatalog> {
        let bad = |field: String, message: String| BadCatalog { field, message };
        if wire.sites.len() > MAX_SITES {
            return Err(bad(
                "sites".into(),
                format!(
                    "{} sites; at most {MAX_SITES} are accepted",
                    wire.sites.len()
                ),
            ));
        }
        let mut sites = Vec::with_capacity(wire.sites.len());
        for (i, s) in wire.sites.iter().enumerate() {
            if s.file.is_empty() || s.file.len() > MAX_TEXT {
                return Err(bad(
                    format!("sites[{i}].file"),
                    format!("must be 1 to {MAX_TEXT} bytes"),
                ));
            }
            if s.module.len() > MAX_TEXT {
                return Err(bad(
                    format!("sites[{i}].module"),
                    format!("longer than {MAX_TEXT} bytes"),
                ));
            }
            if s.names.len() > MAX_NAMES || s.names.iter().any(|n| n.len() > MAX_TEXT) {
                return Err(bad(
                    format!("sites[{i}].names"),
                    format!("at most {MAX_NAMES} names of at most {MAX_TEXT} bytes"),
                ));
            }
            let kind = match SiteKind::try_from(s.kind) {
                Ok(SiteKind::Probe) => "probe",
                _ => {
                    return Err(bad(
                        format!("sites[{i}].kind"),
                        format!("{} is not a known kind (PROBE)", s.kind),
                    ));
                }
            };
            sites.push(SiteView {
                file: s.file.clone(),
                line: s.line,
                kind,
                names: s.names.clone(),
                module: s.module.clone(),
            });
        }
        sites.sort();
        Ok(Self {
            native: wire.native,
            sites,
        })
    }

    /// Whether a tracepoint at `path:line` binds to one of these sites.
    pub fn has_site(&self, path: &str, line: u32) -> bool {
        self.sites
            .iter()
            .any(|s| s.line == line && path_matches(path, &s.file))
    }

    /// Up to `n` sites in a file matching `path`, nearest to `line` first.
    pub fn nearest(&self, path: &str, line: u32, n: usize) -> Vec<&SiteView> {
        let mut same: Vec<&SiteView> = self
            .sites
            .iter()
            .filter(|s| path_matches(path, &s.file))
            .collect();
        same.sort_by_key(|s| (s.line.abs_diff(line), s.line));
        same.truncate(n);
        same
    }
}

/// One site of a merged catalog: how many of the agents asked about have it.
#[derive(Debug, Clone, Serialize)]
pub struct MergedSite {
    /// The site.
    #[serde(flatten)]
    pub site: SiteView,
    /// How many agents have this site.
    pub agents: usize,
}

/// Merges catalogs: one entry per distinct site, counting the agents that have it.
pub fn merge<'a>(catalogs: impl IntoIterator<Item = &'a Catalog>) -> Vec<MergedSite> {
    let mut merged: BTreeMap<&SiteView, usize> = BTreeMap::new();
    for catalog in catalogs {
        for site in &catalog.sites {
            *merged.entry(site).or_default() += 1;
        }
    }
    merged
        .into_iter()
        .map(|(site, agents)| MergedSite {
            site: site.clone(),
            agents,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_proto::sonde::ProbeSite;

    fn site(file: &str, line: u32, names: &[&str]) -> ProbeSite {
        ProbeSite {
            file: file.into(),
            line,
            kind: SiteKind::Probe as i32,
            names: names.iter().map(|n| (*n).into()).collect(),
            module: String::new(),
        }
    }

    #[test]
    fn catalogs_merge_counting_agents_and_find_nearest_lines() {
        let a = Catalog::from_wire(&SiteCatalog {
            sites: vec![site("src/a.rs", 10, &["x"]), site("src/a.rs", 30, &["y"])],
            ..Default::default()
        })
        .unwrap();
        let b = Catalog::from_wire(&SiteCatalog {
            sites: vec![site("src/a.rs", 10, &["x"])],
            ..Default::default()
        })
        .unwrap();
        let merged = merge([&a, &b]);
        assert_eq!(merged.len(), 2);
        assert_eq!((merged[0].site.line, merged[0].agents), (10, 2));
        assert_eq!((merged[1].site.line, merged[1].agents), (30, 1));
        assert!(a.has_site("a.rs", 30));
        assert!(!a.has_site("a.rs", 29));
        let near: Vec<u32> = a.nearest("a.rs", 25, 5).iter().map(|s| s.line).collect();
        assert_eq!(near, [30, 10]);
    }

    #[test]
    fn oversized_catalogs_are_refused_naming_the_field() {
        let err = Catalog::from_wire(&SiteCatalog {
            sites: vec![site("", 1, &[])],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.field, "sites[0].file");
    }
}
