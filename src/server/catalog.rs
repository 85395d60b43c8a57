//! [`Catalog`]: what one agent can instrument (its probe sites), as it last reported it, and the
//! merge of several agents' catalogs that `GET /api/sites` answers; [`Asker`], the way to ask an
//! agent that arms lines natively about its files and lines (its `CatalogService/Serve` stream),
//! and the merge of the answers that `GET /api/lines` gives ([`merge_lines`]).
//!
//! Agents send their catalog once per connection (`sonde.v1.StatusService/ReportCatalog`); the
//! server keeps only the latest one per agent, in memory, beside the agent's status (see
//! `agents`). Nothing is stored durably: a restarted server learns the catalogs again as agents
//! reconnect. Answers about native lines are not kept at all: each request asks again.

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;
use sonde_proto::{
    path_matches,
    sonde::{CatalogAnswer, SiteCatalog, SiteKind, catalog_query::Query},
};
use tokio::sync::{mpsc, oneshot};

/// Most sites one catalog may hold.
pub const MAX_SITES: usize = 50_000;
/// Most captured names per site.
pub const MAX_NAMES: usize = 64;
/// Longest file, module or name.
pub const MAX_TEXT: usize = 1024;
/// Most field names of one captured value a catalog may list.
pub const MAX_FIELDS: usize = 256;

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
    /// Per captured name whose value has known fields (`#[derive(Capture)]`, once the line has
    /// run), those field names.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, Vec<String>>,
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
            let mut fields = BTreeMap::new();
            if s.fields.len() > MAX_NAMES {
                return Err(bad(
                    format!("sites[{i}].fields"),
                    format!("at most {MAX_NAMES} entries"),
                ));
            }
            for (k, f) in s.fields.iter().enumerate() {
                if !s.names.contains(&f.name) {
                    return Err(bad(
                        format!("sites[{i}].fields[{k}].name"),
                        format!("{:?} is not one of the site's names", f.name),
                    ));
                }
                if f.fields.len() > MAX_FIELDS || f.fields.iter().any(|n| n.len() > MAX_TEXT) {
                    return Err(bad(
                        format!("sites[{i}].fields[{k}].fields"),
                        format!("at most {MAX_FIELDS} names of at most {MAX_TEXT} bytes"),
                    ));
                }
                fields.insert(f.name.clone(), f.fields.clone());
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
                fields,
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

/// Merges catalogs: one entry per distinct site, counting the agents that have it. Field names
/// are merged over the agents that know them (a site that has run in one process and not yet in
/// another is still one site).
pub fn merge<'a>(catalogs: impl IntoIterator<Item = &'a Catalog>) -> Vec<MergedSite> {
    type Key<'a> = (&'a str, u32, &'static str, &'a [String], &'a str);
    let mut merged: BTreeMap<Key<'a>, MergedSite> = BTreeMap::new();
    for catalog in catalogs {
        for site in &catalog.sites {
            let key = (
                site.file.as_str(),
                site.line,
                site.kind,
                site.names.as_slice(),
                site.module.as_str(),
            );
            let entry = merged.entry(key).or_insert_with(|| MergedSite {
                site: SiteView {
                    fields: BTreeMap::new(),
                    ..site.clone()
                },
                agents: 0,
            });
            entry.agents += 1;
            merge_fields(&mut entry.site.fields, &site.fields);
        }
    }
    merged.into_values().collect()
}

/// Adds the field names of `from` to `into`, each name once, in the order first seen.
fn merge_fields(into: &mut BTreeMap<String, Vec<String>>, from: &BTreeMap<String, Vec<String>>) {
    for (name, fields) in from {
        let have = into.entry(name.clone()).or_default();
        for f in fields {
            if !have.contains(f) {
                have.push(f.clone());
            }
        }
    }
}

/// A way to ask one agent about its native lines: the sending half of its
/// `sonde.v1.CatalogService/Serve` stream (see `grpc`). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Asker {
    tx: mpsc::Sender<(Query, oneshot::Sender<CatalogAnswer>)>,
    /// Which stream this is: a reconnecting agent replaces its asker, and the old stream's end
    /// must not remove the new one.
    pub stream: u64,
}

/// Questions queued for one agent at most; more are refused at once.
pub const ASK_QUEUE: usize = 32;

