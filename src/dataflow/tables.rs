//! Documents from several tables, the pure part: a table's rows as upserted state (the
//! version guard of invariant 3 per row, unchanged-TOAST placeholders resolved from the
//! stored row, only the used columns kept), and the assembly of one document from its
//! root row, its looked-up rows and its child rows ([`DocModel::assemble`]). The
//! differential operators that maintain these are in `operators/upsert_tables.rs` and
//! `operators/render_documents.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::predicate::Predicate;
use crate::config::tables::MultiTable;
use crate::dataflow::state::Rejection;
use crate::model::{key_part, ChangeOp, DocChange, FieldValue, Version};

/// A stored row: the JSON text of each kept column, in [`crate::config::tables::TableSpec::all_columns`]
/// order (JSON text, not `serde_json::Value`: differential's data must be `Ord`).
pub type Cells = Vec<String>;

/// What a table holds for one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowState {
    /// Newest version seen; older events of the row are superseded.
    pub version: Version,
    /// The row, `None` once deleted (a tombstone, so a late older upsert stays superseded).
    pub cells: Option<Cells>,
}

/// Where the rows of a multi-table dataflow's tables are kept across restarts (the runtime's
/// `TableStore`, a redb file under the data directory). `upsert_tables` persists each
/// time's changed rows before it emits them, so the table state is never behind what the
/// index holds, and a source position (committed only once the sink has passed it) is
/// never ahead of the durable state.
pub trait RowStore: Send + Sync {
    /// Make these rows' states durable (one transaction) before returning.
    fn persist(&self, rows: &[(u16, &str, &RowState)]) -> Result<(), String>;
}

/// A worker's table state at start: its rows as stored by the previous run, and where to
/// persist the changes. Given only to a dataflow whose source resumes from committed
/// positions (Kafka): at the first time, every restored row is emitted, every document
/// rendered, and the documents the index holds but the tables no longer render are
/// deleted (a resync).
pub struct TableState {
    /// The store.
    pub store: std::sync::Arc<dyn RowStore>,
    /// The rows this worker owns: (table, key, state), tombstones included.
    pub rows: Vec<(u16, String, RowState)>,
    /// The version the restored documents get (the start time in ms: newer than anything
    /// the previous run wrote, older than anything this run reads).
    pub restore_version: Version,
}

impl std::fmt::Debug for TableState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableState")
            .field("rows", &self.rows.len())
            .field("restore_version", &self.restore_version)
            .finish()
    }
}

/// What folding one event into a table did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowOutcome {
    /// The row changed: retract `before`, insert `after` (either may be absent).
    Changed {
        /// The row before.
        before: Option<Cells>,
        /// The row after.
        after: Option<Cells>,
    },
    /// Applied, but the kept columns are the same (or a delete of an absent row).
    NoOp,
    /// Older than what the table holds (or a repeat of it).
    Superseded,
    /// Refused (dead-lettered); the table is unchanged.
    Rejected(Rejection),
}

/// The tables of a multi-table dataflow and how their rows become documents.
#[derive(Debug)]
pub struct DocModel {
    spec: MultiTable,
    columns: Vec<Vec<String>>,
    /// Per lookup: (index of the `from` lookup or None for the root, cell index of `on`).
    lookup_on: Vec<(Option<usize>, usize)>,
    /// Per child: (cell index of `parent`, of `value`, of `order_by`).
    child_cols: Vec<(usize, usize, Option<usize>)>,
    /// The document fields the text and metadata read.
    used: Vec<String>,
    /// Per table: the cells that name another row (a lookup's `on`, a child's `parent`),
    /// with the column's name.
    join_cols: Vec<Vec<(usize, String)>>,
    /// The least version a rendered document gets (see [`DocModel::with_first_version`]).
    first_version: Version,
}

impl DocModel {
    /// Compile a checked multi-table spec; `used` = the fields of the text and metadata.
    pub fn new(spec: MultiTable, used: Vec<String>) -> Self {
        let columns: Vec<Vec<String>> = spec.tables.iter().map(|t| t.all_columns()).collect();
        let col = |t: usize, c: &str| columns[t].iter().position(|x| x == c).unwrap_or(0);
        let table_of = |name: &str| spec.tables.iter().position(|t| t.name == name).unwrap_or(0);
        let mut lookup_on = Vec::new();
        for l in &spec.lookups {
            let from = l.from.as_ref().and_then(|f| spec.lookups.iter().position(|x| &x.name == f));
            let from_table = from.map_or(spec.root, |i| table_of(&spec.lookups[i].table));
            lookup_on.push((from, col(from_table, &l.on)));
        }
        let child_cols: Vec<(usize, usize, Option<usize>)> = spec
            .children
            .iter()
            .map(|c| {
                let t = table_of(&c.table);
                (col(t, &c.parent), col(t, &c.value), c.order_by.as_deref().map(|o| col(t, o)))
            })
            .collect();
        let mut join_cols: Vec<Vec<(usize, String)>> = vec![Vec::new(); spec.tables.len()];
        for (l, (from, on)) in spec.lookups.iter().zip(&lookup_on) {
            let t = from.map_or(spec.root, |i| table_of(&spec.lookups[i].table));
            join_cols[t].push((*on, l.on.clone()));
        }
        for (c, (parent, _, _)) in spec.children.iter().zip(&child_cols) {
            join_cols[table_of(&c.table)].push((*parent, c.parent.clone()));
        }
        Self { spec, columns, lookup_on, child_cols, used, join_cols, first_version: 0 }
    }

