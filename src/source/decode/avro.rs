//! Avro in the Confluent wire format: a magic byte 0, the writer schema's registry id as a
//! 4-byte big-endian integer, then one Avro binary datum (not an object container file).
//!
//! A datum is decoded with its writer schema only (`apache-avro`), then mapped to the JSON
//! Kafka Connect's `JsonConverter` would have written for the same record — unions
//! unwrapped, enums as their symbol, bytes and fixed as base64, maps as objects, logical
//! times as the numbers Connect uses — with Connect's semantic types resolved as the JSON
//! path resolves them ([`super::connect`]). The Debezium and upsert decoders then read that
//! JSON exactly as they read JSON records: one meaning for both formats.
//!
//! `apache-avro`'s schema parser keeps custom attributes on named types only, so the
//! semantic types (`connect.name`, `connect.parameters`, which Debezium's converters put on
//! primitive types too) are read from the schema's JSON into a [`Shape`] tree walked beside
//! the decoded value.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value as Avro;
use base64::Engine as _;
use serde_json::{Map, Number, Value};

use super::connect::{self, Semantic};
use super::debezium::decode_envelope;
use super::upsert::decode_upsert_value;
use super::{DecodeError, DecodeErrorKind, DecodeSpec, Decoded, SkipKind};

/// The writer schema of a registry id, as the reader's registry cache holds it: `Err` with
/// [`DecodeErrorKind::UnknownSchema`] when the registry does not know the id. (The reader
/// resolves every id of a record before decoding it; a registry that cannot be reached
/// makes the record wait, never fail.)
pub type SchemaLookup<'a> = &'a dyn Fn(u32) -> Result<Arc<AvroSchema>, DecodeError>;

/// Decode one Debezium record in Avro (`source.format = "debezium-avro"`): the key and the
/// value each in the wire format with their own schema id; the same envelope semantics as
/// [`super::debezium::decode_debezium_json`].
pub fn decode_debezium_avro(
    spec: &DecodeSpec,
    schemas: SchemaLookup<'_>,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    position: u64,
) -> Result<Decoded, DecodeError> {
    super::check_size(spec, key, value)?;
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(Decoded::Skip(SkipKind::Tombstone));
    };
    let envelope = decode_datum(schemas, value, "value")?;
    decode_envelope(spec, envelope, &|| avro_key(schemas, key), position)
}

/// Decode one plain upsert record in Avro (`source.format = "upsert-avro"`): the row is the
/// value's record, a null value deletes the key's document; as
/// [`super::upsert::decode_upsert_json`] otherwise.
pub fn decode_upsert_avro(
    spec: &DecodeSpec,
    schemas: SchemaLookup<'_>,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    position: u64,
    timestamp_ms: Option<u64>,
) -> Result<Decoded, DecodeError> {
    super::check_size(spec, key, value)?;
    let row = match value.filter(|v| !v.is_empty()) {
        None => Value::Null,
        Some(value) => decode_datum(schemas, value, "value")?,
    };
    decode_upsert_value(spec, row, &|| avro_key(schemas, key), position, timestamp_ms)
}

/// The ids a record's key and value name (the schemas the reader must have before
/// decoding it); bytes not in the wire format name none.
pub fn schema_ids<'a>(key: Option<&'a [u8]>, value: Option<&'a [u8]>) -> impl Iterator<Item = u32> + 'a {
    [key, value].into_iter().flatten().filter_map(|b| wire_header(b, "").ok().map(|(id, _)| id))
}

fn decode_datum(schemas: SchemaLookup<'_>, bytes: &[u8], what: &str) -> Result<Value, DecodeError> {
    let (id, datum) = wire_header(bytes, what)?;
    schemas(id)?.decode(datum, what)
}

fn avro_key(schemas: SchemaLookup<'_>, key: Option<&[u8]>) -> Result<Option<Value>, DecodeError> {
    match key.filter(|k| !k.is_empty()) {
        None => Ok(None),
        Some(k) => Ok(Some(decode_datum(schemas, k, "record key")?).filter(|v| !v.is_null())),
    }
}

/// The wire format's first byte.
pub const MAGIC: u8 = 0;
/// Magic byte + schema id.
pub const HEADER_LEN: usize = 5;

