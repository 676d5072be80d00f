//! The filter language of `document.filter` (business rules: which rows are documents).
//!
//! ```text
//! expr    := or
//! or      := and ("or" and)*
//! and     := unary ("and" unary)*
//! unary   := "not" unary | "(" expr ")" | test
//! test    := field ("=" | "!=" | "<" | "<=" | ">" | ">=") literal
//!          | field ["not"] "in" "(" literal ("," literal)* ")"
//!          | field "is" ["not"] "null"
//! field   := name ("." name)*          e.g. status, author.name
//! literal := "text" | 'text' | number | true | false
//! ```
//!
//! Keywords are lower case. Semantics, exactly:
//! - a missing field is null; `x is null` holds for null (and for an empty collection);
//! - `=`/`!=`/`in` compare JSON values, numbers by value (`1 = 1.0`); a comparison with a
//!   null field is false (`!=` and `not in` too: use `is null`), as in SQL;
//! - `<`, `<=`, `>`, `>=` compare two numbers by value or two strings by bytes; any other
//!   pair of types is false;
//! - on a collection field (a one-to-many child: an array), `=` and `in` hold when *any*
//!   element matches (Qdrant's `match any`), and `!=` / `not in` when *no* element does.

use std::cmp::Ordering;

use serde_json::Value;

