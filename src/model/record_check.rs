//! A check of a model file's MessagePack record before Burn decodes it. Burn 0.21's decoder
//! panics, instead of failing, on a parameter id it cannot parse (`ParamId::deserialize`) and
//! may panic on a tensor whose bytes do not fill its shape; a file from anywhere must give an
//! error instead. Found by the `model_mpk` fuzz target.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Entries reserved at most per map or sequence before they are read (a header may claim
/// billions; the bytes present bound what is really there).
const MAX_RESERVED: usize = 4096;

/// Deepest nesting walked (Burn's records nest a few levels per module).
const MAX_DEPTH: usize = 256;

/// A MessagePack value, byte strings by their length only.
enum Node {
    Map(Vec<(Node, Node)>),
    Seq(Vec<Node>),
    Str(String),
    Bytes(usize),
    Unsigned(u64),
    Other,
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a MessagePack value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Other)
    }

    fn visit_i64<E>(self, value: i64) -> Result<Node, E> {
        Ok(u64::try_from(value).map_or(Node::Other, Node::Unsigned))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Node, E> {
        Ok(Node::Unsigned(value))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Other)
    }

    fn visit_str<E>(self, value: &str) -> Result<Node, E> {
        Ok(Node::Str(value.to_string()))
    }

    fn visit_bytes<E>(self, value: &[u8]) -> Result<Node, E> {
        Ok(Node::Bytes(value.len()))
    }

    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Other)
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Other)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        Node::deserialize(deserializer)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        Node::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_RESERVED));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(MAX_RESERVED));
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Node::Map(entries))
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

/// Refuses what Burn's record decoder would panic on; the error says what and where.
pub(crate) fn check_record(bytes: &[u8]) -> Result<(), String> {
    let root: Node = rmp_serde::from_slice(bytes).map_err(|err| describe_failure(&format!("{err:?}")))?;
    check(&root, "", 0)
}

/// A decoder's complaint in words: a truncated file said as such.
pub(crate) fn describe_failure(detail: &str) -> String {
    if detail.contains("UnexpectedEof") {
        format!("the file ends early: truncated (an interrupted download or copy?) [{detail}]")
    } else {
        format!("not an adcorre model, or corrupt [{detail}]")
    }
}

fn check(node: &Node, path: &str, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested more than {MAX_DEPTH} levels at {path}"));
    }
    match node {
        Node::Map(entries) => {
            let field = |name: &str| entries.iter().find(|(key, _)| matches!(key, Node::Str(k) if k == name)).map(|(_, v)| v);
            if let (Some(id), Some(_)) = (field("id"), field("param")) {
                check_param_id(id, path)?;
            }
            if let (Some(data), Some(shape), Some(dtype)) = (field("bytes"), field("shape"), field("dtype")) {
                check_tensor(data, shape, dtype, path)?;
            }
            for (key, value) in entries {
                let name = match key {
                    Node::Str(name) => name.as_str(),
                    _ => "?",
                };
                check(value, &format!("{path}/{name}"), depth + 1)?;
            }
            Ok(())
        }
        Node::Seq(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(index, item)| check(item, &format!("{path}/{index}"), depth + 1)),
        _ => Ok(()),
    }
}

/// A Burn parameter id: base32 (DNSSEC alphabet) of at most 8 bytes, or a UUID. Longer base32
/// strings decode to more than the 8 bytes Burn copies them into, which panics.
fn check_param_id(id: &Node, path: &str) -> Result<(), String> {
    let Node::Str(id) = id else {
        return Err(format!("parameter id at {path} is not a string"));
    };
    let base32 = id.chars().all(|c| c.is_ascii_digit() || ('a'..='v').contains(&c.to_ascii_lowercase()));
    let valid = !(base32 && id.len() > 13) && burn::module::ParamId::try_deserialize(id).is_some();
    if valid {
        Ok(())
    } else {
        Err(format!("parameter id '{}' at {path} is not one Burn writes", id.chars().take(40).collect::<String>()))
    }
}

/// A tensor's bytes must be exactly its shape's element count times its element size.
fn check_tensor(data: &Node, shape: &Node, dtype: &Node, path: &str) -> Result<(), String> {
    let (Node::Bytes(length), Node::Seq(dims), Node::Str(dtype)) = (data, shape, dtype) else {
        return Err(format!("tensor at {path} is not bytes, a shape and a type"));
    };
    let element = match dtype.as_str() {
        "F64" | "I64" | "U64" => 8,
        "F32" | "Flex32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "Bool" => 1,
        other => return Err(format!("tensor at {path} has type '{}'", other.chars().take(40).collect::<String>())),
    };
    let count = dims.iter().try_fold(1u64, |count, dim| match dim {
        Node::Unsigned(d) => count.checked_mul(*d),
        _ => None,
    });
    match count.and_then(|c| c.checked_mul(element)) {
        Some(needed) if needed == *length as u64 => Ok(()),
        Some(needed) => Err(format!("tensor at {path} needs {needed} bytes for its shape, holds {length}")),
        None => Err(format!("tensor at {path} has a shape that is not a list of sizes")),
    }
}
