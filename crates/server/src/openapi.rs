//! What every operation of the document has in common, added in one place
//! rather than on each handler: the bearer scheme and who needs it, the
//! path and query parameters with the grammar the handlers check
//! ([`crate::wire`]), and the error replies every call can get (401 from the
//! token layer, 400 for a parameter or body the grammar refuses, 413 from
//! the body limit).

use ballast_core::model::MAX_NAME_LEN;
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Ref, RefOr, Required, ResponseBuilder};

use crate::wire;

pub const BEARER: &str = "bearer";

pub struct Common;

impl utoipa::Modify for Common {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The token in <state-dir>/token. Needed over TCP for every call except reads (GET) from loopback that name a loopback host; never on the unix socket.",
                    ))
                    .build(),
            ),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            for (method, op) in [
                ("get", item.get.as_mut()),
                ("post", item.post.as_mut()),
                ("delete", item.delete.as_mut()),
                ("put", item.put.as_mut()),
                ("patch", item.patch.as_mut()),
            ] {
                if let Some(op) = op {
                    complete(path, method, op);
                }
            }
        }
    }
}

fn complete(path: &str, method: &str, op: &mut Operation) {
    let bearer = SecurityRequirement::new(BEARER, Vec::<String>::new());
    // A read from loopback may go without the token: optional, as the
    // empty requirement says.
    op.security = Some(if method == "get" {
        vec![SecurityRequirement::default(), bearer]
    } else {
        vec![bearer]
    });
    let params = op.parameters.get_or_insert_with(Vec::new);
    for segment in path.split('/') {
        let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else {
            continue;
        };
        let param = path_param(path, name);
        params.retain(|p| p.name != name);
        params.push(param);
    }
    for p in params.iter_mut() {
        if p.parameter_in == ParameterIn::Query {
            if let Some(schema) = query_schema(&p.name) {
                p.schema = Some(schema);
            }
        }
    }
    let takes_input = !params.is_empty() || op.request_body.is_some();
    if params.is_empty() {
        op.parameters = None;
    }
    let error = |desc: &str| {
        ResponseBuilder::new()
            .description(desc)
            .content(
                "application/json",
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorReply")))
                    .build(),
            )
            .build()
    };
    let responses = &mut op.responses.responses;
    let mut add = |code: &str, desc: &str| {
        responses
            .entry(code.to_string())
            .or_insert_with(|| RefOr::T(error(desc)));
    };
    add(
        "401",
        "A bearer token is required (or the one given is wrong)",
    );
    if takes_input {
        add(
            "400",
            "A parameter or the body is not what this document allows, or the request is not possible as asked",
        );
    }
    if op.request_body.is_some() {
        add("413", "The body is larger than 1 MiB");
    }
}

fn path_param(path: &str, name: &str) -> Parameter {
    let (schema, description): (ObjectBuilder, &str) = match name {
        "ordinal" => (wire::ordinal_schema(), "The claim's ordinal, from 1"),
        "group" if path.ends_with("/acquire") => (
            wire::name_schema("", wire::MAX_CLAIM_PART_LEN, false),
            "The claim group",
        ),
        "group" => (
            wire::name_schema("", MAX_NAME_LEN, false),
            "The claim group",
        ),
        _ if path.starts_with("/v1/pools/") => (
            wire::name_schema("", MAX_NAME_LEN, false),
            "The pool's name",
        ),
        _ if path.starts_with("/v1/nodes/") => {
            (wire::name_schema("", MAX_NAME_LEN, false), "The node's id")
        }
        _ if path.starts_with("/v1/snapshots/") => (
            wire::name_schema("", MAX_NAME_LEN, false),
            "The snapshot's name",
        ),
        _ => (
            wire::name_schema("", MAX_NAME_LEN, false),
            "The volume's name",
        ),
    };
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some(description))
        .schema(Some(plain(schema)))
        .build()
}

/// Drop the builder's empty description: the parameter carries its own.
fn plain(b: ObjectBuilder) -> RefOr<Schema> {
    let mut o = b.build();
    o.description = None;
    RefOr::T(Schema::Object(o))
}

fn query_schema(name: &str) -> Option<RefOr<Schema>> {
    Some(match name {
        "limit" => RefOr::T(Schema::Object(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .maximum(Some(crate::rest::MAX_EVENTS))
                .build(),
        )),
        "force" => RefOr::T(Schema::Object(
            ObjectBuilder::new().schema_type(Type::Boolean).build(),
        )),
        "volume" | "group" => plain(wire::name_schema("", MAX_NAME_LEN, false)),
        "size" => plain(wire::size_schema("", false)),
        "fs" => RefOr::T(Schema::Object(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["ext4", "xfs"]))
                .build(),
        )),
        "block" => RefOr::T(Schema::Object(
            ObjectBuilder::new().schema_type(Type::Boolean).build(),
        )),
        "selector" => RefOr::T(Schema::Object(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(4096))
                .build(),
        )),
        _ => return None,
    })
}