    /// The model of a dataflow with `document.root` (None without).
    pub fn for_spec(spec: &crate::config::DataflowSpec) -> Option<Self> {
        let m = spec.multi_table()?;
        let mut used = spec.template().fields();
        for f in &spec.document.metadata {
            if !used.contains(f) {
                used.push(f.clone());
            }
        }
        Some(Self::new(m, used))
    }

    /// Rendered documents get at least version `v`: a restart that renders the restored
    /// tables at time 0 gives them the start time, newer than what the index holds.
    pub fn with_first_version(mut self, v: Version) -> Self {
        self.first_version = v;
        self
    }

    /// A document rendered at `time` has this version.
    pub fn version_at(&self, time: u64) -> Version {
        time.max(self.first_version)
    }

    /// The checked spec.
    pub fn spec(&self) -> &MultiTable {
        &self.spec
    }

    /// Index of the root table.
    pub fn root(&self) -> usize {
        self.spec.root
    }

    /// Table index of each lookup, and the lookup (or root, None) it starts from with the
    /// cell index of its `on` column there.
    pub fn lookups(&self) -> Vec<(usize, Option<usize>, usize)> {
        self.spec
            .lookups
            .iter()
            .zip(&self.lookup_on)
            .map(|(l, (from, on))| (self.table_index(&l.table), *from, *on))
            .collect()
    }

    /// Table index of each child collection with the cell indexes of its parent, value and
    /// order columns.
    pub fn children(&self) -> Vec<(usize, usize, usize, Option<usize>)> {
        self.spec
            .children
            .iter()
            .zip(&self.child_cols)
            .map(|(c, (p, v, o))| (self.table_index(&c.table), *p, *v, *o))
            .collect()
    }

    fn table_index(&self, name: &str) -> usize {
        self.spec.tables.iter().position(|t| t.name == name).unwrap_or(0)
    }

    /// The table's name (for dead letters and counters).
    pub fn table_name(&self, table: usize) -> &str {
        self.spec.tables.get(table).map_or("?", |t| t.name.as_str())
    }

    /// Fold one change of `table` into its state (`None`: the key was never seen).
    pub fn upsert(&self, table: usize, state: &mut Option<RowState>, change: &DocChange) -> RowOutcome {
        if let Some(s) = state.as_ref() {
            if change.version <= s.version {
                return RowOutcome::Superseded;
            }
        }
        let before = state.as_ref().and_then(|s| s.cells.clone());
        let after = match &change.op {
            ChangeOp::Delete => None,
            ChangeOp::Upsert(row) => {
                let Some(columns) = self.columns.get(table) else {
                    return RowOutcome::Rejected(Rejection {
                        reason: "unknown_table",
                        message: format!("table index {table} is not declared"),
                    });
                };
                let mut cells = Vec::with_capacity(columns.len());
                for (i, c) in columns.iter().enumerate() {
                    match row.get(c) {
                        Some(FieldValue::Value(v)) => cells.push(v.to_string()),
                        None => cells.push("null".into()),
                        Some(FieldValue::Unchanged) => match before.as_ref().and_then(|b| b.get(i)) {
                            Some(prev) => cells.push(prev.clone()),
                            None => {
                                return RowOutcome::Rejected(Rejection {
                                    reason: "toast_without_previous",
                                    message: format!(
                                        "unchanged-TOAST placeholder in column `{c}` of table `{}` but row `{}` has no previous version",
                                        self.table_name(table),
                                        change.doc_id
                                    ),
                                })
                            }
                        },
                    }
                }
                for (i, column) in self.join_cols.get(table).into_iter().flatten() {
                    if !row.contains_key(column) {
                        return RowOutcome::Rejected(Rejection {
                            reason: "missing_column",
                            message: format!(
                                "column `{column}` of table `{}` is not in the row event: the dataflow joins on it \
                                 (is it excluded from the connector's capture?)",
                                self.table_name(table)
                            ),
                        });
                    }
                    let cell = cells.get(*i).map_or("null", String::as_str);
                    if cell != "null" && Self::key_of(cell).is_none() {
                        return RowOutcome::Rejected(Rejection {
                            reason: "wrong_type",
                            message: format!(
                                "column `{column}` of table `{}` names a row by its key (a string, integer or \
                                 boolean) but holds {cell}",
                                self.table_name(table)
                            ),
                        });
                    }
                }
                Some(cells)
            }
        };
        *state = Some(RowState { version: change.version, cells: after.clone() });
        if before == after {
            RowOutcome::NoOp
        } else {
            RowOutcome::Changed { before, after }
        }
    }