/// A parsed predicate.
#[derive(Debug, Clone, PartialEq)]
pub enum Predicate {
    /// Both hold.
    And(Box<Predicate>, Box<Predicate>),
    /// Either holds.
    Or(Box<Predicate>, Box<Predicate>),
    /// It does not hold.
    Not(Box<Predicate>),
    /// `field <op> literal`.
    Compare(String, CompareOp, Value),
    /// `field in (…)` (`negated`: `not in`).
    In(String, Vec<Value>, bool),
    /// `field is null` (`negated`: `is not null`).
    IsNull(String, bool),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Num(serde_json::Number),
    Op(&'static str),
    Open,
    Close,
    Comma,
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let cs: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Tok::Open);
                i += 1
            }
            ')' => {
                out.push(Tok::Close);
                i += 1
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1
            }
            '"' | '\'' => {
                let mut t = String::new();
                i += 1;
                loop {
                    match cs.get(i) {
                        None => return Err(format!("unclosed string starting with {c} in the filter")),
                        Some('\\') if cs.get(i + 1).is_some() => {
                            t.push(cs[i + 1]);
                            i += 2;
                        }
                        Some(&q) if q == c => {
                            i += 1;
                            break;
                        }
                        Some(&x) => {
                            t.push(x);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(t));
            }
            '=' => {
                i += if cs.get(i + 1) == Some(&'=') { 2 } else { 1 };
                out.push(Tok::Op("="));
            }
            '!' if cs.get(i + 1) == Some(&'=') => {
                out.push(Tok::Op("!="));
                i += 2
            }
            '<' | '>' => {
                let eq = cs.get(i + 1) == Some(&'=');
                out.push(Tok::Op(match (c, eq) {
                    ('<', true) => "<=",
                    ('<', false) => "<",
                    (_, true) => ">=",
                    _ => ">",
                }));
                i += if eq { 2 } else { 1 };
            }
            c if c.is_ascii_digit() || c == '-' => {
                let start = i;
                i += 1;
                while i < cs.len() && (cs[i].is_ascii_digit() || matches!(cs[i], '.' | 'e' | 'E' | '+' | '-')) {
                    i += 1;
                }
                let text: String = cs[start..i].iter().collect();
                let n: serde_json::Number =
                    text.parse().map_err(|_| format!("`{text}` is not a number in the filter"))?;
                out.push(Tok::Num(n));
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < cs.len() && (cs[i].is_alphanumeric() || matches!(cs[i], '_' | '.')) {
                    i += 1;
                }
                out.push(Tok::Word(cs[start..i].iter().collect()));
            }
            other => return Err(format!("unexpected character `{other}` in the filter")),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
}

const KEYWORDS: [&str; 8] = ["and", "or", "not", "in", "is", "null", "true", "false"];

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.at).cloned();
        self.at += 1;
        t
    }
    fn word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(x)) if x == w)
    }
    fn or(&mut self) -> Result<Predicate, String> {
        let mut l = self.and()?;
        while self.word("or") {
            self.at += 1;
            l = Predicate::Or(Box::new(l), Box::new(self.and()?));
        }
        Ok(l)
    }
    fn and(&mut self) -> Result<Predicate, String> {
        let mut l = self.unary()?;
        while self.word("and") {
            self.at += 1;
            l = Predicate::And(Box::new(l), Box::new(self.unary()?));
        }
        Ok(l)
    }
    fn unary(&mut self) -> Result<Predicate, String> {
        if self.word("not") {
            self.at += 1;
            return Ok(Predicate::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Tok::Open) {
            self.at += 1;
            let e = self.or()?;
            if self.next() != Some(Tok::Close) {
                return Err("expected `)` in the filter".into());
            }
            return Ok(e);
        }
        self.test()
    }
    fn literal(&mut self) -> Result<Value, String> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(Value::String(s)),
            Some(Tok::Num(n)) => Ok(Value::Number(n)),
            Some(Tok::Word(w)) if w == "true" => Ok(Value::Bool(true)),
            Some(Tok::Word(w)) if w == "false" => Ok(Value::Bool(false)),
            Some(Tok::Word(w)) if w == "null" => Err("compare with null using `is null` / `is not null`".into()),
            Some(t) => Err(format!("expected a value (\"text\", a number, true or false), found {t:?}")),
            None => Err("the filter ends where a value was expected".into()),
        }
    }
    fn test(&mut self) -> Result<Predicate, String> {
        let field = match self.next() {
            Some(Tok::Word(w)) if !KEYWORDS.contains(&w.as_str()) => w,
            Some(t) => return Err(format!("expected a field name, found {t:?}")),
            None => return Err("the filter ends where a field name was expected".into()),
        };
        match self.next() {
            Some(Tok::Op(op)) => {
                let op = match op {
                    "=" => CompareOp::Eq,
                    "!=" => CompareOp::Ne,
                    "<" => CompareOp::Lt,
                    "<=" => CompareOp::Le,
                    ">" => CompareOp::Gt,
                    _ => CompareOp::Ge,
                };
                Ok(Predicate::Compare(field, op, self.literal()?))
            }
            Some(Tok::Word(w)) if w == "is" => {
                let negated = self.word("not");
                if negated {
                    self.at += 1;
                }
                match self.next() {
                    Some(Tok::Word(w)) if w == "null" => Ok(Predicate::IsNull(field, negated)),
                    _ => Err(format!("expected `null` after `{field} is`")),
                }
            }
            Some(Tok::Word(w)) if w == "in" || w == "not" => {
                let negated = w == "not";
                if negated && self.next() != Some(Tok::Word("in".into())) {
                    return Err(format!("expected `in` after `{field} not`"));
                }
                if self.next() != Some(Tok::Open) {
                    return Err(format!("expected `(` after `{field} in`"));
                }
                let mut vals = vec![self.literal()?];
                loop {
                    match self.next() {
                        Some(Tok::Comma) => vals.push(self.literal()?),
                        Some(Tok::Close) => break,
                        _ => return Err(format!("expected `,` or `)` in the list of `{field} in`")),
                    }
                }
                Ok(Predicate::In(field, vals, negated))
            }
            Some(t) => Err(format!("expected an operator (=, !=, <, <=, >, >=, in, is) after `{field}`, found {t:?}")),
            None => Err(format!("the filter ends after `{field}`")),
        }
    }
}

fn num_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        _ => None,
    }
}

