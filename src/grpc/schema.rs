//! The compiled descriptor set, indexed: which fields a message has and their types. The
//! views use it to keep only a message's own fields, the REST gateway to type query
//! parameters, and the OpenAPI document to describe every message.

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};
use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

/// One field of a message.
#[derive(Clone, Debug)]
pub struct Field {
    pub name: String,
    pub kind: Type,
    /// Full name without the leading dot, for messages and enums.
    pub type_name: String,
    pub repeated: bool,
    /// Proto3 `optional`, or a member of a oneof.
    pub optional: bool,
    pub oneof: Option<String>,
    /// True for `map<..>` fields.
    pub map: bool,
}

/// Every message and enum of the public API by full name.
pub struct Schema {
    pub messages: BTreeMap<String, Vec<Field>>,
    pub enums: BTreeMap<String, Vec<String>>,
    /// Full names of the messages that are map entries.
    map_entries: HashMap<String, ()>,
}

impl Schema {
    /// The schema built from the embedded descriptor set (once).
    pub fn get() -> &'static Schema {
        static SCHEMA: OnceLock<Schema> = OnceLock::new();
        SCHEMA.get_or_init(|| {
            let set = FileDescriptorSet::decode(super::pb::DESCRIPTORS)
                .expect("the embedded descriptor set was encoded by build.rs");
            Schema::new(&set)
        })
    }

    fn new(set: &FileDescriptorSet) -> Self {
        let mut schema = Schema {
            messages: BTreeMap::new(),
            enums: BTreeMap::new(),
            map_entries: HashMap::new(),
        };
        for file in &set.file {
            let package = file.package();
            for m in &file.message_type {
                schema.add_message(package, m);
            }
            for e in &file.enum_type {
                schema.add_enum(package, e);
            }
        }
        let entries: Vec<String> = schema.map_entries.keys().cloned().collect();
        for fields in schema.messages.values_mut() {
            for f in fields.iter_mut() {
                if entries.contains(&f.type_name) {
                    f.map = true;
                }
            }
        }
        schema
    }

    fn add_message(&mut self, scope: &str, m: &DescriptorProto) {
        let full = format!("{scope}.{}", m.name());
        if m.options.as_ref().is_some_and(|o| o.map_entry()) {
            self.map_entries.insert(full.clone(), ());
        }
        let fields = m
            .field
            .iter()
            .map(|f| Field {
                name: f.name().to_owned(),
                kind: f.r#type(),
                type_name: f.type_name().trim_start_matches('.').to_owned(),
                repeated: f.label() == Label::Repeated,
                optional: f.proto3_optional() || f.oneof_index.is_some(),
                oneof: f
                    .oneof_index
                    .filter(|_| !f.proto3_optional())
                    .and_then(|i| m.oneof_decl.get(i as usize))
                    .map(|o| o.name().to_owned()),
                map: false,
            })
            .collect();
        for nested in &m.nested_type {
            self.add_message(&full, nested);
        }
        for e in &m.enum_type {
            self.add_enum(&full, e);
        }
        self.messages.insert(full, fields);
    }

    fn add_enum(&mut self, scope: &str, e: &EnumDescriptorProto) {
        self.enums.insert(
            format!("{scope}.{}", e.name()),
            e.value.iter().map(|v| v.name().to_owned()).collect(),
        );
    }

    /// The fields of `message` (full name), empty when unknown.
    pub fn fields(&self, message: &str) -> &[Field] {
        self.messages.get(message).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Keeps only the keys of `value` that are fields of `message`.
    pub fn only_fields(&self, message: &str, mut value: serde_json::Value) -> serde_json::Value {
        let fields = self.fields(message);
        if let Some(obj) = value.as_object_mut() {
            obj.retain(|k, _| fields.iter().any(|f| &f.name == k));
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_knows_pmm_messages_fields_and_enums() {
        let s = Schema::get();
        let names: Vec<&str> = s
            .fields("inventory.v1.GenericNode")
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert!(names.contains(&"node_id") && names.contains(&"custom_labels"));
        assert!(
            s.fields("inventory.v1.GenericNode")
                .iter()
                .any(|f| f.name == "custom_labels" && f.map)
        );
        assert!(s.enums["inventory.v1.AgentType"].contains(&"AGENT_TYPE_RTA_MONGODB_AGENT".into()));
        let v = s.only_fields(
            "inventory.v1.RemoteNode",
            serde_json::json!({"node_id": "a", "distro": "x"}),
        );
        assert_eq!(v, serde_json::json!({"node_id": "a"}));
    }
}