    /// The key a foreign-key cell names (None for null and non-key values).
    pub fn key_of(cell: &str) -> Option<String> {
        serde_json::from_str::<Value>(cell).ok().as_ref().and_then(key_part)
    }

    /// Build one document's fields from its parts; None when it is not a document (no root
    /// row, a required lookup missing, or the filter does not hold). Returns the fields the
    /// text and metadata read, as (name, JSON text), sorted by name.
    pub fn assemble(&self, parts: &[&Part]) -> Option<Vec<(String, String)>> {
        let mut fields: BTreeMap<String, Value> = BTreeMap::new();
        let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap_or(Value::Null);
        let mut root = false;
        let mut lookups_found = vec![false; self.spec.lookups.len()];
        let mut children: Vec<Vec<(&str, &str, &str)>> = vec![Vec::new(); self.spec.children.len()];
        for p in parts {
            match p {
                Part::Root(cells) => {
                    root = true;
                    for (c, v) in self.columns[self.spec.root].iter().zip(cells) {
                        fields.insert(c.clone(), parse(v));
                    }
                }
                Part::Lookup(i, cells) => {
                    let i = *i as usize;
                    let Some(l) = self.spec.lookups.get(i) else { continue };
                    lookups_found[i] = true;
                    for (c, v) in self.columns[self.table_index(&l.table)].iter().zip(cells) {
                        fields.insert(format!("{}.{c}", l.name), parse(v));
                    }
                }
                Part::Child(i, order, key, value) => {
                    if let Some(list) = children.get_mut(*i as usize) {
                        list.push((order.as_str(), key.as_str(), value.as_str()));
                    }
                }
            }
        }
        if !root {
            return None;
        }
        for (i, l) in self.spec.lookups.iter().enumerate() {
            // A chain's link is missing when an earlier link is.
            let found = lookups_found[i] && self.lookup_on[i].0.is_none_or(|from| lookups_found[from]);
            if !found && l.required {
                return None;
            }
        }
        for (i, c) in self.spec.children.iter().enumerate() {
            let mut list = std::mem::take(&mut children[i]);
            // By the order column's value (numbers by value), then by the child row's key.
            list.sort_by(|a, b| order_cmp(a.0, b.0).then_with(|| a.1.cmp(b.1)));
            fields.insert(c.name.clone(), Value::Array(list.iter().map(|(_, _, v)| parse(v)).collect()));
        }
        if let Some(filter) = &self.spec.filter {
            if !filter.eval(&|f| fields.get(f)) {
                return None;
            }
        }
        Some(self.used.iter().map(|u| (u.clone(), fields.get(u).unwrap_or(&Value::Null).to_string())).collect())
    }

    /// The filter, if any.
    pub fn filter(&self) -> Option<&Predicate> {
        self.spec.filter.as_ref()
    }
}

fn order_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    match (serde_json::from_str::<Value>(a), serde_json::from_str::<Value>(b)) {
        (Ok(Value::Number(x)), Ok(Value::Number(y))) => {
            x.as_f64().unwrap_or(0.0).partial_cmp(&y.as_f64().unwrap_or(0.0)).unwrap_or(std::cmp::Ordering::Equal)
        }
        _ => a.cmp(b),
    }
}