/// Split a key or value in the wire format into its schema id and datum; `what` names it
/// ("value", "record key") in the error.
pub fn wire_header<'a>(bytes: &'a [u8], what: &str) -> Result<(u32, &'a [u8]), DecodeError> {
    match bytes {
        [MAGIC, a, b, c, d, body @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        [MAGIC, ..] => Err(DecodeError::new(
            DecodeErrorKind::NotAvro,
            format!("the {what} is {} bytes, shorter than the wire format's 5-byte header", bytes.len()),
        )),
        [first, ..] => Err(DecodeError::new(
            DecodeErrorKind::NotAvro,
            format!(
                "the {what} starts with byte 0x{first:02x}, not the wire format's magic byte 0{}",
                if *first == b'{' { " (it looks like JSON: use format debezium-json or upsert-json)" } else { "" }
            ),
        )),
        [] => Err(DecodeError::new(DecodeErrorKind::NotAvro, format!("the {what} is empty"))),
    }
}

/// The semantic shape of a schema node, from the schema JSON (see the module docs).
#[derive(Clone, Debug, PartialEq)]
enum Shape {
    /// A primitive, enum or fixed with a [`Semantic`] (usually [`Semantic::Plain`]).
    Leaf(Semantic),
    /// A record: its fields' shapes in order, and its own semantic (a Debezium struct type).
    Record(Vec<Shape>, Semantic),
    Union(Vec<Shape>),
    Array(Box<Shape>),
    Map(Box<Shape>),
    /// A reference to a named type, by full name.
    Ref(String),
}

/// A writer schema, ready to decode datums.
pub struct AvroSchema {
    reader: GenericDatumReader<'static>,
    shape: Shape,
    named: HashMap<String, Shape>,
}

impl std::fmt::Debug for AvroSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroSchema").field("shape", &self.shape).finish_non_exhaustive()
    }
}

