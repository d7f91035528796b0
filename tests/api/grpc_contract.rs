//! The protobuf contract: field numbers, names, types, enum values and RPCs may be added but never
//! changed or removed. `proto/contract.txt` is the checked-in snapshot of the compiled descriptors.

use std::collections::BTreeSet;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{FileDescriptorProto, FileDescriptorSet};

const SNAPSHOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proto/contract.txt");

fn contract_lines(file: &FileDescriptorProto) -> BTreeSet<String> {
    let mut lines = BTreeSet::new();
    for m in &file.message_type {
        for f in &m.field {
            let ty = if f.type_name().is_empty() {
                Type::try_from(f.r#type.unwrap_or_default())
                    .map(|t| t.as_str_name().to_string())
                    .unwrap_or_default()
            } else {
                f.type_name().to_string()
            };
            let label = Label::try_from(f.label.unwrap_or_default())
                .map(|l| l.as_str_name())
                .unwrap_or_default();
            let optional = if f.proto3_optional() { " optional" } else { "" };
            lines.insert(format!(
                "message {} field {} = {} {ty} {label}{optional}",
                m.name(),
                f.name(),
                f.number()
            ));
        }
    }
    for e in &file.enum_type {
        for v in &e.value {
            lines.insert(format!(
                "enum {} value {} = {}",
                e.name(),
                v.name(),
                v.number()
            ));
        }
    }
    for s in &file.service {
        for m in &s.method {
            lines.insert(format!(
                "rpc {}.{}({}) returns ({})",
                s.name(),
                m.name(),
                m.input_type(),
                m.output_type()
            ));
        }
    }
    lines
}

#[test]
fn the_compiled_proto_keeps_every_field_number_name_and_rpc_of_the_snapshot() {
    // Arrange
    let fds = FileDescriptorSet::decode(latchkey::grpc::FILE_DESCRIPTOR_SET).unwrap();
    let file = fds
        .file
        .iter()
        .find(|f| f.package() == "latchkey.auth.v1")
        .expect("latchkey.auth.v1 is compiled in");
    let current = contract_lines(file);
    if std::env::var_os("LATCHKEY_UPDATE_CONTRACT").is_some() {
        let text: String = current.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(SNAPSHOT, text).unwrap();
    }

    // Act
    let snapshot: BTreeSet<String> = std::fs::read_to_string(SNAPSHOT)
        .expect("proto/contract.txt exists")
        .lines()
        .map(str::to_string)
        .collect();
    let removed: Vec<_> = snapshot.difference(&current).collect();
    let added: Vec<_> = current.difference(&snapshot).collect();

    // Assert
    assert!(
        removed.is_empty(),
        "incompatible change to the gRPC API: these elements were removed, renamed or renumbered:\n{removed:#?}"
    );
    assert!(
        added.is_empty(),
        "new gRPC API elements: record them in proto/contract.txt \
         (LATCHKEY_UPDATE_CONTRACT=1 cargo test grpc_contract):\n{added:#?}"
    );
}
