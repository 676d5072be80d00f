//! Documents from several tables: the `[[tables]]`, `[[lookups]]` and `[[children]]` of a
//! dataflow file, and `document.root` / `document.filter`.
//!
//! ```toml
//! [document]
//! root = "articles"                   # the table whose rows are the documents
//! text = "{title}\n\nby {author.name}\n\n{body}\n\nTags: {tags}"
//! metadata = ["status", "author.name", "tags", "allowed_groups"]
//! filter = 'deleted_at is null and status in ("published", "internal")'
//!
//! [[tables]]
//! name = "articles"
//! table = "public.articles"           # Debezium's source.schema.table
//! key = ["article_id"]
//! columns = ["title", "body", "status", "author_id", "deleted_at"]
//!
//! [[lookups]]                          # many-to-one: {author.name}
//! name = "author"
//! table = "authors"
//! on = "author_id"                     # the column of `from` (default: the root) holding its key
//!
//! [[children]]                         # one-to-many: `tags` is an array, joined in text
//! name = "tags"
//! table = "article_tags"
//! parent = "article_id"                # the child's column holding the root's key
//! value = "tag"
//! ```
//!
//! A document's fields: the root's columns by name, a lookup's columns as `lookup.column`,
//! a child collection by its name (an array of its `value` column, ordered by `order_by`,
//! else by the child rows' keys). Everything the text, metadata and filter name must be one
//! of them; the load refuses anything else.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::predicate::Predicate;

/// One CDC table of a multi-table dataflow.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// The name lookups, children and `document.root` use.
    pub name: String,
    /// The source table (`schema.table` or `table`, Debezium's `source`): events of this
    /// table are this table's rows.
    pub table: String,
    /// For a Kafka source: the topic(s) this table's events are on (Debezium's layout: one
    /// topic per table, `<prefix>.<schema>.<table>`). Read in addition to `source.topics`;
    /// a record's table is still the one its envelope names.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Key column(s) (composite keys are joined with `/`, as document ids are).
    pub key: Vec<String>,
    /// Envelope path of the row version (`source.lsn`); events without it use their source
    /// position. Omit to always use the source position.
    #[serde(default)]
    pub version: Option<String>,
    /// The columns kept besides the key (every column the text, metadata, filter, lookups
    /// and children read). Other columns are dropped when the row is read.
    #[serde(default)]
    pub columns: Vec<String>,
}

impl TableSpec {
    /// Key columns then the other kept columns: the order of a stored row's cells.
    pub fn all_columns(&self) -> Vec<String> {
        let mut out = self.key.clone();
        for c in &self.columns {
            if !out.contains(c) {
                out.push(c.clone());
            }
        }
        out
    }
}

/// A many-to-one lookup: the row of `table` whose key is the value of `on` in the row of
/// `from` (the root, or an earlier lookup for chains such as product → category →
/// department).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LookupSpec {
    /// The prefix of its fields: `{author.name}`.
    pub name: String,
    /// The looked-up table (a `[[tables]]` name).
    pub table: String,
    /// The root (default) or an earlier lookup's name.
    #[serde(default)]
    pub from: Option<String>,
    /// The column of `from` holding the looked-up row's key (a single-column key).
    pub on: String,
    /// A document whose looked-up row is missing (null `on`, or the row not there — yet)
    /// is not rendered (inner join; the default: a snapshot that brings an article before
    /// its author does not embed it without its author first). `false` renders it with the
    /// lookup's fields null (left join).
    #[serde(default = "yes")]
    pub required: bool,
}

fn yes() -> bool {
    true
}

/// A one-to-many collection: the rows of `table` whose `parent` column holds the root's key.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChildSpec {
    /// The field name: an array of `value`, in order.
    pub name: String,
    /// The child table (a `[[tables]]` name).
    pub table: String,
    /// The child's column holding the root row's key (a single-column root key).
    pub parent: String,
    /// The column collected.
    pub value: String,
    /// The column the elements are ordered by (ties and default: the child rows' keys).
    #[serde(default)]
    pub order_by: Option<String>,
    /// Between elements when the collection is used in the text.
    #[serde(default = "default_separator")]
    pub separator: String,
}

fn default_separator() -> String {
    ", ".into()
}