impl AvroSchema {
    /// Parse a schema as a registry serves it (the `schema` string of `GET /schemas/ids/N`).
    ///
    /// The parsed schema lives as long as the process: schemas are cached by id for the
    /// process's life anyway (a topic has a handful), and `apache-avro`'s datum reader
    /// borrows it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let json: Value = serde_json::from_str(text).map_err(|e| format!("the schema is not JSON: {e}"))?;
        let schema = apache_avro::Schema::parse(&json).map_err(|e| format!("not a valid Avro schema: {e}"))?;
        let schema: &'static apache_avro::Schema = Box::leak(Box::new(schema));
        let reader = GenericDatumReader::builder(schema)
            .build()
            .map_err(|e| format!("the Avro schema does not resolve: {e}"))?;
        let mut named = HashMap::new();
        let shape = shape_of(&json, "", &mut named);
        Ok(Self { reader, shape, named })
    }

    /// Decode one datum to JSON (see the module docs). A datum that does not decode with
    /// the schema, or leaves bytes over, is [`DecodeErrorKind::InvalidAvro`].
    pub fn decode(&self, datum: &[u8], what: &str) -> Result<Value, DecodeError> {
        let mut input = Datum { rest: datum, ran_out: false };
        let value = self.reader.read_value(&mut input).map_err(|e| {
            DecodeError::new(
                DecodeErrorKind::InvalidAvro,
                format!("the {what} does not decode with its writer schema: {e}"),
            )
        })?;
        // apache-avro reads a string cut off by the end of the input as null (the end of a
        // container file's block): a datum that ends early is not one of its schema.
        if input.ran_out {
            return Err(DecodeError::new(
                DecodeErrorKind::InvalidAvro,
                format!(
                    "the {what} ({} bytes) ends inside a field of its writer schema: not a datum of it",
                    datum.len()
                ),
            ));
        }
        if !input.rest.is_empty() {
            return Err(DecodeError::new(
                DecodeErrorKind::InvalidAvro,
                format!(
                    "the {what} has {} bytes left over after its datum ({} bytes): not a datum of its writer schema",
                    input.rest.len(),
                    datum.len() - input.rest.len()
                ),
            ));
        }
        Ok(self.to_json(value, &self.shape))
    }

    fn resolve<'a>(&'a self, shape: &'a Shape) -> &'a Shape {
        let mut shape = shape;
        // A chain of references ends (each names a type defined before it).
        for _ in 0..64 {
            match shape {
                Shape::Ref(name) => match self.named.get(name) {
                    Some(s) => shape = s,
                    None => return &PLAIN,
                },
                _ => return shape,
            }
        }
        &PLAIN
    }

    fn to_json(&self, value: Avro, shape: &Shape) -> Value {
        let shape = self.resolve(shape);
        let semantic = match shape {
            Shape::Leaf(s) | Shape::Record(_, s) => s,
            _ => &Semantic::Plain,
        };
        match value {
            Avro::Null => Value::Null,
            Avro::Boolean(b) => Value::Bool(b),
            Avro::Int(i) | Avro::Date(i) | Avro::TimeMillis(i) => Value::from(i),
            Avro::Long(i)
            | Avro::TimeMicros(i)
            | Avro::TimestampMillis(i)
            | Avro::TimestampMicros(i)
            | Avro::TimestampNanos(i)
            | Avro::LocalTimestampMillis(i)
            | Avro::LocalTimestampMicros(i)
            | Avro::LocalTimestampNanos(i) => Value::from(i),
            // The float's shortest decimal form, as Connect's JSON writes it (0.1f32 is 0.1,
            // not 0.10000000149011612).
            Avro::Float(f) => float(f.to_string().parse().unwrap_or(f64::from(f))),
            Avro::Double(f) => float(f),
            Avro::Bytes(bytes) | Avro::Fixed(_, bytes) => {
                let decimal = match semantic {
                    Semantic::Decimal { scale } => connect::decimal_string(&bytes, *scale),
                    _ => None,
                };
                Value::String(decimal.unwrap_or_else(|| base64::engine::general_purpose::STANDARD.encode(bytes)))
            }
            Avro::Decimal(d) => {
                let scale = match semantic {
                    Semantic::Decimal { scale } => *scale,
                    _ => 0,
                };
                match Vec::<u8>::try_from(&d) {
                    Ok(bytes) => Value::String(
                        connect::decimal_string(&bytes, scale)
                            .unwrap_or_else(|| base64::engine::general_purpose::STANDARD.encode(bytes)),
                    ),
                    Err(_) => Value::Null,
                }
            }
            Avro::BigDecimal(d) => Value::String(d.to_string()),
            Avro::String(s) => {
                let mut v = Value::String(s);
                if *semantic == Semantic::Json {
                    connect::json_column(&mut v);
                }
                v
            }
            Avro::Uuid(u) => Value::String(u.to_string()),
            Avro::Enum(_, symbol) => Value::String(symbol),
            Avro::Union(i, inner) => {
                let branch = match shape {
                    Shape::Union(branches) => branches.get(i as usize).unwrap_or(&PLAIN),
                    _ => &PLAIN,
                };
                self.to_json(*inner, branch)
            }
            Avro::Array(items) => {
                let item = match shape {
                    Shape::Array(item) => item.as_ref(),
                    _ => &PLAIN,
                };
                Value::Array(items.into_iter().map(|v| self.to_json(v, item)).collect())
            }
            Avro::Map(entries) => {
                let item = match shape {
                    Shape::Map(item) => item.as_ref(),
                    _ => &PLAIN,
                };
                // Sorted: a hash map's order would change from run to run.
                let mut entries: Vec<(String, Avro)> = entries.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Object(entries.into_iter().map(|(k, v)| (k, self.to_json(v, item))).collect())
            }
            Avro::Record(fields) => {
                let shapes: &[Shape] = match shape {
                    Shape::Record(fields, _) => fields,
                    _ => &[],
                };
                let map: Map<String, Value> = fields
                    .into_iter()
                    .enumerate()
                    .map(|(i, (name, v))| {
                        let v = self.to_json(v, shapes.get(i).unwrap_or(&PLAIN));
                        (name, v)
                    })
                    .collect();
                if *semantic == Semantic::VariableScaleDecimal {
                    if let Some(d) = connect::variable_scale(&map) {
                        return Value::String(d);
                    }
                }
                Value::Object(map)
            }
            Avro::Duration(d) => {
                let (months, days, millis): (u32, u32, u32) = (d.months().into(), d.days().into(), d.millis().into());
                serde_json::json!({"months": months, "days": days, "millis": millis})
            }
        }
    }
}

const PLAIN: Shape = Shape::Leaf(Semantic::Plain);

/// A datum's bytes, noting a read past their end.
struct Datum<'a> {
    rest: &'a [u8],
    ran_out: bool,
}

impl std::io::Read for Datum<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = std::io::Read::read(&mut self.rest, buf)?;
        if n < buf.len() {
            self.ran_out = true;
        }
        Ok(n)
    }
}

/// A finite float as a JSON number; NaN and the infinities as the strings Java prints.
fn float(f: f64) -> Value {
    match Number::from_f64(f) {
        Some(n) => Value::Number(n),
        None if f.is_nan() => Value::String("NaN".into()),
        None if f > 0.0 => Value::String("Infinity".into()),
        None => Value::String("-Infinity".into()),
    }
}