impl Asker {
    /// A new asker and the receiving end its stream serves.
    pub fn new(
        stream: u64,
    ) -> (
        Self,
        mpsc::Receiver<(Query, oneshot::Sender<CatalogAnswer>)>,
    ) {
        let (tx, rx) = mpsc::channel(ASK_QUEUE);
        (Self { tx, stream }, rx)
    }

    /// Asks `query` and waits at most `limit` for the answer; the agent's own error (no debug
    /// info, no such file) comes back as `Err`.
    pub async fn ask(&self, query: Query, limit: Duration) -> Result<CatalogAnswer, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .try_send((query, tx))
            .map_err(|_| "the agent has too many questions waiting, or went away".to_owned())?;
        let answer = tokio::time::timeout(limit, rx)
            .await
            .map_err(|_| format!("no answer within {} s", limit.as_secs_f64()))?
            .map_err(|_| "the agent went away before answering".to_owned())?;
        if answer.error.is_empty() {
            Ok(answer)
        } else {
            Err(answer.error)
        }
    }
}

/// Most files one answer may list.
pub const MAX_FILES: usize = 100_000;
/// Most lines one answer may list.
pub const MAX_LINES: usize = 5_000;
/// Most variables per line.
pub const MAX_VARIABLES: usize = 1_000;

/// One variable at a line, as `GET /api/lines` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VariableView {
    /// Its name.
    pub name: String,
    /// Its type's name, where the debug info gives one.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
    /// Whether it is a parameter of the function.
    pub parameter: bool,
    /// Whether it can be read at every address of the line (in every agent that has the line).
    pub readable: bool,
    /// Why not, in a word or two.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// The full reason.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Lines of the same function where it can be read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub readable_at: Vec<u32>,
}

/// One line of a file, merged over the agents asked.
#[derive(Debug, Clone, Serialize)]
pub struct LineView {
    /// The line.
    pub line: u32,
    /// How many agents have it (as a probe site or a line with code).
    pub agents: usize,
    /// The probe site on it, if any: the names it captures.
    pub probe: Option<ProbeView>,
    /// Whether a tracepoint on it arms natively (some agent has code there).
    pub native: bool,
    /// The variables in scope (native), by name.
    pub variables: Vec<VariableView>,
}

/// The probe site on a line.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeView {
    /// The captured names.
    pub names: Vec<String>,
    /// Field names of the captured values that have them (see [`SiteView::fields`]).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, Vec<String>>,
}