impl Predicate {
    /// Parse a filter (see the module docs for the language).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut p = Parser { toks: lex(s)?, at: 0 };
        let e = p.or()?;
        if let Some(t) = p.peek() {
            return Err(format!("unexpected {t:?} after a complete filter (missing `and`/`or`?)"));
        }
        Ok(e)
    }

    /// The fields the predicate reads.
    pub fn fields(&self) -> Vec<&str> {
        match self {
            Predicate::And(a, b) | Predicate::Or(a, b) => {
                let mut v = a.fields();
                v.extend(b.fields());
                v
            }
            Predicate::Not(a) => a.fields(),
            Predicate::Compare(f, ..) | Predicate::In(f, ..) | Predicate::IsNull(f, _) => vec![f.as_str()],
        }
    }

    /// Evaluate against a document's fields (`get` returns None for a missing field).
    pub fn eval<'a>(&self, get: &dyn Fn(&str) -> Option<&'a Value>) -> bool {
        let value = |f: &str| get(f).filter(|v| !v.is_null());
        // The elements a test looks at: the value, or a collection's elements.
        let elems = |v: &'a Value| -> Vec<&'a Value> {
            match v {
                Value::Array(a) => a.iter().collect(),
                other => vec![other],
            }
        };
        match self {
            Predicate::And(a, b) => a.eval(get) && b.eval(get),
            Predicate::Or(a, b) => a.eval(get) || b.eval(get),
            Predicate::Not(a) => !a.eval(get),
            Predicate::IsNull(f, negated) => {
                let null = match value(f) {
                    None => true,
                    Some(Value::Array(a)) => a.is_empty(),
                    Some(_) => false,
                };
                null != *negated
            }
            Predicate::Compare(f, op, lit) => {
                let Some(v) = value(f) else { return false };
                let es = elems(v);
                match op {
                    CompareOp::Eq => es.iter().any(|e| num_eq(e, lit)),
                    CompareOp::Ne => !es.iter().any(|e| num_eq(e, lit)),
                    CompareOp::Lt => es.iter().any(|e| order(e, lit) == Some(Ordering::Less)),
                    CompareOp::Le => es.iter().any(|e| matches!(order(e, lit), Some(Ordering::Less | Ordering::Equal))),
                    CompareOp::Gt => es.iter().any(|e| order(e, lit) == Some(Ordering::Greater)),
                    CompareOp::Ge => {
                        es.iter().any(|e| matches!(order(e, lit), Some(Ordering::Greater | Ordering::Equal)))
                    }
                }
            }
            Predicate::In(f, lits, negated) => {
                let Some(v) = value(f) else { return false };
                let any = elems(v).iter().any(|e| lits.iter().any(|l| num_eq(e, l)));
                any != *negated
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn holds(p: &str, doc: Value) -> bool {
        let p = Predicate::parse(p).unwrap();
        let m = doc.as_object().unwrap().clone();
        p.eval(&|f| m.get(f))
    }

    #[test]
    fn the_documented_rules_hold() {
        let d = json!({"status": "published", "deleted_at": null, "lang": "en", "n": 3, "tags": ["a", "b"],
                       "author.name": "Ada"});
        assert!(holds(r#"deleted_at is null and status in ("published", "internal")"#, d.clone()));
        assert!(holds("lang = 'en' and not (n < 2)", d.clone()));
        assert!(holds("n = 3.0 and n >= 3 and n <= 3 and n > 2.5", d.clone()));
        assert!(!holds("missing = 'x'", d.clone()), "a missing field is null: comparisons are false");
        assert!(!holds("missing != 'x'", d.clone()), "also !=, as in SQL");
        assert!(holds("missing is null and status is not null", d.clone()));
        assert!(holds("tags = 'b' and tags != 'c' and tags in ('z', 'a') and tags not in ('q')", d.clone()));
        assert!(holds("author.name = \"Ada\" or x = 1", d.clone()));
        assert!(!holds("status < 3", d.clone()), "a string and a number do not order");
        assert!(holds("status > 'draft'", d));
        assert!(holds("tags is null", json!({"tags": []})), "an empty collection is null");
    }

    #[test]
    fn bad_filters_are_refused_with_a_reason() {
        for (f, says) in [
            ("status = ", "ends where a value"),
            ("status == null", "is null"),
            ("status in ('a' 'b')", "`,` or `)`"),
            ("(a = 1", "`)`"),
            ("a = 1 b = 2", "missing `and`"),
            ("a ~ 1", "unexpected character"),
            ("and = 1", "field name"),
            ("a is nul", "`null`"),
        ] {
            let e = Predicate::parse(f).unwrap_err();
            assert!(e.contains(says), "{f}: {e}");
        }
        assert_eq!(Predicate::parse("a = 1 or b is null and not c in (2)").unwrap().fields(), ["a", "b", "c"]);
    }
}