/// One piece of a document, keyed by the root row's key in the document assembly.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Part {
    /// The root row.
    Root(Cells),
    /// The row a lookup (by index) found.
    Lookup(u16, Cells),
    /// A child row of a collection (by index): its order value, its key, its value (JSON).
    Child(u16, String, String, String),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::DataflowSpec;
    use crate::model::DocId;

    fn change(table: u16, key: &str, version: Version, cols: &[(&str, &str)]) -> DocChange {
        let op = if cols.is_empty() {
            ChangeOp::Delete
        } else {
            ChangeOp::Upsert(
                cols.iter()
                    .map(|(k, v)| {
                        let v = if *v == "TOAST" {
                            FieldValue::Unchanged
                        } else {
                            FieldValue::Value(serde_json::from_str(v).unwrap())
                        };
                        (k.to_string(), v)
                    })
                    .collect(),
            )
        };
        DocChange { doc_id: DocId(key.into()), version, position: version, commit_ts_ms: None, op, source: None, table }
    }

    #[test]
    fn a_row_keeps_its_columns_resolves_toast_and_ignores_older_versions() {
        let m = DocModel::for_spec(&DataflowSpec::multi_table_example_for_tests()).unwrap();
        let mut s = None;
        let first = change(
            0,
            "1",
            10,
            &[("article_id", "1"), ("title", "\"T\""), ("body", "\"B\""), ("author_id", "7"), ("extra", "5")],
        );
        let RowOutcome::Changed { before: None, after: Some(cells) } = m.upsert(0, &mut s, &first) else { panic!() };
        // article_id, title, body, status (absent: null), author_id; `extra` dropped.
        assert_eq!(cells, ["1", "\"T\"", "\"B\"", "null", "7"]);
        let toast =
            change(0, "1", 12, &[("article_id", "1"), ("title", "\"U\""), ("body", "TOAST"), ("author_id", "7")]);
        let RowOutcome::Changed { after: Some(cells), .. } = m.upsert(0, &mut s, &toast) else { panic!() };
        assert_eq!(cells[2], "\"B\"", "the placeholder takes the stored value");
        assert_eq!(m.upsert(0, &mut s, &first), RowOutcome::Superseded);
        let delete = change(0, "1", 13, &[]);
        assert!(matches!(m.upsert(0, &mut s, &delete), RowOutcome::Changed { after: None, .. }));
        assert_eq!(m.upsert(0, &mut s, &toast), RowOutcome::Superseded, "the tombstone keeps older rows out");
        let mut fresh = None;
        let RowOutcome::Rejected(r) = m.upsert(0, &mut fresh, &toast) else { panic!() };
        assert_eq!(r.reason, "toast_without_previous");
    }

    #[test]
    fn a_join_column_of_the_wrong_type_is_rejected_naming_it() {
        let m = DocModel::for_spec(&DataflowSpec::multi_table_example_for_tests()).unwrap();
        for (table, cols) in [
            (0u16, vec![("article_id", "1"), ("author_id", "{\"id\": 7}")]),
            (2, vec![("id", "3"), ("article_id", "1.5"), ("tag", "\"x\"")]),
        ] {
            let RowOutcome::Rejected(r) = m.upsert(table as usize, &mut None, &change(table, "1", 5, &cols)) else {
                panic!("{cols:?}")
            };
            assert_eq!(r.reason, "wrong_type");
            assert!(r.message.contains("column `"), "{}", r.message);
        }
        // A join column absent from the event (not null: absent) is refused by name.
        let RowOutcome::Rejected(r) = m.upsert(0, &mut None, &change(0, "1", 5, &[("article_id", "1")])) else {
            panic!("a missing join column")
        };
        assert_eq!(r.reason, "missing_column");
        assert!(r.message.contains("`author_id`"), "{}", r.message);
        // A null foreign key is a row that names nothing, not an error.
        let ok = change(2, "4", 5, &[("id", "4"), ("article_id", "null"), ("tag", "\"x\"")]);
        assert!(matches!(m.upsert(2, &mut None, &ok), RowOutcome::Changed { .. }));
    }

    #[test]
    fn a_document_needs_its_root_and_required_lookup_and_passes_the_filter() {
        let m = DocModel::for_spec(&DataflowSpec::multi_table_example_for_tests()).unwrap();
        let root = |status: &str| {
            Part::Root(vec!["1".into(), "\"T\"".into(), "\"B\"".into(), format!("\"{status}\""), "7".into()])
        };
        let author = Part::Lookup(0, vec!["7".into(), "\"Ada\"".into()]);
        let tag = |k: &str, v: &str| Part::Child(0, String::new(), k.into(), format!("\"{v}\""));
        let (r, t10, t9) = (root("published"), tag("10", "b"), tag("9", "a"));
        let doc = m.assemble(&[&r, &author, &t10, &t9]).unwrap();
        let get = |f: &str| doc.iter().find(|(k, _)| k == f).map(|(_, v)| v.clone());
        // Children without `order_by` are ordered by their keys as text: "10" before "9".
        assert_eq!(get("tags").as_deref(), Some("[\"b\",\"a\"]"));
        assert_eq!(get("author.name").as_deref(), Some("\"Ada\""));
        assert!(m.assemble(&[&author, &t10]).is_none(), "no root row");
        assert!(m.assemble(&[&r, &t10]).is_none(), "the required author is missing");
        let draft = root("draft");
        assert!(m.assemble(&[&draft, &author]).is_none(), "the filter does not hold");
    }
}