/// Checks the bounds of an agent's `lines` answer and converts it.
pub fn lines_from_wire(
    answer: &CatalogAnswer,
) -> Result<Vec<(u32, Vec<VariableView>)>, BadCatalog> {
    let bad = |field: String, message: String| BadCatalog { field, message };
    if answer.lines.len() > MAX_LINES {
        return Err(bad(
            "lines".into(),
            format!("{} lines; at most {MAX_LINES}", answer.lines.len()),
        ));
    }
    let text = |s: &str| s.len() <= MAX_TEXT;
    answer
        .lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if l.variables.len() > MAX_VARIABLES {
                return Err(bad(
                    format!("lines[{i}].variables"),
                    format!("at most {MAX_VARIABLES}"),
                ));
            }
            let vars = l
                .variables
                .iter()
                .enumerate()
                .map(|(j, v)| {
                    if v.name.is_empty()
                        || ![&v.name, &v.type_name, &v.why].iter().all(|s| text(s))
                        || v.detail.len() > 4 * MAX_TEXT
                        || v.readable_at.len() > 64
                    {
                        return Err(bad(
                            format!("lines[{i}].variables[{j}]"),
                            format!(
                                "a name of 1 to {MAX_TEXT} bytes, type and reason of at most \
                                 {MAX_TEXT}, at most 64 lines"
                            ),
                        ));
                    }
                    Ok(VariableView {
                        name: v.name.clone(),
                        type_name: (!v.type_name.is_empty()).then(|| v.type_name.clone()),
                        parameter: v.parameter,
                        readable: v.readable,
                        why: (!v.why.is_empty()).then(|| v.why.clone()),
                        detail: v.detail.clone(),
                        readable_at: v.readable_at.clone(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((l.line, vars))
        })
        .collect()
}

/// Checks the bounds of an agent's `files` answer.
pub fn files_from_wire(answer: &CatalogAnswer) -> Result<Vec<String>, BadCatalog> {
    if answer.files.len() > MAX_FILES {
        return Err(BadCatalog {
            field: "files".into(),
            message: format!("{} files; at most {MAX_FILES}", answer.files.len()),
        });
    }
    if let Some(i) = answer
        .files
        .iter()
        .position(|f| f.is_empty() || f.len() > MAX_TEXT)
    {
        return Err(BadCatalog {
            field: format!("files[{i}]"),
            message: format!("must be 1 to {MAX_TEXT} bytes"),
        });
    }
    Ok(answer.files.clone())
}

/// What one group of agents (running the same binary) says about one file: how many agents it
/// is, their probe sites in the file, and the native answer one of them gave (`None`: none was
/// asked or none answered).
#[derive(Debug, Default)]
pub struct GroupLines<'a> {
    /// Agents in the group.
    pub agents: usize,
    /// Their probe sites in the file.
    pub probes: Vec<&'a SiteView>,
    /// Their lines with code, with the variables at each.
    pub native: Option<Vec<(u32, Vec<VariableView>)>>,
}

/// Merges what several groups of agents said about one file's lines. A line counts the agents
/// of every group that has it (as a probe site or a line with code); a variable is readable
/// when every group that has the line can read it.
pub fn merge_lines(groups: &[GroupLines<'_>]) -> Vec<LineView> {
    let mut lines: BTreeMap<u32, LineView> = BTreeMap::new();
    for group in groups {
        let mut counted = std::collections::HashSet::new();
        for site in &group.probes {
            let view = lines
                .entry(site.line)
                .or_insert_with(|| empty_line(site.line));
            if counted.insert(site.line) {
                view.agents += group.agents;
            }
            let probe = view.probe.get_or_insert_with(|| ProbeView {
                names: site.names.clone(),
                fields: BTreeMap::new(),
            });
            merge_fields(&mut probe.fields, &site.fields);
        }
        for (n, vars) in group.native.iter().flatten() {
            let view = lines.entry(*n).or_insert_with(|| empty_line(*n));
            if counted.insert(*n) {
                view.agents += group.agents;
            }
            view.native = true;
            for v in vars {
                match view.variables.iter_mut().find(|have| have.name == v.name) {
                    Some(have) => {
                        if have.readable && !v.readable {
                            have.readable = false;
                            have.why.clone_from(&v.why);
                            have.detail.clone_from(&v.detail);
                            have.readable_at.clone_from(&v.readable_at);
                        }
                    }
                    None => view.variables.push(v.clone()),
                }
            }
        }
    }
    lines.into_values().collect()
}

fn empty_line(line: u32) -> LineView {
    LineView {
        line,
        agents: 0,
        probe: None,
        native: false,
        variables: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_proto::sonde::{CapturedFields, ProbeSite};

    fn site(file: &str, line: u32, names: &[&str]) -> ProbeSite {
        ProbeSite {
            file: file.into(),
            line,
            kind: SiteKind::Probe as i32,
            names: names.iter().map(|n| (*n).into()).collect(),
            module: String::new(),
            fields: Vec::new(),
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
        let mut stray = site("src/a.rs", 1, &["order"]);
        stray.fields = vec![CapturedFields {
            name: "user".into(),
            fields: vec!["id".into()],
        }];
        let err = Catalog::from_wire(&SiteCatalog {
            sites: vec![stray],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.field, "sites[0].fields[0].name");
        assert!(err.message.contains("\"user\""), "{}", err.message);
    }

    #[test]
    fn field_names_merge_over_the_agents_that_know_them() {
        let with = |fields: &[&str]| {
            let mut s = site("src/a.rs", 10, &["order", "n"]);
            s.fields = vec![CapturedFields {
                name: "order".into(),
                fields: fields.iter().map(|f| (*f).into()).collect(),
            }];
            Catalog::from_wire(&SiteCatalog {
                sites: vec![s],
                ..Default::default()
            })
            .unwrap()
        };
        let ran = with(&["country", "total"]);
        let newer = with(&["country", "total", "tier"]);
        let not_yet = Catalog::from_wire(&SiteCatalog {
            sites: vec![site("src/a.rs", 10, &["order", "n"])],
            ..Default::default()
        })
        .unwrap();
        let merged = merge([&ran, &not_yet, &newer]);
        assert_eq!(
            merged.len(),
            1,
            "one site whatever its agents know: {merged:?}"
        );
        assert_eq!(merged[0].agents, 3);
        assert_eq!(
            merged[0].site.fields.get("order").map(Vec::as_slice),
            Some(&["country".to_owned(), "total".into(), "tier".into()][..])
        );
        assert!(!merged[0].site.fields.contains_key("n"));
    }
}