/// The full name of a named type defined at `node` (`name`, `namespace`, the enclosing
/// namespace `ns`), and the namespace its own children inherit.
fn full_name(node: &Map<String, Value>, ns: &str) -> Option<(String, String)> {
    let name = node.get("name")?.as_str()?;
    if name.contains('.') {
        let inherited = name.rsplit_once('.').map_or("", |(space, _)| space);
        return Some((name.to_owned(), inherited.to_owned()));
    }
    let space = node.get("namespace").and_then(Value::as_str).unwrap_or(ns);
    let full = if space.is_empty() { name.to_owned() } else { format!("{space}.{name}") };
    Some((full, space.to_owned()))
}

/// The [`Shape`] of schema JSON `node` in namespace `ns`, registering named types in `named`.
fn shape_of(node: &Value, ns: &str, named: &mut HashMap<String, Shape>) -> Shape {
    match node {
        Value::String(t) => match t.as_str() {
            primitive if is_primitive(primitive) => PLAIN,
            name => {
                let full = if name.contains('.') || ns.is_empty() { name.to_owned() } else { format!("{ns}.{name}") };
                // A name relative to the enclosing namespace, else a name in no namespace.
                if named.contains_key(&full) || !named.contains_key(name) {
                    Shape::Ref(full)
                } else {
                    Shape::Ref(name.to_owned())
                }
            }
        },
        Value::Array(branches) => Shape::Union(branches.iter().map(|b| shape_of(b, ns, named)).collect()),
        Value::Object(map) => {
            let semantic = Semantic::of(
                map.get("connect.name").and_then(Value::as_str),
                map.get("connect.parameters"),
                map.get("logicalType").and_then(Value::as_str),
                map.get("scale"),
            );
            match map.get("type") {
                Some(Value::String(t)) if t == "record" || t == "error" => {
                    let (full, inner_ns) = full_name(map, ns).unwrap_or_default();
                    // Registered before its fields, which may refer to it.
                    named.insert(full.clone(), Shape::Record(Vec::new(), semantic.clone()));
                    let fields = map
                        .get("fields")
                        .and_then(Value::as_array)
                        .map(|fs| {
                            fs.iter().map(|f| f.get("type").map_or(PLAIN, |t| shape_of(t, &inner_ns, named))).collect()
                        })
                        .unwrap_or_default();
                    let shape = Shape::Record(fields, semantic);
                    named.insert(full, shape.clone());
                    shape
                }
                Some(Value::String(t)) if t == "enum" || t == "fixed" => {
                    let shape = Shape::Leaf(semantic);
                    if let Some((full, _)) = full_name(map, ns) {
                        named.insert(full, shape.clone());
                    }
                    shape
                }
                Some(Value::String(t)) if t == "array" => {
                    Shape::Array(Box::new(map.get("items").map_or(PLAIN, |i| shape_of(i, ns, named))))
                }
                Some(Value::String(t)) if t == "map" => {
                    Shape::Map(Box::new(map.get("values").map_or(PLAIN, |v| shape_of(v, ns, named))))
                }
                Some(Value::String(t)) if is_primitive(t) => Shape::Leaf(semantic),
                // `{"type": "Name"}` or `{"type": {…}}`: the inner type, this node's semantic on a leaf.
                Some(inner) => match shape_of(inner, ns, named) {
                    Shape::Leaf(Semantic::Plain) => Shape::Leaf(semantic),
                    other => other,
                },
                None => PLAIN,
            }
        }
        _ => PLAIN,
    }
}