/// Everything a multi-table document is built from, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiTable {
    /// The tables, in declaration order (their index is [`crate::model::DocChange::table`]).
    pub tables: Vec<TableSpec>,
    /// Index of the root table.
    pub root: usize,
    /// Lookups in declaration order (a chain's earlier links first).
    pub lookups: Vec<LookupSpec>,
    /// Child collections.
    pub children: Vec<ChildSpec>,
    /// `document.filter`, parsed.
    pub filter: Option<Predicate>,
}

impl MultiTable {
    /// Check the declarations against each other and against the fields the text, metadata
    /// and filter name. `root`, `filter`: from `[document]`.
    pub fn check(
        tables: &[TableSpec],
        lookups: &[LookupSpec],
        children: &[ChildSpec],
        root: &str,
        filter: Option<&str>,
        used: &[String],
    ) -> Result<Self, String> {
        let table_index = |name: &str, what: &str| {
            tables.iter().position(|t| t.name == name).ok_or_else(|| {
                let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
                format!("{what} names the table `{name}`, which is not one of [[tables]] {names:?}")
            })
        };
        let mut names = BTreeSet::new();
        for t in tables {
            if !names.insert(t.name.as_str()) {
                return Err(format!("two [[tables]] are named `{}`", t.name));
            }
            if t.key.is_empty() {
                return Err(format!("table `{}`: `key` must name at least one column", t.name));
            }
        }
        let root_i = table_index(root, "`document.root`")?;
        let has = |t: usize, col: &str| tables[t].all_columns().iter().any(|c| c == col);
        let mut fields: BTreeSet<String> = tables[root_i].all_columns().into_iter().collect();
        let mut lookup_tables: Vec<(String, usize)> = Vec::new();
        for l in lookups {
            let t = table_index(&l.table, &format!("lookup `{}`", l.name))?;
            if tables[t].key.len() != 1 {
                return Err(format!(
                    "lookup `{}`: table `{}` has a composite key; lookups need a single-column key",
                    l.name, l.table
                ));
            }
            let from_t = match &l.from {
                None => root_i,
                Some(f) => lookup_tables.iter().find(|(n, _)| n == f).map(|(_, t)| *t).ok_or_else(|| {
                    format!("lookup `{}`: `from = \"{f}\"` is not the root or an earlier lookup", l.name)
                })?,
            };
            if !has(from_t, &l.on) {
                return Err(format!(
                    "lookup `{}`: `on = \"{}\"` is not a column of table `{}` (its key or `columns`)",
                    l.name, l.on, tables[from_t].name
                ));
            }
            if l.name.contains('.') || lookup_tables.iter().any(|(n, _)| *n == l.name) {
                return Err(format!("lookup name `{}` must be unique and contain no `.`", l.name));
            }
            for c in tables[t].all_columns() {
                fields.insert(format!("{}.{c}", l.name));
            }
            lookup_tables.push((l.name.clone(), t));
        }
        if tables[root_i].key.len() != 1 && !children.is_empty() {
            return Err("children need a single-column key on the root table".into());
        }
        for c in children {
            let t = table_index(&c.table, &format!("child collection `{}`", c.name))?;
            for (what, col) in
                [("parent", Some(&c.parent)), ("value", Some(&c.value)), ("order_by", c.order_by.as_ref())]
            {
                if let Some(col) = col {
                    if !has(t, col) {
                        return Err(format!(
                            "child collection `{}`: `{what} = \"{col}\"` is not a column of table `{}`",
                            c.name, c.table
                        ));
                    }
                }
            }
            if !fields.insert(c.name.clone()) {
                return Err(format!("child collection `{}` has the name of another field", c.name));
            }
        }
        let filter = match filter {
            None => None,
            Some(f) => {
                let p = Predicate::parse(f).map_err(|e| format!("`document.filter`: {e}"))?;
                for name in p.fields() {
                    if !fields.contains(name) {
                        return Err(format!(
                            "`document.filter` names `{name}`, which is not a field of the document ({})",
                            known(&fields)
                        ));
                    }
                }
                Some(p)
            }
        };
        for u in used {
            if !fields.contains(u) {
                return Err(format!(
                    "the document's text or metadata names `{u}`, which is not a field of the document ({})",
                    known(&fields)
                ));
            }
        }
        Ok(Self {
            tables: tables.to_vec(),
            root: root_i,
            lookups: lookups.to_vec(),
            children: children.to_vec(),
            filter,
        })
    }
}

fn known(fields: &BTreeSet<String>) -> String {
    let v: Vec<&str> = fields.iter().map(String::as_str).collect();
    format!("known: {}", v.join(", "))
}