fn is_primitive(t: &str) -> bool {
    matches!(t, "null" | "boolean" | "int" | "long" | "float" | "double" | "bytes" | "string")
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Record;
    use serde_json::json;

    fn encode(schema_json: &Value, value: Avro) -> Vec<u8> {
        // Written as built (union branches explicit): apache-avro's `resolve` refuses a
        // bytes decimal ("Precision 10 too small…").
        let schema = apache_avro::Schema::parse(schema_json).expect("schema");
        apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .validate(false)
            .build()
            .expect("writer")
            .write_value_to_vec(value)
            .expect("encodes")
    }

    /// A registry's schemas by id, as the reader's cache holds them.
    fn registry(schemas: &[(u32, &Value)]) -> HashMap<u32, Arc<AvroSchema>> {
        schemas.iter().map(|(id, s)| (*id, Arc::new(AvroSchema::parse(&s.to_string()).expect("parses")))).collect()
    }

    fn lookup_in(schemas: &HashMap<u32, Arc<AvroSchema>>, id: u32) -> Result<Arc<AvroSchema>, DecodeError> {
        schemas
            .get(&id)
            .cloned()
            .ok_or_else(|| DecodeError::new(DecodeErrorKind::UnknownSchema, format!("schema id {id}")))
    }

    /// `v` in the wire format under schema `id`.
    fn wire(id: u32, schema: &Value, v: Avro) -> Vec<u8> {
        [&[MAGIC][..], &id.to_be_bytes(), &encode(schema, v)].concat()
    }

    #[test]
    fn wire_header_errors_are_named() {
        assert_eq!(wire_header(&[0, 0, 0, 1, 2, 9], "value").expect("header"), (258, &[9u8][..]));
        for (bytes, needle) in [
            (&b"{\"op\":\"c\"}"[..], "looks like JSON"),
            (&[0, 0, 1][..], "shorter than"),
            (&[][..], "empty"),
            (&[7, 0, 0, 0, 1][..], "0x07"),
        ] {
            let e = wire_header(bytes, "value").expect_err("not the wire format");
            assert_eq!(e.kind, DecodeErrorKind::NotAvro);
            assert!(e.message.contains(needle), "{e}");
        }
    }

    /// The captured Debezium 2.1.2 record (MySQL, Confluent wire format, schema id 6) decodes
    /// with its registry schema to the documented row, consuming every byte.
    #[test]
    fn golden_debezium_avro_record() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/debezium-samples");
        let (Ok(schema), Ok(bin), Ok(decoded)) = (
            std::fs::read_to_string(dir.join("avro-confluent-wire-format.debezium-mysql-2.1.2.avsc")),
            std::fs::read(dir.join("avro-confluent-wire-format.debezium-mysql-2.1.2.bin")),
            std::fs::read_to_string(dir.join("avro-confluent-wire-format.debezium-mysql-2.1.2.decoded.json")),
        ) else {
            panic!("../shared/debezium-samples/avro-confluent-wire-format.* not found beside the checkout");
        };
        let schema_text = schema;
        let schema = AvroSchema::parse(&schema_text).expect("the registry schema parses");
        let (id, datum) = wire_header(&bin, "value").expect("wire format");
        assert_eq!(id, 6);
        let got = schema.decode(datum, "value").expect("decodes");
        let want: Value = serde_json::from_str(&decoded).expect("decoded.json");
        assert_eq!(want["schema_id"], 6);
        assert_eq!(got, want["decoded_value"], "got {got:#}");
        // Through the Debezium decoder: a snapshot read of customer 1001.
        let lookup = |_: u32| Ok(Arc::new(AvroSchema::parse(&schema_text).expect("parses")));
        let spec = DecodeSpec { version_field: None, ..DecodeSpec::new(["id"]) };
        let Ok(Decoded::Record(crate::model::SourceRecord::Doc(c))) =
            decode_debezium_avro(&spec, &lookup, None, Some(&bin), 3)
        else {
            panic!("a change")
        };
        assert_eq!((c.doc_id.0.as_str(), c.commit_ts_ms), ("1001", Some(1_676_303_732_000)));
    }

    #[test]
    fn connect_types_map_as_the_json_converter_and_the_semantics_say() {
        let schema = json!({"type": "record", "name": "Value", "namespace": "srv.public.t", "fields": [
            {"name": "id", "type": "int"},
            {"name": "price", "type": ["null", {"type": "bytes", "scale": 2, "precision": 10,
                "connect.version": 1, "connect.parameters": {"scale": "2", "connect.decimal.precision": "10"},
                "connect.name": "org.apache.kafka.connect.data.Decimal", "logicalType": "decimal"}], "default": null},
            {"name": "plain_decimal", "type": {"type": "bytes", "connect.name": "org.apache.kafka.connect.data.Decimal",
                "connect.parameters": {"scale": "3"}}},
            {"name": "var", "type": {"type": "record", "name": "VariableScaleDecimal", "namespace": "io.debezium.data",
                "fields": [{"name": "scale", "type": "int"}, {"name": "value", "type": "bytes"}],
                "connect.name": "io.debezium.data.VariableScaleDecimal"}},
            {"name": "var2", "type": ["null", "io.debezium.data.VariableScaleDecimal"]},
            {"name": "attrs", "type": {"type": "string", "connect.name": "io.debezium.data.Json"}},
            {"name": "ts", "type": {"type": "long", "connect.name": "io.debezium.time.MicroTimestamp"}},
            {"name": "nano", "type": {"type": "long", "connect.name": "io.debezium.time.NanoTimestamp"}},
            {"name": "micros", "type": {"type": "long", "logicalType": "timestamp-micros"}},
            {"name": "nanos", "type": {"type": "long", "logicalType": "timestamp-nanos"}},
            {"name": "local", "type": {"type": "long", "logicalType": "local-timestamp-micros"}},
            {"name": "t_us", "type": {"type": "long", "logicalType": "time-micros", "connect.name": "io.debezium.time.MicroTime"}},
            {"name": "created", "type": {"type": "long", "logicalType": "timestamp-millis", "connect.name": "org.apache.kafka.connect.data.Timestamp"}},
            {"name": "day", "type": {"type": "int", "logicalType": "date"}},
            {"name": "zoned", "type": {"type": "string", "connect.name": "io.debezium.time.ZonedTimestamp"}},
            {"name": "uid", "type": {"type": "string", "logicalType": "uuid"}},
            {"name": "mood", "type": {"type": "enum", "name": "Mood", "symbols": ["sad", "ok"]}},
            {"name": "blob", "type": "bytes"},
            {"name": "tags", "type": {"type": "array", "items": ["null", "string"]}},
            {"name": "props", "type": {"type": "map", "values": "long"}},
            {"name": "ratio", "type": "float"},
            {"name": "other", "type": ["null", "Value"], "default": null}
        ]});
        let var_schema = apache_avro::Schema::parse(&schema["fields"][3]["type"]).expect("vsd");
        let mut var = Record::new(&var_schema).expect("record");
        var.put("scale", Avro::Int(3));
        var.put("value", Avro::Bytes(vec![0xfb]));
        let var: Avro = var.into();
        let value = Avro::Record(vec![
            ("id".into(), Avro::Int(7)),
            ("price".into(), Avro::Union(1, Box::new(Avro::Decimal(apache_avro::Decimal::from(vec![0x04, 0xe2]))))),
            ("plain_decimal".into(), Avro::Bytes(vec![0xfb, 0x1e])),
            ("var".into(), var.clone()),
            ("var2".into(), Avro::Union(1, Box::new(var))),
            ("attrs".into(), Avro::String(r#"{"a":[1,2]}"#.into())),
            ("ts".into(), Avro::Long(1_700_000_000_000_001)),
            ("nano".into(), Avro::Long(1_700_000_000_000_000_123)),
            ("micros".into(), Avro::TimestampMicros(-1)),
            ("nanos".into(), Avro::TimestampNanos(1_700_000_000_000_000_001)),
            ("local".into(), Avro::LocalTimestampMicros(86_400_000_001)),
            ("t_us".into(), Avro::TimeMicros(43_200_000_001)),
            ("created".into(), Avro::TimestampMillis(1_700_000_000_000)),
            ("day".into(), Avro::Date(19_000)),
            ("zoned".into(), Avro::String("2024-01-01T00:00:00Z".into())),
            ("uid".into(), Avro::Uuid(uuid::Uuid::nil())),
            ("mood".into(), Avro::Enum(1, "ok".into())),
            ("blob".into(), Avro::Bytes(b"hi".to_vec())),
            (
                "tags".into(),
                Avro::Array(vec![
                    Avro::Union(1, Box::new(Avro::String("x".into()))),
                    Avro::Union(0, Box::new(Avro::Null)),
                ]),
            ),
            (
                "props".into(),
                Avro::Map([("b".to_owned(), Avro::Long(2)), ("a".to_owned(), Avro::Long(1))].into_iter().collect()),
            ),
            ("ratio".into(), Avro::Float(0.1)),
            ("other".into(), Avro::Union(0, Box::new(Avro::Null))),
        ]);
        let datum = encode(&schema, value);
        let parsed = AvroSchema::parse(&schema.to_string()).expect("parses");
        let got = parsed.decode(&datum, "value").expect("decodes");
        assert_eq!(
            got,
            json!({"id": 7, "price": "12.50", "plain_decimal": "-1.250", "var": "-0.005", "var2": "-0.005",
                   "attrs": {"a": [1, 2]}, "ts": 1_700_000_000_000_001_i64, "nano": 1_700_000_000_000_000_123_i64, "micros": -1,
                   "nanos": 1_700_000_000_000_000_001_i64, "local": 86_400_000_001_i64, "t_us": 43_200_000_001_i64,
                   "created": 1_700_000_000_000_i64,
                   "day": 19_000, "zoned": "2024-01-01T00:00:00Z", "uid": "00000000-0000-0000-0000-000000000000",
                   "mood": "ok", "blob": "aGk=", "tags": ["x", null], "props": {"a": 1, "b": 2}, "ratio": 0.1,
                   "other": null})
        );
        // The key order of a map is sorted, the record's is the schema's.
        assert_eq!(got.as_object().expect("object").keys().next().map(String::as_str), Some("id"));
    }

    #[test]
    fn datums_that_do_not_fit_their_schema_are_invalid_avro() {
        let schema = json!({"type": "record", "name": "R", "fields": [{"name": "s", "type": "string"}]});
        let parsed = AvroSchema::parse(&schema.to_string()).expect("parses");
        let datum = encode(&schema, Avro::Record(vec![("s".into(), Avro::String("abc".into()))]));
        assert_eq!(parsed.decode(&datum, "value").expect("fits"), json!({"s": "abc"}));
        // Truncated, a length past the end, trailing bytes.
        for bad in [&datum[..2], &[0x7f, b'a'][..], &[datum.as_slice(), &[1, 2]].concat()] {
            let e = parsed.decode(bad, "value").expect_err("does not fit");
            assert_eq!(e.kind, DecodeErrorKind::InvalidAvro, "{e}");
        }
        assert!(AvroSchema::parse("{not json").is_err());
        assert!(
            AvroSchema::parse(r#"{"type": "record", "name": "R", "fields": [{"name": "x", "type": "Nope"}]}"#).is_err()
        );
    }

    /// Debezium's envelope in Avro decodes to the same change as the same event in JSON:
    /// an update, a delete whose id comes from the Avro key, a tombstone, a TOAST placeholder.
    #[test]
    fn debezium_avro_means_what_debezium_json_means() {
        use crate::source::decode::debezium::decode_debezium_json;
        let key_schema = json!({"type": "record", "name": "Key", "namespace": "srv.public.articles",
            "fields": [{"name": "id", "type": "int"}], "connect.name": "srv.public.articles.Key"});
        let value_schema = json!({"type": "record", "name": "Envelope", "namespace": "srv.public.articles", "fields": [
            {"name": "before", "type": ["null", {"type": "record", "name": "Value", "fields": [
                {"name": "id", "type": "int"},
                {"name": "body", "type": ["null", "string"], "default": null},
                {"name": "price", "type": ["null", {"type": "bytes", "connect.name": "org.apache.kafka.connect.data.Decimal",
                    "connect.parameters": {"scale": "2"}, "logicalType": "decimal", "precision": 10, "scale": 2}], "default": null}
            ]}], "default": null},
            {"name": "after", "type": ["null", "Value"], "default": null},
            {"name": "source", "type": {"type": "record", "name": "Source", "namespace": "io.debezium.connector.postgresql",
                "fields": [{"name": "table", "type": "string"}, {"name": "lsn", "type": ["null", "long"], "default": null},
                           {"name": "ts_ms", "type": "long"}]}},
            {"name": "op", "type": "string"},
            {"name": "ts_ms", "type": ["null", "long"], "default": null}
        ]});
        let schemas = registry(&[(1, &key_schema), (2, &value_schema)]);
        let lookup = |id: u32| lookup_in(&schemas, id);
        let row = |body: Avro, price: Avro| {
            Avro::Union(
                1,
                Box::new(Avro::Record(vec![
                    ("id".into(), Avro::Int(7)),
                    ("body".into(), body),
                    ("price".into(), price),
                ])),
            )
        };
        let source = Avro::Record(vec![
            ("table".into(), Avro::String("articles".into())),
            ("lsn".into(), Avro::Union(1, Box::new(Avro::Long(555)))),
            ("ts_ms".into(), Avro::Long(1_700_000_000_000)),
        ]);
        let envelope = |before: Avro, after: Avro, op: &str| {
            Avro::Record(vec![
                ("before".into(), before),
                ("after".into(), after),
                ("source".into(), source.clone()),
                ("op".into(), Avro::String(op.into())),
                ("ts_ms".into(), Avro::Union(0, Box::new(Avro::Null))),
            ])
        };
        let null = || Avro::Union(0, Box::new(Avro::Null));
        let key = wire(1, &key_schema, Avro::Record(vec![("id".into(), Avro::Int(7))]));
        let price = Avro::Union(1, Box::new(Avro::Decimal(apache_avro::Decimal::from(vec![0x04, 0xe2]))));
        let cases = [
            (
                wire(
                    2,
                    &value_schema,
                    envelope(null(), row(Avro::Union(1, Box::new(Avro::String("hello".into()))), price.clone()), "u"),
                ),
                r#"{"before":null,"after":{"id":7,"body":"hello","price":"12.50"},"source":{"table":"articles","lsn":555,"ts_ms":1700000000000},"op":"u","ts_ms":null}"#,
            ),
            (
                wire(
                    2,
                    &value_schema,
                    envelope(
                        null(),
                        row(Avro::Union(1, Box::new(Avro::String(crate::model::TOAST_PLACEHOLDER.into()))), null()),
                        "u",
                    ),
                ),
                r#"{"before":null,"after":{"id":7,"body":"__debezium_unavailable_value","price":null},"source":{"table":"articles","lsn":555,"ts_ms":1700000000000},"op":"u","ts_ms":null}"#,
            ),
            (
                wire(2, &value_schema, envelope(null(), null(), "d")),
                r#"{"before":null,"after":null,"source":{"table":"articles","lsn":555,"ts_ms":1700000000000},"op":"d","ts_ms":null}"#,
            ),
        ];
        let spec = DecodeSpec::new(["id"]);
        for (avro, json_value) in &cases {
            let from_avro = decode_debezium_avro(&spec, &lookup, Some(&key), Some(avro), 9).expect("avro decodes");
            let from_json = decode_debezium_json(&spec, Some(br#"{"id":7}"#), Some(json_value.as_bytes()), 9)
                .expect("json decodes");
            assert_eq!(from_avro, from_json);
        }
        assert_eq!(decode_debezium_avro(&spec, &lookup, Some(&key), None, 9), Ok(Decoded::Skip(SkipKind::Tombstone)));
        // Failures, named.
        let mut unknown = cases[0].0.clone();
        unknown[4] = 99;
        let e = decode_debezium_avro(&spec, &lookup, Some(&key), Some(&unknown), 9).expect_err("unknown id");
        assert_eq!(e.kind, DecodeErrorKind::UnknownSchema);
        let e = decode_debezium_avro(&spec, &lookup, Some(&key), Some(cases[0].1.as_bytes()), 9).expect_err("json");
        assert_eq!(e.kind, DecodeErrorKind::NotAvro);
        let mut corrupt = cases[0].0.clone();
        corrupt.truncate(corrupt.len() - 3);
        let e = decode_debezium_avro(&spec, &lookup, Some(&key), Some(&corrupt), 9).expect_err("corrupt");
        assert_eq!(e.kind, DecodeErrorKind::InvalidAvro);
        // The delete takes its id from the Avro key; a key in another format is named.
        let e = decode_debezium_avro(&spec, &lookup, Some(br#"{"id":7}"#), Some(&cases[2].0), 9).expect_err("json key");
        assert_eq!(e.kind, DecodeErrorKind::NotAvro);
        assert_eq!(schema_ids(Some(&key), Some(&cases[0].0)).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn upsert_avro_rows_keys_and_deletes() {
        let key_schema = json!("string");
        let value_schema = json!({"type": "record", "name": "Article", "fields": [
            {"name": "title", "type": "string"}, {"name": "score", "type": "double"}]});
        let schemas = registry(&[(3, &key_schema), (4, &value_schema)]);
        let lookup = |id: u32| lookup_in(&schemas, id);
        let key = wire(3, &key_schema, Avro::String("article-7".into()));
        let value = wire(
            4,
            &value_schema,
            Avro::Record(vec![("title".into(), Avro::String("T".into())), ("score".into(), Avro::Double(0.5))]),
        );
        let spec = DecodeSpec { version_field: None, ..DecodeSpec::new(["id"]) };
        let from_avro = decode_upsert_avro(&spec, &lookup, Some(&key), Some(&value), 4, Some(77)).expect("row");
        let from_json = crate::source::decode::upsert::decode_upsert_json(
            &spec,
            Some(b"article-7"),
            Some(br#"{"title":"T","score":0.5}"#),
            4,
            Some(77),
        )
        .expect("row");
        assert_eq!(from_avro, from_json);
        let delete = decode_upsert_avro(&spec, &lookup, Some(&key), None, 5, None).expect("delete");
        let Decoded::Record(crate::model::SourceRecord::Doc(c)) = delete else { panic!("a delete") };
        assert_eq!((c.doc_id.0.as_str(), c.op), ("article-7", crate::model::ChangeOp::Delete));
    }
}
